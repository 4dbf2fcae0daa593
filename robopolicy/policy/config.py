"""Policy configuration: what the encoder sees, which head predicts, and how features are scaled.

`PolicyConfig` is saved as config.json in every checkpoint together with `FeatureSpec`s (the
shapes the policy was trained on), so a checkpoint folder alone rebuilds the network. Validation
happens in `__post_init__`, so a bad value fails when the config is read, not mid-training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

HEADS = ("diffusion", "flow", "act")


@dataclass
class VisionConfig:
    """Camera encoder: a CNN trunk, then what the policy reads of its feature map.

    backbone "resnet18" is torchvision's ResNet-18 with BatchNorm replaced by GroupNorm (trained
    from scratch, the diffusion-policy recipe); "small_cnn" is a 4-layer GroupNorm CNN for CPUs.
    tokens "keypoints" summarizes each image as one token of spatial-softmax keypoints (diffusion
    policy); "feature_map" keeps the map itself, average-pooled to feature_grid x feature_grid cells,
    one token per cell (ACT's tokenization of its backbone's last feature map).
    """

    backbone: Literal["resnet18", "small_cnn"] = "resnet18"
    # the trunk's normalization layers: "group" (GroupNorm, no running statistics) or "none" (what a
    # from-scratch ResNet with BatchNorm frozen at its initial statistics computes: LeRobot's ACT)
    norm: Literal["group", "none"] = "group"
    shared: bool = True  # one trunk for all cameras (else one per camera)
    num_keypoints: int = 32
    tokens: Literal["keypoints", "feature_map"] = "keypoints"
    feature_grid: int = 3  # cells per side of the pooled feature map (tokens: feature_map)
    crop_ratio: float = 0.9  # random crop of this fraction of H and W in training, center crop at inference
    pretrained_path: str | None = None  # optional local torchvision-format weights for resnet18
    # the instruction scales and shifts the trunk's feature channels before the keypoints (FiLM, as
    # RT-1 conditions its image encoder on language): a keypoint can then follow "the named cube"
    # instead of every cube; needs encoder.language
    language_film: bool = False
    # the instruction also scales and shifts the hidden units of the keypoints' projection (FiLM): the
    # keypoints list every object the trunk sees, and this picks the named one's; needs language_film
    keypoint_language_film: bool = False

    def __post_init__(self):
        if self.keypoint_language_film and not self.language_film:
            raise ValueError("vision.keypoint_language_film FiLMs the keypoints' projection by the instruction:"
                             " it needs vision.language_film: true")
        if not 0.5 <= self.crop_ratio <= 1.0:
            raise ValueError(f"vision.crop_ratio must be in [0.5, 1], got {self.crop_ratio}")
        if self.num_keypoints < 1:
            raise ValueError("vision.num_keypoints must be >= 1")
        if self.feature_grid < 1:
            raise ValueError("vision.feature_grid must be >= 1")
        if self.keypoint_language_film and self.tokens != "keypoints":
            raise ValueError("vision.keypoint_language_film FiLMs the keypoints' projection: it needs"
                             " vision.tokens: keypoints")


@dataclass
class VLMConfig:
    """A pretrained vision-language backbone (Hugging Face transformers) as the encoder."""

    model: str = ""  # hub id or local folder
    layer: int = -1  # hidden-state layer used as conditioning tokens (negative counts from the end)
    num_layers: int | None = None  # keep only the first N language layers (SmolVLA-style truncation)
    mode: Literal["frozen", "frozen_vision", "lora", "full"] = "frozen"
    lora_rank: int = 16
    lora_alpha: int = 32
    gradient_checkpointing: bool = False
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    max_tokens: int = 256  # conditioning tokens kept after the model (the rest are dropped from the left)
    cache_features: bool = True  # frozen backbone: cache per-frame features on disk


@dataclass
class EncoderConfig:
    type: Literal["standard", "vlm"] = "standard"
    dim: int = 64  # width of every conditioning token (64 = the keypoint feature size of diffusion policy)
    cameras: list[str] | None = None  # None = every camera of the dataset; [] = low-dim only
    state_keys: list[str] = field(default_factory=lambda: ["observation.state"])
    language: bool = False  # encode the task string with the pretrained MiniLM (frozen)
    # the instruction scales and shifts the state MLP's hidden units (FiLM): "the red cube's position"
    # is a product of the instruction and the state, which a plain MLP forms only slowly; needs language
    state_language_film: bool = False
    # training-only targets: the camera tokens must also predict these dataset features (normalized),
    # e.g. the objects' positions in observation.environment_state — an auxiliary regression loss,
    # weighted by auxiliary_weight, that teaches the cameras where things are. The policy never reads
    # them: evaluation and deployment need the cameras and state_keys only.
    auxiliary_state_keys: list[str] = field(default_factory=list)
    auxiliary_weight: float = 1.0
    vision: VisionConfig = field(default_factory=VisionConfig)
    vlm: VLMConfig = field(default_factory=VLMConfig)

    def __post_init__(self):
        if self.dim < 8:
            raise ValueError(f"encoder.dim must be >= 8, got {self.dim}")
        if self.vision.language_film and self.type != "standard":
            raise ValueError("encoder.vision.language_film is for the standard encoder's CNN; a VLM reads the"
                             " instruction with the images already")
        if self.state_language_film and self.type != "standard":
            raise ValueError("encoder.state_language_film is for the standard encoder's state MLP")
        if self.state_language_film and not self.language:
            raise ValueError("encoder.state_language_film conditions the state MLP on the instruction:"
                             " it needs encoder.language: true")
        if self.vision.language_film and not self.language:
            raise ValueError("encoder.vision.language_film conditions the cameras on the instruction:"
                             " it needs encoder.language: true")
        if self.auxiliary_state_keys and self.type != "standard":
            raise ValueError("encoder.auxiliary_state_keys are predicted from the standard encoder's camera tokens")
        shared = sorted(set(self.auxiliary_state_keys) & set(self.state_keys))
        if shared:
            raise ValueError(f"encoder.auxiliary_state_keys {shared} are also inputs (state_keys): a target the"
                             " policy reads teaches nothing")
        if not self.auxiliary_weight >= 0:
            raise ValueError(f"encoder.auxiliary_weight must be >= 0, got {self.auxiliary_weight}")


@dataclass
class DenoiserConfig:
    """The network inside diffusion and flow heads."""

    type: Literal["unet", "transformer"] = "unet"
    unet_dims: list[int] = field(default_factory=lambda: [64, 128, 256])
    kernel_size: int = 5
    n_groups: int = 8
    transformer_dim: int = 256
    transformer_layers: int = 4
    transformer_heads: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        if not self.unet_dims or min(self.unet_dims) < 1:
            raise ValueError(f"denoiser.unet_dims needs one or more positive widths, got {self.unet_dims}")
        if self.kernel_size < 1 or self.n_groups < 1 or self.transformer_layers < 1 or self.transformer_heads < 1:
            raise ValueError("denoiser.kernel_size, n_groups, transformer_layers and transformer_heads must be >= 1")
        if self.transformer_dim % self.transformer_heads:
            raise ValueError(f"denoiser.transformer_dim ({self.transformer_dim}) must be a multiple of"
                             f" transformer_heads ({self.transformer_heads})")


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    scheduler: Literal["ddim", "ddpm"] = "ddim"
    num_inference_steps: int = 10
    clip_sample: bool = True
    # which training timesteps a K-step sampler visits (diffusers' `timestep_spacing`): "leading" starts
    # below the top level and ends at t = 0, a step the network barely changes (0, 25, 50, 75 for 4 of 100);
    # "trailing" starts at the top and spends every step denoising (24, 49, 74, 99). Sampling only: the
    # trained weights are the same. Trailing sampled better in bench/RESULTS.md, but RL fine-tuning keeps
    # leading: trailing's first step (alpha_bar ~0) makes PPO's likelihood ratios ill-conditioned (unless
    # finetune's stochastic_steps leaves that step deterministic).
    timestep_spacing: Literal["leading", "trailing"] = "leading"

    def __post_init__(self):
        if self.num_train_timesteps < 1 or not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ValueError(f"diffusion.num_inference_steps must be in [1, num_train_timesteps="
                             f"{self.num_train_timesteps}], got {self.num_inference_steps}")


@dataclass
class FlowConfig:
    num_inference_steps: int = 10
    time_beta_alpha: float = 1.5  # t ~ Beta(1.5, 1) as in pi0: more weight near the noise end
    time_beta_beta: float = 1.0
    time_min: float = 0.001

    def __post_init__(self):
        if self.num_inference_steps < 1:
            raise ValueError(f"flow.num_inference_steps must be >= 1, got {self.num_inference_steps}")


@dataclass
class ACTConfig:
    dim: int = 256
    heads: int = 8
    ff_dim: int = 3200
    encoder_layers: int = 4
    decoder_layers: int = 1
    vae_encoder_layers: int = 4
    latent_dim: int = 32
    kl_weight: float = 10.0
    dropout: float = 0.1
    use_vae: bool = True


@dataclass
class PolicyConfig:
    head: Literal["diffusion", "flow", "act"] = "diffusion"
    n_obs_steps: int = 2
    horizon: int = 16
    action_offset: int | None = None  # first action's offset from t; None = 1 - n_obs_steps (diffusion policy)
    n_action_steps: int = 8  # actions executed per chunk by default at evaluation / deployment
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    act: ACTConfig = field(default_factory=ACTConfig)
    state_norm: Literal["mean_std", "min_max", "identity"] = "min_max"
    action_norm: Literal["mean_std", "min_max", "identity"] | None = None  # None: min_max, mean_std for ACT
    # where xyzw quaternions start inside state features, e.g. {observation.state: [3]}: each is read
    # as its rotation matrix's first two columns, which (unlike a quaternion's sign) never jump
    # (robopolicy.policy.rotations)
    quaternions: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self):
        if self.n_obs_steps < 1 or self.horizon < 1:
            raise ValueError("n_obs_steps and horizon must be >= 1")
        if self.first_action_offset > 0:
            raise ValueError(f"action_offset must be <= 0 (the chunk must include the current step), got {self.action_offset}")
        if self.first_action_offset + self.horizon < 1:
            raise ValueError("horizon too short: the chunk must reach the current step")
        if not 1 <= self.n_action_steps <= self.horizon + self.first_action_offset:
            raise ValueError(f"n_action_steps must be in [1, {self.horizon + self.first_action_offset}], got {self.n_action_steps}")

    @property
    def first_action_offset(self) -> int:
        return 1 - self.n_obs_steps if self.action_offset is None else self.action_offset

    @property
    def action_normalization(self) -> str:
        if self.action_norm is not None:
            return self.action_norm
        from robopolicy.policy.heads import HEADS  # heads import this module: look them up when asked

        return HEADS[self.head].default_action_norm


@dataclass
class FeatureSpec:
    """Shape of one input or output feature, recorded from the training data."""

    key: str
    shape: list[int]
    kind: Literal["state", "camera", "action", "auxiliary"]  # auxiliary: a training-only target


@dataclass
class PolicySpec:
    """Everything a checkpoint needs besides weights: config + data features + provenance."""

    config: PolicyConfig
    features: list[FeatureSpec]
    fps: int = 20
    tasks: list[str] = field(default_factory=list)
    robot_type: str | None = None

    def keys(self, kind: str) -> list[str]:
        return [f.key for f in self.features if f.kind == kind]

    def shape(self, key: str) -> list[int]:
        for f in self.features:
            if f.key == key:
                return f.shape
        raise KeyError(key)

    def input_dim(self, key: str) -> int:
        """Width of state feature `key` as the network reads it (quaternions rewritten)."""
        from robopolicy.policy.rotations import expanded_dim

        return expanded_dim(self.shape(key)[0], self.config.quaternions.get(key, []))

    @property
    def action_dim(self) -> int:
        return self.shape("action")[0]

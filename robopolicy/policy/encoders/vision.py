"""Camera encoder: CNN trunk + spatial-softmax keypoints (the diffusion-policy recipe) or feature-map tokens.

ResNet-18 normally carries BatchNorm, whose running statistics drift badly when a policy trains
from scratch with small batches and EMA weights; GroupNorm has no running statistics, so it is
swapped in (as diffusion_policy does). `vision.norm: none` drops the normalization layers
instead: a from-scratch ResNet whose BatchNorm is frozen at its initial statistics (LeRobot's ACT)
computes exactly that, so this reproduces that network. Spatial softmax turns each feature map
into the expected image coordinates of K learned keypoints — a compact, position-aware summary
that suits control.
Training crops a random window (data augmentation); inference crops the center.

With `tokens: feature_map` an image is not summarized into one token: its feature map, average-pooled
to a small grid, gives one token per cell (plus a learned embedding of the cell), as ACT feeds its
backbone's last feature map to the transformer. Keypoints say where things are as 2K numbers; the
cells also keep what is there (is the cube between the fingers yet), which an attention head can
read directly.

With `language_film` the instruction also reaches the pixels' summary: a linear map of the
instruction's sentence vector gives each trunk channel a scale and a shift (FiLM, how RT-1 conditions its image
encoder on the instruction) before the keypoints are read. Keypoints are a softmax over a linear
map of the channels, so "put the red cube ..." can turn up the channels that respond to red and
a keypoint lands on the cube the instruction names; without it every keypoint is computed the
same whatever is asked, and a policy must find the named object's position in a later layer from
keypoints of all objects. The map starts at zero (scale 1, shift 0): at initialization the encoder
is the unconditioned one. With `keypoint_language_film` the instruction also FiLMs the hidden units of
the projection from keypoints to token: keypoints list where every object is, and this lets the
projection pass on the named object's (as `encoder.state_language_film` does for a low-dim state that
lists several objects). The map reads the sentence vector as the observation encoder normalizes
it (unit RMS per coordinate), not the policy's learned language token: before a policy can use
the instruction, training treats it as noise and shrinks that token's projection (~19x in 2500
steps on the image tabletop task), and a FiLM fed from it then gets almost no signal to learn from.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision
from torch import nn

from robopolicy.errors import CheckpointError
from robopolicy.policy.config import VisionConfig
from robopolicy.policy.encoders.film import film_mlp, modulate, zero_film

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def norm_layer(norm: str, groups: Callable[[int], int]) -> Callable[[int], nn.Module]:
    """The trunk's normalization for `channels`: GroupNorm with `groups(channels)` groups, or none."""
    if norm == "none":
        return lambda channels: nn.Identity()
    return lambda channels: nn.GroupNorm(groups(channels), channels)


def resnet18_trunk(pretrained_path: str | None = None, norm: str = "group") -> nn.Module:
    """ResNet-18 without its pooling / classifier, GroupNorm(16 channels per group) everywhere
    (or no normalization with norm="none")."""
    net = torchvision.models.resnet18(weights=None, norm_layer=norm_layer(norm, lambda c: max(c // 16, 1)))
    if pretrained_path:
        try:  # weights only: a pickle that carries code is refused, never run
            with warnings.catch_warnings():  # torch warns before refusing; the error below says it all
                warnings.simplefilter("ignore")
                state = torch.load(pretrained_path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"vision.pretrained_path: file not found: {pretrained_path}") from None
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(f"vision.pretrained_path: {pretrained_path} is not a torchvision state dict of"
                                  f" weights ({first[:200]})") from None
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise CheckpointError(f"vision.pretrained_path: {pretrained_path} does not hold a state dict of tensors")
        net.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
    return nn.Sequential(*list(net.children())[:-2])  # (B, 512, H/32, W/32)


def small_cnn(norm: str = "group") -> nn.Module:
    """A light trunk for CPU training: 4 convs, stride 8 overall, 128 channels."""
    make_norm = norm_layer(norm, lambda c: 8)

    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), make_norm(cout), nn.Mish()]

    return nn.Sequential(*block(3, 32, 2), *block(32, 64, 2), *block(64, 128, 2), *block(128, 128, 1))


@dataclass(frozen=True)
class Backbone:
    """A camera trunk `vision.backbone` can name: how to build it and its output channels and stride."""

    build: Callable[[VisionConfig], nn.Module]
    channels: int
    stride: int


BACKBONES = {
    "resnet18": Backbone(lambda cfg: resnet18_trunk(cfg.pretrained_path, cfg.norm), channels=512, stride=32),
    "small_cnn": Backbone(lambda cfg: small_cnn(cfg.norm), channels=128, stride=8),
}


class SpatialSoftmax(nn.Module):
    """(B, C, H, W) feature map -> (B, 2K) expected (x, y) of K learned keypoints in [-1, 1]."""

    def __init__(self, in_channels: int, num_keypoints: int):
        super().__init__()
        self.keypoints = nn.Conv2d(in_channels, num_keypoints, kernel_size=1)
        self.num_keypoints = num_keypoints

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        maps = self.keypoints(features)
        b, k, h, w = maps.shape
        ys = torch.linspace(-1.0, 1.0, h, device=maps.device, dtype=maps.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=maps.device, dtype=maps.dtype)
        attention = torch.softmax(maps.reshape(b, k, h * w).float(), dim=-1).view(b, k, h, w).to(maps.dtype)
        x = (attention.sum(dim=2) * xs).sum(dim=-1)
        y = (attention.sum(dim=3) * ys).sum(dim=-1)
        return torch.stack([x, y], dim=-1).reshape(b, 2 * k)


class LanguageFiLM(nn.Module):
    """Instruction vector (N, D) -> a per-channel scale and shift of a feature map (N, C, H, W)."""

    def __init__(self, instruction_dim: int, channels: int):
        super().__init__()
        self.map = zero_film(instruction_dim, channels)

    def forward(self, features: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
        return modulate(features, self.map, instruction, channel_dim=1)


class FeatureMapTokens(nn.Module):
    """(B, C, H, W) feature map -> (B, grid * grid, dim): the map average-pooled to a grid, each cell
    projected to a token, plus a learned embedding of the cell it came from."""

    def __init__(self, in_channels: int, grid: int, dim: int):
        super().__init__()
        self.grid = grid
        self.project = nn.Linear(in_channels, dim)
        self.cell = nn.Parameter(torch.randn(grid * grid, dim) * 0.02)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cells = nn.functional.adaptive_avg_pool2d(features, self.grid).flatten(2).transpose(1, 2)  # (B, g*g, C)
        return self.project(cells) + self.cell.to(cells.dtype)


class CameraEncoder(nn.Module):
    """Trunk + keypoints + projection, or trunk + feature-map cells: one image (and, with FiLM, its
    instruction) -> `tokens_per_image` tokens of width `dim`, shaped (N, tokens_per_image, dim)."""

    def __init__(self, cfg: VisionConfig, crop_hw: tuple[int, int], dim: int, instruction_dim: int = 0):
        super().__init__()
        backbone = BACKBONES[cfg.backbone]
        self.trunk, channels = backbone.build(cfg), backbone.channels
        if cfg.language_film and instruction_dim < 1:
            raise ValueError("vision.language_film needs the instruction vector's size")
        self.film = LanguageFiLM(instruction_dim, channels) if cfg.language_film else None
        # one of the two summaries; the other's parts stay None, so every encoder has the same attributes
        self.cells = self.pool = self.project = self.project_film = None
        if cfg.tokens == "feature_map":
            self.cells = FeatureMapTokens(channels, cfg.feature_grid, dim)
            self.tokens_per_image = cfg.feature_grid ** 2
        else:
            self.pool = SpatialSoftmax(channels, cfg.num_keypoints)
            self.project = nn.Sequential(nn.Linear(2 * cfg.num_keypoints, dim), nn.Mish(), nn.Linear(dim, dim))
            self.project_film = zero_film(instruction_dim, dim) if cfg.keypoint_language_film else None
            self.tokens_per_image = 1

    def forward(self, images: torch.Tensor, instruction: torch.Tensor | None = None) -> torch.Tensor:
        return self.summarize(self.trunk(images), instruction)

    def summarize(self, features: torch.Tensor, instruction: torch.Tensor | None) -> torch.Tensor:
        """Trunk features -> tokens: FiLM by the instruction (when configured), then keypoints and
        their projection, or the pooled cells."""
        if self.film is not None:
            if instruction is None:
                raise ValueError("this camera encoder is conditioned on the instruction (vision.language_film):"
                                 " give it the instruction vector")
            features = self.film(features, instruction)
        if self.cells is not None:
            return self.cells(features)
        return film_mlp(self.project, self.project_film, self.pool(features), instruction).unsqueeze(1)


class VisionEncoder(nn.Module):
    """All cameras, all observation steps: (B, T, 3, H, W) per camera -> (B, T, n_cameras * tokens_per_image, dim),
    each camera's tokens together, cameras in `camera_keys` order.

    `instruction` (B, instruction_dim), the normalized sentence vector, is needed when the cameras are
    FiLM-conditioned.
    """

    def __init__(self, cfg: VisionConfig, camera_keys: list[str], image_hw: tuple[int, int], dim: int,
                 instruction_dim: int = 0):
        super().__init__()
        self.camera_keys = list(camera_keys)
        h, w = image_hw
        self.crop_hw = (max(8, int(round(h * cfg.crop_ratio))), max(8, int(round(w * cfg.crop_ratio))))
        if cfg.shared:
            self.shared = CameraEncoder(cfg, self.crop_hw, dim, instruction_dim)
            self.per_camera = None
        else:
            self.shared = None
            self.per_camera = nn.ModuleList([CameraEncoder(cfg, self.crop_hw, dim, instruction_dim)
                                             for _ in camera_keys])
        self.tokens_per_image = self.camera_encoders()[0].tokens_per_image
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def camera_encoders(self) -> list[CameraEncoder]:
        """The networks images go through: the shared one, or one per camera."""
        return [self.shared] if self.shared is not None else list(self.per_camera)

    def crop(self, x: torch.Tensor, random: bool) -> torch.Tensor:
        """(N, 3, H, W) -> (N, 3, ch, cw): a random window per image in training, else the center."""
        n, _, h, w = x.shape
        ch, cw = self.crop_hw
        if (ch, cw) == (h, w):
            return x
        if not random:
            top, left = (h - ch) // 2, (w - cw) // 2
            return x[:, :, top:top + ch, left:left + cw]
        top = torch.randint(0, h - ch + 1, (n,), device=x.device)
        left = torch.randint(0, w - cw + 1, (n,), device=x.device)
        rows = (top[:, None] + torch.arange(ch, device=x.device))[:, :, None]  # (N, ch, 1)
        cols = (left[:, None] + torch.arange(cw, device=x.device))[:, None, :]  # (N, 1, cw)
        idx = torch.arange(n, device=x.device)[:, None, None]
        return x.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2)

    def forward(self, images: dict[str, torch.Tensor], instruction: torch.Tensor | None = None) -> torch.Tensor:
        first = images[self.camera_keys[0]]
        b, t = first.shape[:2]
        n = len(self.camera_keys)
        if self.shared is not None:
            # one pass over every image of every camera: (B * T * n_cams, 3, H, W)
            stacked = torch.stack([images[k] for k in self.camera_keys], dim=2)  # (B, T, n, 3, H, W)
            flat = self._prepare(stacked.flatten(0, 2))
            per_image = None if instruction is None else instruction[:, None].expand(b, t * n, -1).flatten(0, 1)
            tokens = self.shared(flat, per_image)  # (B * T * n, tokens_per_image, dim)
            return tokens.reshape(b, t, n * self.tokens_per_image, -1)
        per_image = None if instruction is None else instruction[:, None].expand(b, t, -1).flatten(0, 1)
        outs = []
        for key, enc in zip(self.camera_keys, self.per_camera):
            outs.append(enc(self._prepare(images[key].flatten(0, 1)), per_image).reshape(b, t, self.tokens_per_image, -1))
        return torch.cat(outs, dim=2)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = self.crop(x, random=self.training)
        x = (x - self.mean) / self.std
        # Match the weights' layout: NHWC pays off for bf16 training (the trainer converts the
        # weights), while NCHW weights with NHWC inputs cost a reorder per conv (2x slower at batch 4).
        first = next(self.parameters())
        if first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last) and not first.is_contiguous():
            return x.contiguous(memory_format=torch.channels_last)
        return x


"""Small configs that train in seconds on the fixtures, shared by the training tests."""

from conftest import LIFT_VIDEO

from robopolicy.config import load_config

LOW_DIM_STATE = "policy.encoder.state_keys=[observation.state,observation.environment_state]"

HEAD_OVERRIDES = {
    "diffusion": ["policy.head=diffusion", "policy.denoiser.unet_dims=[32,64]"],
    "flow": ["policy.head=flow", "policy.denoiser.unet_dims=[32,64]"],
    "act": ["policy.head=act", "policy.action_offset=0", "policy.n_obs_steps=1", "policy.act.dim=64",
            "policy.act.ff_dim=256", "policy.act.encoder_layers=2", "policy.act.vae_encoder_layers=2",
            "policy.act.heads=4"],
}


def tiny_config(tmp_path, head, name=None, extra=(), dataset=LIFT_VIDEO, images=False):
    overrides = [f"data.path={dataset}", f"name={name or head}", f"output_dir={tmp_path / 'runs'}",
                 "train.batch_size=32", "train.lr=1e-3", "train.warmup_steps=20", "train.log_every=10",
                 "train.progress=false", "policy.encoder.dim=32", *HEAD_OVERRIDES[head]]
    if images:
        overrides += ["policy.encoder.vision.backbone=small_cnn", "policy.encoder.vision.num_keypoints=16",
                      "train.batch_size=8"]
    else:
        overrides += ["policy.encoder.cameras=[]", LOW_DIM_STATE]
    return load_config(None, [*overrides, *extra])

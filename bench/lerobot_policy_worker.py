"""A LeRobot policy behind a local connection, for robopolicy's episode runner (`lerobot_adapter.py`).

Runs in the LeRobot environment (it pins its own torch and numpy, so it cannot share a process with
robopolicy):

  /tmp/lerobot/bin/python bench/lerobot_policy_worker.py CHECKPOINT FD [OVERRIDES_JSON]

CHECKPOINT is a `lerobot-train` output's `pretrained_model` folder (config, weights and the saved
pre/post-processor pipelines). OVERRIDES_JSON sets inference fields of the saved policy config before
the policy is built, e.g. '{"n_action_steps": 1, "temporal_ensemble_coeff": 0.01}' (ACT's temporal
ensembling). FD is the worker's end of a socket pair the adapter made and passed down; the worker
answers requests on it until the adapter closes its end:

  ("reset",)            -> ("ok",)                 policy.reset(): clears LeRobot's observation/action queues
  ("act", observation)  -> ("action", array, new)  the action for this step; `new` is True when the
                                                   policy predicted a new chunk for it

Observations and actions cross as (dtype, shape, bytes) triples, not pickled arrays: the two
environments have different numpy major versions. This is LeRobot's own evaluation path
(`lerobot_eval.rollout`): preprocess (images HWC uint8 -> CHW float in [0, 1]), the saved
preprocessor (normalization), `select_action`, the saved postprocessor (unnormalization).
"""

from __future__ import annotations

import json
import sys
from multiprocessing.connection import Connection

import numpy as np
import torch

# this script's folder (numpy only, so importable in either environment)
from lerobot_adapter import pack, unpack


def load(checkpoint: str, overrides: dict):
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors

    config = PreTrainedConfig.from_pretrained(checkpoint)
    config.device = "cpu"
    for field, value in overrides.items():
        if not hasattr(config, field):
            raise SystemExit(f"{checkpoint}: the {config.type} config has no field {field!r}")
        setattr(config, field, value)
    policy = get_policy_class(config.type).from_pretrained(checkpoint, config=config)
    policy.eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=checkpoint,
                                         preprocessor_overrides={"device_processor": {"device": "cpu"}})
    return policy, pre, post


def batch_of(observation: dict) -> dict:
    """One robopolicy observation (the adapter sends only the features the policy reads) as LeRobot's
    batch of one."""
    batch = {}
    for key, packed in observation.items():
        value = torch.from_numpy(unpack(packed).copy())
        if value.dtype == torch.uint8:  # camera: HWC uint8 -> CHW float in [0, 1], as lerobot_eval does
            value = value.permute(2, 0, 1) / 255.0
        batch[key] = value.float().unsqueeze(0)
    return batch


def queued_actions(policy) -> int:
    """How many actions the policy still holds from its last chunk (diffusion: _queues, ACT: _action_queue)."""
    queues = getattr(policy, "_queues", None)
    if queues is not None and "action" in queues:
        return len(queues["action"])
    return len(getattr(policy, "_action_queue", ()))


def main() -> None:
    checkpoint, fd = sys.argv[1], int(sys.argv[2])
    overrides = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    torch.set_num_threads(1)  # one episode per worker process, like robopolicy's evaluator
    policy, pre, post = load(checkpoint, overrides)
    connection = Connection(fd)
    connection.send(("ready", sorted(policy.config.input_features)))
    while True:
        try:
            request = connection.recv()
        except EOFError:
            break
        if request[0] == "reset":
            policy.reset()
            connection.send(("ok",))
        elif request[0] == "act":
            new_chunk = queued_actions(policy) == 0
            with torch.inference_mode():
                action = post(policy.select_action(pre(batch_of(request[1]))))
            connection.send(("action", pack(action.squeeze(0).cpu().numpy().astype(np.float32)), new_chunk))
        else:
            connection.send(("error", f"unknown request {request[0]!r}"))


if __name__ == "__main__":
    main()

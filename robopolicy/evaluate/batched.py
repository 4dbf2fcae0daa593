"""Evaluation with batched policy calls, on the rollout engine of fine-tuning (`rl/vector.py`).

The default evaluator gives every worker process its own copy of the policy and calls it with a
batch of one per decision, so each process pays the per-call overhead of the network alone.
Here the envs live in the worker processes and the policy in this one: every decision samples the
chunks of all envs waiting for one in a single forward pass, while the workers simulate. Same
episodes (one per seed, the same step limit and chunk execution), fewer and larger policy calls.

What it does not do, and the default evaluator does: videos, per-episode crash isolation (a
failing env stops the evaluation), temporal ensembling. Composed policies (GPC) batch too: each
part reads its own observations of all waiting envs. Each episode draws its sampling noise from its
own generator seeded with the episode's seed, as the default evaluator does, so an episode samples
the same noise whatever `envs`, `workers` or batch it runs in; what batching can still change is the
last bits of the network's arithmetic.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from robopolicy.errors import ConfigError
from robopolicy.evaluate.config import EvalConfig
from robopolicy.evaluate.rollout import EpisodeResult
from robopolicy.policy.execution import resolve_n_action_steps


def check_batchable(cfg: EvalConfig, label_with_expert: bool) -> None:
    """Settings the batched evaluator cannot honour are refused before anything starts."""
    if cfg.execution != "receding":
        raise ConfigError(f"batched evaluation (--envs / eval.envs) executes chunks (receding);"
                          f" execution={cfg.execution!r} needs --envs 0")
    if label_with_expert:
        raise ConfigError("batched evaluation (eval.envs): expert-labelled rollouts (DAgger) need eval.envs=0")


def run_batched(policy, env_name: str, cfg: EvalConfig, seeds: list[int], env_kwargs: dict,
                on_episode: Callable[[EpisodeResult], None]) -> int:
    """Roll out one episode per seed on `cfg.envs` envs over `cfg.workers` processes; each finished
    episode goes to `on_episode`. Returns the number of worker processes used."""
    from robopolicy.rl.vector import ChunkEnvs

    n_envs = min(cfg.envs, len(seeds))
    try:
        n_act = resolve_n_action_steps(policy, cfg.n_action_steps)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    policy.eval()
    pending = list(seeds)
    workers = min(cfg.workers, n_envs)
    with ChunkEnvs(env_name, n_envs, policy.config.n_obs_steps, env_kwargs, cfg.max_steps, workers) as envs:
        running: dict[int, dict] = {}  # env index -> the episode it is running
        windows: dict[int, dict] = {}

        def start(free: list[int]) -> None:
            """Reset the free envs onto the next seeds, all in one round trip to the workers."""
            starts = {i: pending.pop(0) for i in free[:len(pending)]}
            if starts:
                windows.update(envs.reset(starts))
            for i, seed in starts.items():
                running[i] = {"seed": seed, "start": time.perf_counter(), "inferences": 0,
                              "generator": torch.Generator().manual_seed(seed)}

        start(list(range(n_envs)))
        while running:
            ids = sorted(running)
            with torch.inference_mode():
                chunks = policy.sample_actions(policy.observation_batches([windows[i] for i in ids]),
                                               steps=cfg.inference_steps,
                                               generator=[running[i]["generator"] for i in ids])
            chunks = chunks[:, :n_act].float().cpu().numpy()
            for i in ids:
                running[i]["inferences"] += 1
            results = envs.step({i: chunks[j] for j, i in enumerate(ids)})
            finished = [i for i in ids if results[i].done]
            for i in ids:
                r = results[i]
                if not r.done:
                    windows[i] = r.window
                    continue
                episode = running.pop(i)
                on_episode(EpisodeResult(seed=episode["seed"], success=r.success, length=r.episode_steps,
                                         first_success_step=r.episode_steps if r.success else None,
                                         inferences=episode["inferences"],
                                         seconds=time.perf_counter() - episode["start"],
                                         task=str(windows[i].get("task", ""))))
            start(finished)
    return workers

"""`robopolicy finetune`: PPO on a behaviour-cloned flow or diffusion policy's denoising chain.

Each iteration runs one episode in each of `envs` parallel envs (seeds `seed + iteration * envs + i`,
disjoint from demonstrations and evaluation), a decision being one chunk sampled by the stochastic
chain (robopolicy.rl.chain) for all waiting envs at once (robopolicy.rl.vector); then it computes
advantages (GAE over decisions) and takes PPO epochs over the decisions, updating the policy's own
networks, the exploration-noise network and a value network. Every `eval_every` iterations the
policy is scored by the standard evaluator on the evaluation seeds, with the deterministic sampler
of K = `denoising_steps` steps that the fine-tuned checkpoint uses from then on.

Run folder (<output_dir>/<name>):
  config.yaml           the resolved config
  metrics.jsonl         one line per iteration (rollout success, return, KL, noise level, losses,
                        env steps, wall seconds) and the evaluations; curve.png plots success
                        against env steps and wall time
  eval_before/, eval_NNNN/   evaluation reports (robopolicy eval's)
  finetune.json         success before and after on the same seeds, env steps, wall seconds
  checkpoints/last/     an ordinary policy folder (robopolicy eval / deploy / serve read it) whose
                        finetune_state/ holds the noise and value networks, the optimizers and the
                        iteration: `--resume` continues from it exactly as if never stopped
                        (every iteration's randomness is seeded from its index)
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from robopolicy.config import load_config, save_config
from robopolicy.errors import ConfigError, RobopolicyError
from robopolicy.evaluate.config import seed_ranges_overlap
from robopolicy.evaluate.evaluator import env_kwargs_for, evaluate
from robopolicy.fileio import atomic_directory
from robopolicy.policy.execution import resolve_n_action_steps
from robopolicy.policy.policy import Policy, write_policy_files
from robopolicy.rl.chain import StochasticChain, make_chain
from robopolicy.rl.config import FinetuneConfig
from robopolicy.rl.ppo import ValueNet, gae, ppo_losses
from robopolicy.rl.vector import ChunkEnvs
from robopolicy.structs import to_dict
from robopolicy.train.checkpoint import flatten_optimizer, unflatten_optimizer
from robopolicy.train.logger import MetricsLogger, read_metrics, truncate_metrics

STATE_DIR = "finetune_state"


def load_finetune_config(path: str | Path | None, overrides: list[str]) -> FinetuneConfig:
    return load_config(path, overrides, schema=FinetuneConfig)


@dataclasses.dataclass
class Decision:
    window: dict  # the observation window the chunk was sampled from
    chain: torch.Tensor  # (K + 1, H, A)
    log_prob: float  # summed over the chain's transitions, at sampling time
    value: float
    reward: float


class Learner:
    """The policy, its stochastic chain, the value network and their optimizers."""

    def __init__(self, policy: Policy, cfg: FinetuneConfig):
        self.policy, self.cfg = policy, cfg
        scored = None
        if cfg.ppo.likelihood == "executed":
            scored = slice(policy.chunk_start, policy.chunk_start + policy.config.n_action_steps)
        try:
            self.chain: StochasticChain = make_chain(policy.head, cfg.denoising_steps, policy.encoder.pooled_dim,
                                                     cfg.std_min, cfg.std_max, scored=scored,
                                                     correlation=cfg.noise_correlation,
                                                     stochastic=cfg.stochastic_steps)
        except TypeError as err:
            raise ConfigError(f"{cfg.checkpoint}: {err}") from None
        self.critic = ValueNet(policy.encoder.pooled_dim)
        self.reference = None
        if cfg.ppo.bc_coef > 0:  # a frozen copy of the starting policy
            ref_policy = copy.deepcopy(policy).requires_grad_(False)
            self.reference = (ref_policy, make_chain(ref_policy.head, cfg.denoising_steps,
                                                     ref_policy.encoder.pooled_dim, cfg.std_min, cfg.std_max,
                                                     stochastic=cfg.stochastic_steps))
        p = cfg.ppo
        self.optimizers = {
            "actor": torch.optim.AdamW(policy.parameters(), lr=p.actor_lr, weight_decay=0.0),
            "noise": torch.optim.Adam(self.chain.noise.parameters(), lr=p.noise_lr),
            "critic": torch.optim.Adam(self.critic.parameters(), lr=p.critic_lr),
        }
        # each optimizer's parameters have their gradient norm clipped on their own: a large value-loss
        # gradient (early, while the critic learns the returns) must not shrink the policy's step
        self.clipped_groups = [[q for g in o.param_groups for q in g["params"]] for o in self.optimizers.values()]
        # the chain's density and the encoder's conditioning must not change with a train/eval
        # switch (random crops in training mode): everything stays in eval mode, gradients flow anyway
        policy.eval()

    @property
    def n_elements(self) -> int:
        return len(self.chain.stochastic_steps) * self.chain.scored_elements

    # ------------------------------------------------------------------ rollouts
    @torch.no_grad()
    def act(self, windows: list[dict], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                             np.ndarray]:
        """Chains, their log-likelihoods, values and the actions to execute (robot units) for `windows`."""
        batch = self.policy.observation_batches(windows)
        cond = self.policy.encode(batch)
        chains, log_probs = self.chain.sample(cond, generator)
        values = self.critic(cond.pooled)
        start, n = self.policy.chunk_start, self.policy.config.n_action_steps
        actions = self.policy.normalizer.unnormalize("action", chains[:, -1])[:, start:start + n]
        return chains, log_probs, values, actions.float().cpu().numpy()

    def rollouts(self, envs: ChunkEnvs, seeds: list[int], generator: torch.Generator) -> tuple[list, dict]:
        """One episode per env; returns every env's decisions and the iteration's rollout statistics."""
        windows = envs.reset(dict(enumerate(seeds)))
        episodes: dict[int, list[Decision]] = {i: [] for i in range(len(seeds))}
        success: dict[int, bool] = {}
        env_steps, sim_seconds, started = 0, 0.0, time.perf_counter()
        while len(success) < len(seeds):
            ids = [i for i in range(len(seeds)) if i not in success]
            chains, log_probs, values, actions = self.act([windows[i] for i in ids], generator)
            results = envs.step({i: actions[j] for j, i in enumerate(ids)})
            for j, i in enumerate(ids):
                r = results[i]
                reward = (r.reward + self.cfg.env_reward_coef * r.env_reward if self.cfg.reward == "success"
                          else r.env_reward)
                episodes[i].append(Decision(windows[i], chains[j], float(log_probs[j]), float(values[j]), reward))
                env_steps += r.steps
                sim_seconds += r.sim_seconds
                if r.done:
                    success[i] = r.success
                else:
                    windows[i] = r.window
        returns = [sum(d.reward for d in episodes[i]) for i in episodes]
        stats = {"rollout/success_rate": float(np.mean(list(success.values()))),
                 "rollout/return": float(np.mean(returns)), "rollout/decisions": sum(len(e) for e in episodes.values()),
                 # rollout speed, policy included, against the simulator alone on as many processes
                 "rollout/steps_per_s": env_steps / (time.perf_counter() - started),
                 "rollout/raw_sim_steps_per_s": env_steps / sim_seconds * max(envs.workers, 1) if sim_seconds else 0.0,
                 "env_steps": env_steps}
        return list(episodes.values()), stats

    # ------------------------------------------------------------------ PPO
    def update(self, episodes: list[list[Decision]], generator: torch.Generator, actor_frozen: bool) -> dict:
        p = self.cfg.ppo
        decisions, advantages, returns = [], [], []
        for episode in episodes:
            adv, ret = gae(np.array([d.reward for d in episode]), np.array([d.value for d in episode]),
                           p.gamma, p.gae_lambda)
            decisions += episode
            advantages.append(adv)
            returns.append(ret)
        adv = torch.from_numpy(np.concatenate(advantages))
        adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(adv) > 1 else adv
        if p.shuffle_advantages:  # the control: each decision gets another decision's advantage
            adv = adv[torch.randperm(len(adv), generator=generator)]
        ret = torch.from_numpy(np.concatenate(returns))
        old = torch.tensor([d.log_prob for d in decisions])
        scale = self.n_elements if p.logprob_per_dimension else 1
        stats: dict[str, list[float]] = {}
        stopped = False
        for _ in range(p.epochs):
            order = torch.randperm(len(decisions), generator=generator)
            for start in range(0, len(order), p.minibatch_size):
                idx = order[start:start + p.minibatch_size]
                batch = self.policy.observation_batches([decisions[i].window for i in idx])
                chains = torch.stack([decisions[i].chain for i in idx])
                cond = self.policy.encode(batch)
                out = self.chain.log_prob(cond, chains)
                ppo = ppo_losses(out["log_prob"].sum(-1) / scale, old[idx] / scale, adv[idx], p.clip)
                value_loss = 0.5 * (self.critic(cond.pooled) - ret[idx]).pow(2).mean()
                loss = p.value_coef * value_loss
                if not actor_frozen:
                    loss = loss + ppo["policy_loss"] - p.entropy_coef * out["log_std"].mean()
                    if self.reference is not None:
                        ref_policy, ref_chain = self.reference
                        with torch.no_grad():
                            target = ref_chain.network_outputs(ref_policy.encode(batch), chains)
                        bc = (out["outputs"] - target).pow(2).mean()
                        loss = loss + p.bc_coef * bc
                        stats.setdefault("bc_loss", []).append(float(bc))
                for optimizer in self.optimizers.values():
                    optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for params in self.clipped_groups:
                    torch.nn.utils.clip_grad_norm_(params, p.max_grad_norm)
                self.optimizers["critic"].step()
                if not actor_frozen:
                    self.optimizers["actor"].step()
                    self.optimizers["noise"].step()
                for key, value in (("policy_loss", ppo["policy_loss"]), ("value_loss", value_loss),
                                   ("approx_kl", ppo["approx_kl"]), ("clip_fraction", ppo["clip_fraction"]),
                                   ("noise_std", out["log_std"].exp().mean())):
                    stats.setdefault(key, []).append(float(value.detach()))
                if not actor_frozen and p.target_kl is not None and float(ppo["approx_kl"]) > p.target_kl:
                    stopped = True
                    break
            if stopped:
                break
        summary = {f"ppo/{k}": float(np.mean(v)) for k, v in stats.items()}
        summary["ppo/early_stop"] = stopped
        return summary

    # ------------------------------------------------------------------ checkpoints
    def policy_spec(self):
        """The fine-tuned policy samples deterministically with the chain's K steps."""
        spec = copy.deepcopy(self.policy.spec)
        config = spec.config
        if config.head == "flow":
            config.flow.num_inference_steps = self.cfg.denoising_steps
        else:
            config.diffusion.num_inference_steps = self.cfg.denoising_steps
            config.diffusion.scheduler = "ddim"
        return spec

    def save(self, directory: Path, iteration: int, record: dict) -> None:
        weights = {k: v.detach().cpu().contiguous() for k, v in self.policy.state_dict().items()}
        tensors = {f"noise.{k}": v.detach().cpu().contiguous() for k, v in self.chain.noise.state_dict().items()}
        tensors.update({f"critic.{k}": v.detach().cpu().contiguous() for k, v in self.critic.state_dict().items()})
        meta = {"iteration": iteration, **record, "optimizers": {}}
        for name, optimizer in self.optimizers.items():
            flat, optimizer_meta = flatten_optimizer(optimizer)
            tensors.update({f"optim.{name}.{k}": v for k, v in flat.items()})
            meta["optimizers"][name] = optimizer_meta
        with atomic_directory(directory) as tmp:
            write_policy_files(tmp, self.policy_spec(), weights, self.policy.stats)
            (tmp / STATE_DIR).mkdir()
            save_file(tensors, str(tmp / STATE_DIR / "state.safetensors"))
            (tmp / STATE_DIR / "state.json").write_text(json.dumps(meta, indent=1))

    def load(self, directory: Path) -> dict:
        state = directory / STATE_DIR
        try:
            tensors = load_file(str(state / "state.safetensors"))
            meta = json.loads((state / "state.json").read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RobopolicyError(f"{state}: cannot resume from it ({err})") from None
        self.policy.load_state_dict(Policy.load(directory).state_dict())
        self.chain.noise.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("noise.")})
        self.critic.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("critic.")})
        for name, optimizer in self.optimizers.items():
            prefix = f"optim.{name}."
            flat = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            optimizer.load_state_dict(unflatten_optimizer(flat, meta["optimizers"][name]))
        return meta


def start_learner(cfg: FinetuneConfig) -> Learner:
    """The starting policy as the rollouts run it (its sampler spacing, actions per decision) and its Learner.
    The noise and value networks' initial weights are drawn from `cfg.seed`: a run is reproducible."""
    policy = Policy.load(cfg.checkpoint, timestep_spacing=cfg.timestep_spacing)
    if cfg.n_action_steps:
        try:  # the rollouts' and the fine-tuned checkpoint's
            policy.config.n_action_steps = resolve_n_action_steps(policy, cfg.n_action_steps)
        except ValueError as err:
            raise ConfigError(f"n_action_steps={cfg.n_action_steps}: {cfg.checkpoint}: {err}") from None
    torch.manual_seed(cfg.seed)
    return Learner(policy, cfg)


def rollout_env_kwargs(policy: Policy, cfg: FinetuneConfig) -> dict:
    """The rollout envs' constructor arguments: the policy's observations, as evaluation makes them, and the config's."""
    return {**env_kwargs_for(policy.spec, cfg.eval, record=False), **cfg.env_kwargs}


def finetune(cfg: FinetuneConfig, resume: bool = False, progress: bool | None = None) -> dict:
    """Fine-tune `cfg.checkpoint` with PPO; returns the summary written to finetune.json."""
    if not cfg.checkpoint:
        raise ConfigError("finetune needs the policy to start from: --checkpoint RUN/checkpoints/last")
    if cfg.validation_episodes and seed_ranges_overlap(cfg.validation_seed, cfg.validation_episodes,
                                                       cfg.eval.seed, cfg.eval.episodes):
        raise ConfigError(f"validation seeds {cfg.validation_seed}+{cfg.validation_episodes} overlap the evaluation "
                          f"seeds {cfg.eval.seed}+{cfg.eval.episodes}: choose the checkpoint on seeds it is not scored on")
    run_dir = Path(cfg.output_dir) / cfg.name
    last = run_dir / "checkpoints" / "last"
    if resume and not last.is_dir():
        raise RobopolicyError(f"nothing to resume: {last} does not exist")
    if not resume and last.is_dir():
        raise RobopolicyError(f"{run_dir} already holds a fine-tuning run: pass --resume, or choose another name")
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    rollout_threads = torch.get_num_threads()
    learner = start_learner(cfg)
    policy = learner.policy
    env_name = cfg.env or _checkpoint_env(Path(cfg.checkpoint))
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    eval_cfg = dataclasses.replace(cfg.eval, inference_steps=cfg.denoising_steps, max_steps=cfg.max_steps,
                                   n_action_steps=cfg.n_action_steps or cfg.eval.n_action_steps,
                                   timestep_spacing=cfg.timestep_spacing or cfg.eval.timestep_spacing)
    show = cfg.progress if progress is None else progress

    validation_cfg = dataclasses.replace(eval_cfg, seed=cfg.validation_seed, episodes=cfg.validation_episodes)
    best = run_dir / "checkpoints" / "best"
    record = {"env_steps": 0, "wall_seconds": 0.0, "success_before": None, "best_validation": None,
              "best_iteration": None}
    start_iteration = 0
    if resume:
        meta = learner.load(last)
        start_iteration = meta["iteration"]
        record = {k: meta.get(k, v) for k, v in record.items()}
        truncate_metrics(run_dir, start_iteration)
    logger = MetricsLogger(run_dir, cfg.wandb, to_dict(cfg))
    if record["success_before"] is None:
        before = evaluate(cfg.checkpoint, env_name, eval_cfg, run_dir / "eval_before", progress=show)
        record["success_before"] = before.summary["success_rate"]
        logger.log(0, {"eval/success_rate": record["success_before"], "env_steps": 0, "wall_seconds": 0.0})
        learner.save(last, 0, record)

    def score(iteration: int, folder: Path = last) -> float:
        """A saved policy's success on the evaluation seeds, with the deterministic K-step sampler."""
        out = run_dir / (f"eval_{iteration:04d}" if folder == last else f"eval_{folder.name}_{iteration:04d}")
        return evaluate(folder, env_name, eval_cfg, out, progress=False).summary["success_rate"]

    def validate(iteration: int) -> float:
        """Score `last` on the validation seeds; keep it as `best` when it beats every earlier one."""
        t = time.perf_counter()
        rate = evaluate(last, env_name, validation_cfg, run_dir / f"validation_{iteration:04d}",
                        progress=False).summary["success_rate"]
        if record["best_validation"] is None or rate > record["best_validation"]:
            _replace_folder(last, best)
            record["best_validation"], record["best_iteration"] = rate, iteration
        record["wall_seconds"] += time.perf_counter() - t  # part of the method, so part of its budget
        learner.save(last, iteration, record)
        return rate

    if cfg.validation_episodes and record["best_iteration"] is None:
        logger.log(start_iteration, {"validation/success_rate": validate(start_iteration),
                                     "env_steps": record["env_steps"], "wall_seconds": record["wall_seconds"]})

    env_kwargs = rollout_env_kwargs(policy, cfg)
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=cfg.iterations, initial=start_iteration, desc=f"finetune {env_name}", unit="iter",
                   dynamic_ncols=True)

    def out_of_time() -> bool:
        return cfg.wall_minutes is not None and record["wall_seconds"] >= 60 * cfg.wall_minutes

    end = start_iteration  # the last iteration done, where the run's result is decided
    with ChunkEnvs(env_name, cfg.envs, policy.config.n_obs_steps, env_kwargs, cfg.max_steps, cfg.workers) as envs:
        for iteration in range(start_iteration, cfg.iterations):
            if out_of_time():
                break
            started = time.perf_counter()
            generator = torch.Generator().manual_seed(cfg.seed * 1000 + iteration)
            seeds = [cfg.seed + iteration * cfg.envs + i for i in range(cfg.envs)]
            episodes, stats = learner.rollouts(envs, seeds, generator)
            if cfg.update_threads:
                torch.set_num_threads(cfg.update_threads)
            stats.update(learner.update(episodes, generator,
                                        actor_frozen=iteration < cfg.ppo.critic_warmup_iterations))
            if cfg.update_threads:
                torch.set_num_threads(rollout_threads)
            record["env_steps"] += stats.pop("env_steps")
            record["wall_seconds"] += time.perf_counter() - started
            end = iteration + 1
            final = end == cfg.iterations or out_of_time()
            metrics = {**stats, "env_steps": record["env_steps"], "wall_seconds": record["wall_seconds"]}
            if bar is not None:
                bar.update(1)
                bar.set_postfix(success=f"{stats['rollout/success_rate']:.2f}", kl=f"{stats.get('ppo/approx_kl', 0):.3f}",
                                std=f"{stats.get('ppo/noise_std', 0):.3f}")
            evaluating = (cfg.eval_every and end % cfg.eval_every == 0) or final
            if evaluating or end % max(cfg.save_every, 1) == 0:
                learner.save(last, end, record)
            if evaluating:
                metrics["eval/success_rate"] = record["success_after"] = score(end)
            if cfg.validation_episodes and (end % cfg.validation_every == 0 or final):
                metrics["validation/success_rate"] = validate(end)
                metrics["wall_seconds"] = record["wall_seconds"]
            logger.log(end, metrics)
            if final:
                break
    if bar is not None:
        bar.close()
    if record.get("success_after") is None:  # no iteration left, or the budget spent by a validation: score `last`
        record["success_after"] = score(end)
        logger.log(end, {"eval/success_rate": record["success_after"], "env_steps": record["env_steps"],
                         "wall_seconds": record["wall_seconds"]})
    result = last
    if cfg.validation_episodes:  # the run's result is the checkpoint chosen on the validation seeds
        record["success_last"] = record["success_after"]
        if record["best_iteration"] != end:
            record["success_after"] = score(record["best_iteration"], best)
        result = best
    logger.close()
    plot_curve(run_dir)
    rates = [r for r in read_metrics(run_dir) if r.get("rollout/raw_sim_steps_per_s")]
    speed = {"rollout_steps_per_s": float(np.mean([r["rollout/steps_per_s"] for r in rates])) if rates else None,
             "raw_sim_steps_per_s": float(np.mean([r["rollout/raw_sim_steps_per_s"] for r in rates])) if rates else None}
    summary = {"env": env_name, "head": policy.config.head, "checkpoint": str(cfg.checkpoint), **speed,
               "success_before": record["success_before"], "success_after": record.get("success_after"),
               "episodes": cfg.eval.episodes, "eval_seeds": [cfg.eval.seed, cfg.eval.seed + cfg.eval.episodes - 1],
               "iterations": end, "env_steps": record["env_steps"], "wall_seconds": record["wall_seconds"],
               "denoising_steps": cfg.denoising_steps, "stochastic_steps": len(learner.chain.stochastic_steps),
               "n_action_steps": policy.config.n_action_steps,
               "fine_tuned": str(result)}
    if cfg.validation_episodes:
        summary.update({"success_last": record["success_last"], "selected_iteration": record["best_iteration"],
                        "best_validation": record["best_validation"],
                        "validation_seeds": [cfg.validation_seed, cfg.validation_seed + cfg.validation_episodes - 1]})
    (run_dir / "finetune.json").write_text(json.dumps(summary, indent=1))
    return summary


def _replace_folder(source: Path, target: Path) -> None:
    """Copy `source` over `target` atomically: a kill leaves the old copy or the new one whole."""
    with atomic_directory(target) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


def _checkpoint_env(checkpoint: Path) -> str:
    """The env a checkpoint's training run evaluated on (its run's config.yaml), if it names one."""
    for config in (checkpoint.parent.parent / "config.yaml", checkpoint / "config.yaml"):
        if config.is_file():
            env = load_config(config).eval.env
            if env:
                return env
    raise ConfigError(f"{checkpoint}: its run names no env to fine-tune in; pass --env")


def plot_curve(run_dir: Path) -> Path | None:
    """curve.png: evaluation, validation and rollout success against env steps and against wall time."""
    records = read_metrics(run_dir)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x in zip(axes, ("env_steps", "wall_seconds")):
        rollouts = [r for r in records if "rollout/success_rate" in r]
        evals = [r for r in records if "eval/success_rate" in r]
        ax.plot([r[x] for r in rollouts], [r["rollout/success_rate"] for r in rollouts], alpha=0.5,
                label="rollouts (noisy chain)")
        ax.plot([r[x] for r in evals], [r["eval/success_rate"] for r in evals], "o-", label="evaluation seeds")
        checks = [r for r in records if "validation/success_rate" in r]
        if checks:
            ax.plot([r[x] for r in checks], [r["validation/success_rate"] for r in checks], "s--",
                    label="validation seeds")
        ax.set_xlabel("environment steps" if x == "env_steps" else "wall time (s)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("success rate")
    axes[0].legend()
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = run_dir / "curve.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out

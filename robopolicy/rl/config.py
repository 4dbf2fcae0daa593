"""`robopolicy finetune` settings: YAML + dotted overrides, typed and strict like experiment configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from robopolicy.evaluate.config import EvalConfig
from robopolicy.train.config import WandbConfig


@dataclass
class PPOConfig:
    """PPO over the denoising chain. An environment step of the RL problem is one chunk decision
    (`n_action_steps` env steps); its reward is the env's success (1 once, then the episode ends)."""

    gamma: float = 0.99  # per decision
    gae_lambda: float = 0.95
    epochs: int = 4  # passes over each iteration's rollouts
    minibatch_size: int = 256
    clip: float = 0.2  # ratio clipping
    target_kl: float | None = 0.05  # stop an iteration's epochs once the approximate KL exceeds it
    actor_lr: float = 1e-5  # the policy's own networks (encoder, velocity / noise predictor)
    noise_lr: float = 3e-4  # the exploration-noise network
    critic_lr: float = 1e-3
    value_coef: float = 0.5
    entropy_coef: float = 0.0  # bonus on the chain's mean log standard deviation
    bc_coef: float = 0.0  # pull the network's outputs along the chain toward the starting policy's
    max_grad_norm: float = 1.0
    logprob_per_dimension: bool = True  # ratios from the mean log-likelihood per chain element, not the sum
    # which actions of a sampled chunk the likelihood counts: those the env executes (n_action_steps
    # from the chunk's start), or the whole chunk
    likelihood: Literal["executed", "chunk"] = "executed"
    critic_warmup_iterations: int = 0  # iterations that train the value network only
    # a control, not a method: permute the advantages across each update's decisions, so the update keeps
    # its size and loses its signal; a run that learns must beat the same run with this on
    shuffle_advantages: bool = False

    def __post_init__(self):
        if not 0 < self.gamma <= 1 or not 0 <= self.gae_lambda <= 1:
            raise ValueError("ppo.gamma must be in (0, 1] and ppo.gae_lambda in [0, 1]")
        if self.epochs < 1 or self.minibatch_size < 1 or self.clip <= 0:
            raise ValueError("ppo.epochs and ppo.minibatch_size must be >= 1 and ppo.clip > 0")


@dataclass
class FinetuneConfig:
    name: str = "finetune"
    output_dir: str = "runs"  # the run folder is <output_dir>/<name>
    checkpoint: str | None = None  # the behaviour-cloned policy to start from (a checkpoint folder)
    env: str | None = None  # None: the env the checkpoint's run evaluated on
    iterations: int = 100  # rollout + update rounds
    # stop after the iteration that brings the run's wall time (rollouts, updates and validation; across
    # resumes) to this many minutes, and finish as at the last iteration; None: run all `iterations`
    wall_minutes: float | None = None
    envs: int = 8  # parallel envs; each runs one episode per iteration
    workers: int = 2  # rollout worker processes (0: envs in this process)
    seed: int = 400_000  # rollout seeds: disjoint from demonstrations, evaluation (100000+), validation, DAgger
    denoising_steps: int = 4  # chain length K; the fine-tuned policy samples with K deterministic steps
    # how many of the chain's last steps get exploration noise and a likelihood (None: all K); the first
    # K - N run deterministically (robopolicy/rl/chain.py says when that helps)
    stochastic_steps: int | None = None
    # actions executed per chunk decision, in the rollouts, the evaluations and the fine-tuned checkpoint's
    # config (None: the policy's own)
    n_action_steps: int | None = None
    # a diffusion policy's sampler spacing for the rollouts, every evaluation (the start's too) and the
    # fine-tuned checkpoint (None: the start's own); the chain's first step decides it (robopolicy/rl/chain.py)
    timestep_spacing: Literal["leading", "trailing"] | None = None
    std_min: float = 0.05  # exploration noise bounds, in normalized action units ([-1, 1] = the data's range)
    std_max: float = 0.20
    # correlation of the exploration noise between any two time steps of a chunk (per action dimension):
    # 0 independent; near 1 mostly one offset per chunk (robopolicy/rl/chain.py)
    noise_correlation: float = 0.0
    reward: Literal["success", "env"] = "success"  # or the env's own (possibly shaped) reward, summed per chunk
    # with reward: success, plus this times the env's own reward summed over the chunk: a dense hint
    # (e.g. robosuite's staged reward, env_kwargs.reward_shaping: true) kept small enough that
    # succeeding early still pays more than collecting it until the step limit
    env_reward_coef: float = 0.0
    env_kwargs: dict = field(default_factory=dict)  # extra keyword arguments for the env's constructor
    max_steps: int | None = None  # episode step limit; None = the env's default (as in evaluation)
    num_threads: int | None = None  # torch threads in this process while rollouts run (None: torch's default)
    # torch threads for the PPO update, when the rollout workers are idle (None: as num_threads)
    update_threads: int | None = None
    eval_every: int = 10  # evaluate on eval.seed... every N iterations (0: only before and after)
    # checkpoint selection on validation seeds, disjoint from the evaluation seeds: every
    # `validation_every` iterations the policy is scored on `validation_episodes` episodes from
    # `validation_seed`, and the best so far (the starting policy included) is kept in checkpoints/best,
    # which is then the run's result. A PPO run's last iteration is not its best one: the noisy
    # updates can walk downhill. 0 episodes: no selection, the last iteration is the result.
    validation_episodes: int = 0
    validation_every: int = 5
    validation_seed: int = 200_000
    save_every: int = 1  # checkpoint every N iterations (resume starts from the last one)
    progress: bool = True  # a progress bar (success rate, return, KL, noise level)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(episodes=50, workers=2, videos=0))

    def __post_init__(self):
        if self.iterations < 1 or self.envs < 1 or self.workers < 0:
            raise ValueError("iterations and envs must be >= 1, workers >= 0")
        if self.wall_minutes is not None and self.wall_minutes <= 0:
            raise ValueError(f"wall_minutes must be > 0, got {self.wall_minutes}")
        if self.n_action_steps is not None and self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {self.n_action_steps}")
        if self.denoising_steps < 1:
            raise ValueError(f"denoising_steps must be >= 1, got {self.denoising_steps}")
        if self.stochastic_steps is not None and not 1 <= self.stochastic_steps <= self.denoising_steps:
            raise ValueError(f"stochastic_steps must be in [1, denoising_steps={self.denoising_steps}], "
                             f"got {self.stochastic_steps}")
        if self.validation_episodes < 0 or self.validation_every < 1:
            raise ValueError("validation_episodes must be >= 0 and validation_every >= 1")
        if not 0 <= self.noise_correlation < 1:
            raise ValueError(f"noise_correlation must be in [0, 1), got {self.noise_correlation}")
        if not 0 < self.std_min <= self.std_max:
            raise ValueError(f"need 0 < std_min <= std_max, got {self.std_min}, {self.std_max}")

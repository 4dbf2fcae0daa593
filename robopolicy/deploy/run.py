"""`robopolicy deploy`: wire a policy (local or remote), a robot, safety and the loop together."""

from __future__ import annotations

from pathlib import Path

from robopolicy.deploy.loop import ControlLoop, DeployReport, WatchdogConfig
from robopolicy.deploy.runtime import InferenceRuntime
from robopolicy.deploy.safety import SafetyConfig, SafetyFilter
from robopolicy.errors import RobopolicyError


def make_robot(spec: str, policy, seed: int = 0, robot_config: dict | None = None, faults=None, render: bool = False):
    """"sim:<registered env>" or "lerobot:<robot type>" -> a Robot."""
    kind, _, name = spec.partition(":")
    if kind == "sim" and name:
        from robopolicy.deploy.sim_robot import SimRobot

        cameras = [k for k in policy.observation_keys if k.startswith("observation.images.")]
        env_kwargs = dict(robot_config or {})
        if cameras:
            env_kwargs.setdefault("images", True)
            env_kwargs.setdefault("image_size", policy.spec.shape(cameras[0])[0])
        return SimRobot(name, seed=seed, env_kwargs=env_kwargs, faults=faults, render=render)
    if kind == "lerobot" and name:
        from robopolicy.deploy.lerobot_robot import LeRobotRobot

        return LeRobotRobot.from_type(name, **(robot_config or {}))
    raise RobopolicyError(f"--robot must be sim:<env name> or lerobot:<robot type>, got {spec!r}")


def check_compatible(robot, policy) -> None:
    """Refuse to start when the robot cannot feed the policy or take its actions."""
    provided = robot.observation_features
    missing = [k for k in policy.observation_keys if k not in provided]
    if missing:
        raise RobopolicyError(f"robot {robot.name} does not provide {missing} that the policy reads;"
                              f" it provides {sorted(provided)}")
    for key in policy.observation_keys:
        want, have = list(policy.spec.shape(key)), list(provided[key]["shape"])
        if want != have:
            raise RobopolicyError(f"robot {robot.name} gives {key} with shape {have}, the policy expects {want}")
    robot_dim = robot.action_features["action"]["shape"][0]
    policy_dim = policy.spec.action_dim
    if robot_dim != policy_dim:
        raise RobopolicyError(f"the policy outputs {policy_dim} action values, robot {robot.name} takes {robot_dim}")


def deploy(policy, robot, hz: float = 20.0, duration_s: float | None = None, max_steps: int | None = None,
           strategy: str = "async", n_action_steps: int | None = None, inference_steps: int | None = None,
           safety: SafetyConfig | None = None, watchdog: WatchdogConfig | None = None,
           record: str | Path | None = None, seed: int = 0, stop_when_done: bool = True,
           latency_margin_steps: int = 1, record_segment_s: float | None = 10.0) -> DeployReport:
    """Run `policy` on `robot` at `hz` until a stop condition; see ControlLoop for the tick.

    `record_segment_s`: with `record`, the run is saved as consecutive episodes of at most this many
    seconds, each durable once saved (DeployRecorder); None keeps the run one episode.

    `latency_margin_steps`: extra ticks of queued actions the async strategies keep beyond the
    measured inference latency; raise it on a machine whose inference time jitters.
    """
    if not robot.is_connected:
        robot.connect()
    check_compatible(robot, policy)
    action_dim = robot.action_features["action"]["shape"][0]
    action_stats = (policy.stats or {}).get("action") if policy.stats else None
    guard = SafetyFilter.from_config(safety or SafetyConfig(), action_stats, action_dim)
    watchdog = watchdog or WatchdogConfig()
    runtime = InferenceRuntime(policy, strategy=strategy, n_action_steps=n_action_steps,
                               inference_steps=inference_steps, hz=hz, seed=seed,
                               latency_margin_steps=latency_margin_steps,
                               inference_budget_s=watchdog.max_inference_s)
    recorder = None
    if record is not None:
        from robopolicy.deploy.recorder import DeployRecorder

        task = robot.task or (policy.spec.tasks[0] if policy.spec.tasks else "deployment")
        recorder = DeployRecorder(record, robot, fps=int(round(hz)), task=task, segment_s=record_segment_s)
    loop = ControlLoop(robot, runtime, hz=hz, safety=guard, duration_s=duration_s, max_steps=max_steps,
                       watchdog=watchdog, recorder=recorder, stop_when_done=stop_when_done)
    return loop.run()

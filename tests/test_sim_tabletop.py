"""The MuJoCo tabletop env: observations match `features`, cameras look right, seeds reproduce
episodes, actions are validated, the success checks follow the instruction, and the scripted expert
solves both tasks."""

import mujoco
import numpy as np
import pytest

from robopolicy.errors import EnvError
from robopolicy.sim.registry import env_names, make_env, make_expert
from robopolicy.sim.tabletop import COLORS, TabletopEnv
from robopolicy.sim.tabletop_expert import TabletopExpert

OPEN = [0.0, 0.0, 0.0, -1.0]


@pytest.fixture(scope="module")
def image_env():
    env = TabletopEnv("mixed", images=True, image_size=84, render_size=128)
    yield env
    env.close()


@pytest.fixture(scope="module")
def pick_env():
    env = TabletopEnv("pick", images=False)
    yield env
    env.close()


@pytest.fixture(scope="module")
def push_env():
    env = TabletopEnv("push", images=False)
    yield env
    env.close()


def place(env, name: str, xy, z: float = 0.02) -> None:
    """Teleport a cube upright to xy, by default resting on the table, or the bowl to xy."""
    if name == "bowl":
        env.data.mocap_pos[env.model.body("bowl").mocapid[0]] = [*xy, 0.0]
    else:
        env.data.joint(name).qpos = [*xy, z, 1.0, 0.0, 0.0, 0.0]
        env.data.joint(name).qvel = 0.0
    mujoco.mj_forward(env.model, env.data)


def centroid(image: np.ndarray, color: str) -> np.ndarray:
    """(row, column) centre of the pixels clearly showing a cube of `color`."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    mask = {"red": (r > 120) & (g < 80) & (b < 80), "blue": (b > 120) & (r < 80) & (g < 130)}[color]
    assert mask.sum() >= 3, f"no {color} cube visible"
    return np.argwhere(mask).mean(axis=0)


def rollout(env, seed: int, instruction: str | None = None, actions=None):
    """Run the expert (or replay `actions`); return the actions taken and every step's info."""
    options = {"instruction": instruction} if instruction else None
    obs, _ = env.reset(seed=seed, options=options)
    expert = TabletopExpert(env)
    taken, infos = [], []
    for t in range(env.max_steps if actions is None else len(actions)):
        action = expert.act(obs) if actions is None else actions[t]
        obs, reward, terminated, truncated, info = env.step(action)
        taken.append(action)
        infos.append({**info, "reward": reward, "terminated": terminated})
        if terminated or truncated:
            break
    return taken, infos


# ---------------------------------------------------------------------------------- observations
def test_observations_match_features(image_env):
    obs, info = image_env.reset(seed=0)
    assert info == {"is_success": False}
    features = {k: v for k, v in image_env.features.items() if k != "action"}
    assert set(obs) == set(features) == {"observation.state", "observation.environment_state",
                                         "observation.images.front", "observation.images.wrist"}
    for key, spec in features.items():
        assert list(obs[key].shape) == spec["shape"], key
        assert obs[key].dtype == (np.uint8 if spec["dtype"] == "video" else np.dtype(spec["dtype"])), key
        if spec["names"] is not None and spec["dtype"] != "video":
            assert len(spec["names"]) == spec["shape"][0]
    assert image_env.features["action"] == {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "gripper"]}
    assert image_env.observation_space.contains(obs)
    step_obs = image_env.step(OPEN)[0]
    assert image_env.observation_space.contains(step_obs)


def test_low_dim_env_has_no_image_features(pick_env):
    obs, _ = pick_env.reset(seed=0)
    assert set(obs) == {"observation.state", "observation.environment_state"}
    assert set(pick_env.features) == {"observation.state", "observation.environment_state", "action"}
    state = obs["observation.state"]
    assert np.allclose(state[:3], [0.0, 0.0, 0.2], atol=2e-3)  # gripper at home, fully open
    assert state[3] == pytest.approx(0.08, abs=2e-3)
    cubes = obs["observation.environment_state"].reshape(4, 3)[:3]
    assert np.allclose(cubes[:, 2], 0.02, atol=2e-3)  # the cubes rest on the table


def test_cameras_show_distinct_non_blank_images(image_env):
    obs, _ = image_env.reset(seed=1)
    front, wrist = obs["observation.images.front"], obs["observation.images.wrist"]
    for image in (front, wrist):
        assert image.std() > 10  # not a blank or single-colour frame
    assert np.abs(front.astype(int) - wrist.astype(int)).mean() > 10
    frame = image_env.render()
    assert frame.shape == (128, 128, 3) and frame.dtype == np.uint8 and frame.std() > 10


def test_images_are_upright_and_left_is_plus_y(image_env):
    """Far objects appear higher and +y objects further left, in both cameras."""
    image_env.reset(seed=0)
    place(image_env, "bowl", [-0.25, 0.35])
    place(image_env, "cube_green", [-0.25, -0.35])
    place(image_env, "cube_red", [0.15, 0.07])  # far and to the left
    place(image_env, "cube_blue", [0.0, -0.07])  # nearer and to the right
    obs = image_env.step(OPEN)[0]
    for key in ("observation.images.front", "observation.images.wrist"):
        red, blue = centroid(obs[key], "red"), centroid(obs[key], "blue")
        assert red[0] < blue[0], f"{key}: the far cube is not higher in the image"
        assert red[1] < blue[1], f"{key}: the +y cube is not to the left"
    front = obs["observation.images.front"].astype(int)
    table = (front[..., 0] > 150) & (front[..., 0] - front[..., 2] > 40)  # the light-brown table top
    assert table[-30:].mean() > 0.5 > table[:10].mean()


# ---------------------------------------------------------------------------------- seeding
def test_reset_is_reproducible_across_instances(image_env):
    other = TabletopEnv("mixed", images=True, image_size=84)
    try:
        for seed in (3, 4):
            a, _ = image_env.reset(seed=seed)
            b, _ = other.reset(seed=seed)
            assert image_env.task == other.task
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
            for _ in range(3):
                a, b = image_env.step([0.5, -0.5, -1.0, 1.0])[0], other.step([0.5, -0.5, -1.0, 1.0])[0]
            for key in a:
                np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    finally:
        other.close()


def test_seeds_vary_layouts_and_instructions():
    env = TabletopEnv("mixed", images=False)
    layouts, tasks = [], set()
    for seed in range(12):
        obs, _ = env.reset(seed=seed)
        layouts.append(obs["observation.environment_state"])
        tasks.add(env.task)
        objects = obs["observation.environment_state"].reshape(4, 3)
        distances = [np.linalg.norm(objects[i, :2] - objects[j, :2]) for i in range(4) for j in range(i)]
        assert min(distances) > 0.06  # nothing overlaps
    env.close()
    assert len({tuple(np.round(x, 3)) for x in layouts}) == 12
    assert len(tasks) >= 5
    assert any(t.startswith("put") for t in tasks) and any(t.startswith("push") for t in tasks)
    assert tasks <= set(env.tasks)


def test_task_lists():
    envs = {kind: TabletopEnv(kind, images=False) for kind in ("pick", "push", "mixed")}
    try:
        assert envs["pick"].tasks == [f"put the {c} cube in the bowl" for c in COLORS]
        assert sorted(envs["push"].tasks) == sorted(f"push the {c} cube to the {d}" for c in COLORS
                                                    for d in ("left", "right"))
        assert sorted(envs["mixed"].tasks) == sorted(envs["pick"].tasks + envs["push"].tasks)
        assert [envs[k].max_steps for k in ("pick", "push", "mixed")] == [150, 100, 150]
    finally:
        for env in envs.values():
            env.close()


def test_instruction_can_be_forced_without_changing_the_layout(pick_env):
    drawn_obs, _ = pick_env.reset(seed=5)
    other = next(t for t in pick_env.tasks if t != pick_env.task)
    forced_obs, _ = pick_env.reset(seed=5, options={"instruction": other})
    assert pick_env.task == other
    np.testing.assert_array_equal(drawn_obs["observation.environment_state"],
                                  forced_obs["observation.environment_state"])
    with pytest.raises(EnvError, match="not one of"):
        pick_env.reset(seed=5, options={"instruction": "push the red cube to the left"})
    with pytest.raises(EnvError, match="unknown tabletop reset option"):
        pick_env.reset(seed=5, options={"instuction": other})


# ---------------------------------------------------------------------------------- actions
@pytest.mark.parametrize("action", [[np.nan, 0, 0, 0], [0, 0, np.inf, 0], [0, 0, 0], [0, 0, 0, 0, 0], "left"])
def test_bad_actions_raise(pick_env, action):
    pick_env.reset(seed=0)
    with pytest.raises(EnvError):
        pick_env.step(action)


def test_actions_move_the_gripper_two_cm_per_unit_and_are_clipped(pick_env):
    pick_env.reset(seed=0)
    place(pick_env, "bowl", [-0.25, 0.35])  # clear the path
    for _ in range(5):
        obs = pick_env.step([1.0, 0.0, 0.0, -1.0])[0]
    for _ in range(3):
        obs = pick_env.step(OPEN)[0]
    assert obs["observation.state"][0] == pytest.approx(0.10, abs=3e-3)
    pick_env.reset(seed=0)
    place(pick_env, "bowl", [-0.25, 0.35])
    for _ in range(5):
        clipped = pick_env.step([5.0, 0.0, 0.0, -1.0])[0]
    for _ in range(3):
        clipped = pick_env.step(OPEN)[0]
    np.testing.assert_allclose(clipped["observation.state"], obs["observation.state"], atol=1e-6)
    for _ in range(15):  # the workspace's floor keeps the fingers off the table
        obs = pick_env.step([0.0, 0.0, -1.0, 1.0])[0]
    assert 0.015 < obs["observation.state"][2] < 0.025
    assert obs["observation.state"][3] < 0.005  # +1 closes the fingers


def test_truncation_and_reward():
    env = TabletopEnv("push", images=False, max_steps=3)
    env.reset(seed=0)
    results = [env.step(OPEN) for _ in range(3)]
    env.close()
    assert [r[3] for r in results] == [False, False, True]
    assert all(r[1] == 0.0 and r[2] is False and r[4]["is_success"] is False for r in results)


@pytest.mark.parametrize("task", ["pick", "push"])
def test_shaped_reward_climbs_through_the_stages_of_an_expert_episode(task):
    """The dense hint RL fine-tuning relies on: it rises as the expert makes progress, stays below the
    success reward until success, and is off unless asked for."""
    shaped = TabletopEnv(task, images=False, reward_shaping=True)
    plain = TabletopEnv(task, images=False)
    actions, infos = rollout(shaped, seed=3)
    _, plain_infos = rollout(plain, seed=3, actions=actions)
    rewards = np.array([i["reward"] for i in infos])
    assert infos[-1]["is_success"] and rewards[-1] == 1.0
    before = rewards[:-1]
    assert before.max() <= 0.7 and before.min() >= 0.0
    assert before[-5:].mean() > 0.3 > before[:5].mean()  # near done at the end, far from it at the start
    if task == "pick":  # the grasp stage is reached before the cube is carried over the bowl
        assert (before >= 0.35).any() and (before > 0.5).any()
    assert [i["reward"] for i in plain_infos] == [0.0] * (len(plain_infos) - 1) + [1.0]


# ---------------------------------------------------------------------------------- success checks
def test_cube_in_bowl_counts_only_once_released(pick_env):
    pick_env.reset(seed=2, options={"instruction": "put the red cube in the bowl"})
    bowl = pick_env.bowl_position()
    place(pick_env, "cube_red", bowl[:2], z=0.008 + 0.02)  # on the bowl's 8 mm base
    cube = pick_env.cube_position("red")
    assert pick_env.success()
    # the gripper closed around the cube in the bowl: held, not placed
    pick_env.data.qpos[pick_env._gantry_qpos] = cube
    pick_env.data.qpos[pick_env._finger_qpos] = 0.02
    pick_env.target = cube.copy()
    mujoco.mj_forward(pick_env.model, pick_env.data)
    assert not pick_env.success()
    assert not pick_env.step([0, 0, 0, 1.0])[4]["is_success"]
    infos = [pick_env.step(OPEN)[4] for _ in range(4)]
    assert infos[-1]["is_success"]
    assert not pick_env.success("put the green cube in the bowl")


def test_cube_outside_or_on_the_bowl_is_not_success(pick_env):
    pick_env.reset(seed=2, options={"instruction": "put the red cube in the bowl"})
    bowl = pick_env.bowl_position()
    place(pick_env, "cube_red", bowl[:2] + [0.1, 0.0])  # next to the bowl
    assert not pick_env.success()
    pick_env.data.joint("cube_red").qpos[:3] = [*bowl[:2], 0.08]  # above the rim
    mujoco.mj_forward(pick_env.model, pick_env.data)
    assert not pick_env.success()


@pytest.mark.slow
def test_wrong_cube_in_the_bowl_is_not_success(pick_env):
    """Replaying a demonstration for the green cube under the red instruction never succeeds."""
    green_actions, green_infos = rollout(pick_env, seed=7, instruction="put the green cube in the bowl")
    assert green_infos[-1]["is_success"]
    assert not pick_env.success("put the red cube in the bowl")
    _, replay_infos = rollout(pick_env, seed=7, instruction="put the red cube in the bowl", actions=green_actions)
    assert not any(info["is_success"] for info in replay_infos)
    assert pick_env.success("put the green cube in the bowl")  # the replay did put green in the bowl


@pytest.mark.slow
def test_wrong_push_direction_or_disturbing_other_cubes_is_not_success(push_env):
    left_actions, left_infos = rollout(push_env, seed=3, instruction="push the red cube to the left")
    assert left_infos[-1]["is_success"]
    _, replay_infos = rollout(push_env, seed=3, instruction="push the red cube to the right", actions=left_actions)
    assert not any(info["is_success"] for info in replay_infos)
    assert push_env.success("push the red cube to the left")
    green = push_env.cube_position("green")
    place(push_env, "cube_green", green[:2] + [0.04, 0.0])
    assert not push_env.success("push the red cube to the left")


# ---------------------------------------------------------------------------------- expert
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_expert_solves_pick(pick_env, seed):
    _, infos = rollout(pick_env, seed)
    assert infos[-1]["is_success"] and infos[-1]["terminated"] and infos[-1]["reward"] == 1.0, pick_env.task
    cube = pick_env.cube_position(next(c for c in COLORS if c in pick_env.task))
    assert np.linalg.norm(cube[:2] - pick_env.bowl_position()[:2]) < 0.065


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_expert_solves_push(push_env, seed):
    _, infos = rollout(push_env, seed)
    assert infos[-1]["is_success"] and infos[-1]["terminated"] and infos[-1]["reward"] == 1.0, push_env.task


@pytest.mark.slow
def test_push_left_moves_left_in_the_front_image(image_env):
    obs, _ = image_env.reset(seed=0, options={"instruction": "push the red cube to the left"})
    before, start_y = centroid(image_env.render(), "red"), image_env.cube_position("red")[1]
    expert = TabletopExpert(image_env)
    for _ in range(image_env.max_steps):  # until the expert has lifted the gripper clear of the cube
        obs = image_env.step(expert.act(obs))[0]
        if expert.phase == "retreat" and obs["observation.state"][2] > 0.09:
            break
    assert image_env.success()
    assert image_env.cube_position("red")[1] > start_y + 0.08
    assert centroid(image_env.render(), "red")[1] < before[1] - 5


# ---------------------------------------------------------------------------------- registry
def test_registry_makes_tabletop_envs_and_experts():
    assert {"tabletop/pick", "tabletop/push", "tabletop/mixed"} <= set(env_names())
    env = make_env("tabletop/pick", images=False, max_steps=20)
    try:
        assert isinstance(env, TabletopEnv) and env.max_steps == 20 and env.tasks[0].startswith("put")
        expert = make_expert("tabletop/pick", env)
        obs, _ = env.reset(seed=0)
        expert.reset()
        action = expert.act(obs)
        assert action.shape == (4,) and action.dtype == np.float32 and expert.phase == "above"
        env.step(action)
    finally:
        env.close()
    with pytest.raises(EnvError, match="unknown tabletop task"):
        TabletopEnv("stack")


@pytest.mark.slow
def test_collect_every_instruction_repeats_each_layout_with_each_instruction(tmp_path):
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.errors import RobopolicyError
    from robopolicy.sim.collect import collect

    result = collect("tabletop/pick", 6, tmp_path / "every", workers=2, every_instruction=True, progress=False)
    assert result.kept == 6
    ds = LeRobotDataset(tmp_path / "every")
    starts = np.flatnonzero(np.r_[True, np.diff(ds.episode_of_row) != 0])
    tasks = ds.task_strings(starts)
    objects = ds.columns["observation.environment_state"][starts]
    # two layouts (seeds 0 and 1), each recorded once per instruction, in the env's order
    assert tasks[:3] == tasks[3:] == TabletopEnv(task="pick").tasks
    assert np.allclose(objects[0], objects[1]) and np.allclose(objects[0], objects[2])
    assert np.allclose(objects[3], objects[5]) and not np.allclose(objects[0], objects[3])
    # the expert went for a different cube in each of a layout's three episodes
    assert len({tuple(np.round(ds.columns["observation.state"][s + 15, :2], 3)) for s in starts[:3]}) == 3
    with pytest.raises(RobopolicyError, match="several instructions"):
        collect("robosuite/Lift", 3, tmp_path / "lift", every_instruction=True, progress=False)


def test_tabletop_envs_work_where_robosuite_is_not_installed():
    """Listing envs imports no simulator, and the MuJoCo-native tasks need only MuJoCo."""
    code = """
import sys
sys.modules["robosuite"] = None  # as if not installed: importing it raises ImportError
from robopolicy.sim.registry import env_names, make_env, make_expert
from robopolicy.errors import EnvError
assert "robosuite/Lift" in env_names() and "robosuite" not in [m.split(".")[0] for m in sys.modules if sys.modules[m]]
env = make_env("tabletop/pick", images=False)
obs, _ = env.reset(seed=0)
make_expert("tabletop/pick", env).act(obs)
try:
    make_env("robosuite/Lift")
except EnvError as err:
    print("refused:", err)
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: robosuite/Lift needs robosuite, which is not installed" in out.stdout

"""The robosuite envs: observations match `features` (low-dim and image mode, images upright), seeds
reproduce episodes, bad actions are rejected, the registry finds the envs, and every scripted expert
solves its task. The expert tests use a few seeds, including ones that used to fail; the success
rate over many seeds is measured outside the test suite."""

import numpy as np
import pytest

pytest.importorskip("robosuite")

from robopolicy.errors import EnvError  # noqa: E402
from robopolicy.sim.registry import make_env, make_expert  # noqa: E402
from robopolicy.sim.robosuite_env import RobosuiteEnv  # noqa: E402
from robopolicy.sim.robosuite_experts import EXPERTS, LiftExpert  # noqa: E402

pytestmark = pytest.mark.sim

DTYPES = {"float32": np.float32, "video": np.uint8, "image": np.uint8}


@pytest.fixture(scope="module")
def lift_env():
    env = RobosuiteEnv("Lift")
    yield env
    env.close()


@pytest.fixture(scope="module")
def image_env():
    env = RobosuiteEnv("Lift", images=True, image_size=64)
    yield env
    env.close()


def check_matches_features(env, obs: dict) -> None:
    assert set(obs) == set(env.features) - {"action"}
    for key, value in obs.items():
        spec = env.features[key]
        assert value.shape == tuple(spec["shape"]), key
        assert value.dtype == DTYPES[spec["dtype"]], key
        if spec["names"] is not None and spec["dtype"] == "float32":
            assert len(spec["names"]) == value.shape[0], key
    assert env.observation_space.contains(obs)
    assert env.features["action"]["shape"] == list(env.action_space.shape) == [7]


def red_rows(image: np.ndarray) -> float:
    """Mean row of the pixels showing the red cube."""
    r, g, b = (image[..., i].astype(int) for i in range(3))
    mask = (r > 100) & (r > 2 * g) & (r > 2 * b)
    assert mask.sum() >= 3, "red cube not visible"
    return float(np.argwhere(mask)[:, 0].mean())


# ---------------------------------------------------------------------------- observations
def test_low_dim_observation_matches_features(lift_env):
    obs, info = lift_env.reset(seed=0)
    assert info == {"is_success": False}
    check_matches_features(lift_env, obs)
    assert not any(key.startswith("observation.images") for key in lift_env.features)
    obs, reward, terminated, truncated, info = lift_env.step(np.zeros(7, dtype=np.float32))
    check_matches_features(lift_env, obs)
    assert terminated == info["is_success"] is False and not truncated


def test_state_is_eef_pose_xyzw_and_gripper_joints(lift_env):
    obs, _ = lift_env.reset(seed=0)
    obs, *_ = lift_env.step(np.array([0.3, -0.2, 0.1, 0.2, 0.0, 0.3, 1.0], dtype=np.float32))
    data, robot = lift_env.raw.sim.data, lift_env.raw.robots[0]
    state = obs["observation.state"]
    np.testing.assert_allclose(state[:3], data.site_xpos[robot.eef_site_id["right"]], atol=1e-5)
    quat_wxyz = data.get_body_xquat(robot.robot_model.eef_name["right"])  # the hand, as robosuite reports it
    xyzw = state[3:7] * np.sign(state[6] * quat_wxyz[0])  # q and -q are the same rotation
    np.testing.assert_allclose(xyzw, [*quat_wxyz[1:], quat_wxyz[0]], atol=1e-4)
    gripper = [data.get_joint_qpos(name) for name in robot.gripper_joints["right"]]
    np.testing.assert_allclose(state[7:], gripper, atol=1e-5)


def test_image_observation_matches_features_and_is_upright(image_env):
    obs, _ = image_env.reset(seed=0)
    check_matches_features(image_env, obs)
    agentview, wrist = obs["observation.images.agentview"], obs["observation.images.wrist"]
    assert agentview.shape == wrist.shape == (64, 64, 3) and agentview.dtype == np.uint8
    # MuJoCo renders bottom row first; the observation is that render flipped exactly once
    rendered = image_env.raw.sim.render(camera_name="agentview", width=64, height=64)
    np.testing.assert_array_equal(agentview, rendered[::-1])
    assert not np.array_equal(agentview, rendered)
    # upright front view: the white table fills the bottom, the robot and the room the top;
    # upright wrist view: the fingers come into the picture from the bottom
    assert agentview[-16:].mean() > agentview[:16].mean() + 50
    assert wrist[-8:].mean() < wrist[:16].mean() - 50


@pytest.mark.slow
def test_lifting_the_cube_moves_it_up_in_the_image(image_env):
    obs, _ = image_env.reset(seed=0)
    row_before = red_rows(obs["observation.images.agentview"])
    cube = image_env.raw.sim.data.body_xpos[image_env.raw.cube_body_id]  # a live view of the simulation
    z_before = float(cube[2])
    expert = LiftExpert(image_env)
    for _ in range(60):
        obs, *_ = image_env.step(expert.act(obs))
        if cube[2] > z_before + 0.08:
            break
    assert cube[2] > z_before + 0.08
    assert red_rows(obs["observation.images.agentview"]) < row_before - 4


def test_render_is_the_upright_front_view(image_env):
    obs, _ = image_env.reset(seed=0)
    frame = image_env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, obs["observation.images.agentview"])


# ---------------------------------------------------------------------------- seeding
def test_same_seed_reproduces_the_episode(lift_env):
    actions = np.random.default_rng(0).uniform(-1, 1, size=(10, 7)).astype(np.float32)

    def episode(seed):
        obs, _ = lift_env.reset(seed=seed)
        trajectory = [obs]
        for action in actions:
            trajectory.append(lift_env.step(action)[0])
        return trajectory

    first, second = episode(3), episode(3)
    for a, b in zip(first, second):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_different_seeds_place_the_cube_differently(lift_env):
    positions = []
    for seed in (0, 1, 2):
        lift_env.reset(seed=seed)
        positions.append(np.array(lift_env.raw.sim.data.body_xpos[lift_env.raw.cube_body_id]))
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.linalg.norm(positions[i][:2] - positions[j][:2]) > 1e-3


def test_same_seed_gives_identical_images(image_env):
    first, _ = image_env.reset(seed=4)
    image_env.step(np.ones(7, dtype=np.float32))
    second, _ = image_env.reset(seed=4)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


# ---------------------------------------------------------------------------- bad actions
@pytest.mark.parametrize("action", [
    [np.nan, 0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0, np.inf],
    np.zeros(6),
    np.zeros(8),
    np.zeros((2, 7)),
], ids=["nan", "inf", "six-values", "eight-values", "two-actions"])
def test_bad_action_raises_env_error_and_does_not_step(lift_env, action):
    lift_env.reset(seed=0)
    qpos = lift_env.raw.sim.data.qpos.copy()
    with pytest.raises(EnvError):
        lift_env.step(action)
    assert lift_env.steps == 0
    np.testing.assert_array_equal(lift_env.raw.sim.data.qpos, qpos)


def test_unknown_task_or_camera_raises_env_error():
    with pytest.raises(EnvError, match="Lfit"):
        RobosuiteEnv("Lfit")
    with pytest.raises(EnvError, match="frontview"):
        RobosuiteEnv("Lift", images=True, cameras=("frontview",))


# ---------------------------------------------------------------------------- registry
def test_registry_makes_env_and_expert():
    env = make_env("robosuite/Lift", max_steps=50)
    try:
        assert isinstance(env, RobosuiteEnv) and env.max_steps == 50
        assert env.task == "lift the red cube"
        expert = make_expert("robosuite/Lift", env)
        assert isinstance(expert, LiftExpert) and expert.phase == "above"
        obs, _ = env.reset(seed=0)
        action = expert.act(obs)
        assert action.dtype == np.float32 and action.shape == (7,)
    finally:
        env.close()


def test_registry_unknown_name_suggests_the_closest():
    with pytest.raises(EnvError, match="did you mean 'robosuite/Lift'"):
        make_env("robosuite/Lfit")
    with pytest.raises(EnvError, match="did you mean 'robosuite/Stack'"):
        make_expert("robosuite/Stak", None)


# ---------------------------------------------------------------------------- experts
def run_expert(task: str, seeds) -> None:
    """Roll the task's expert (one instance, reset between episodes) out on each seed; every
    episode must succeed within the env's step limit with valid actions."""
    env = RobosuiteEnv(task)
    expert = EXPERTS[task](env)
    failures = []
    try:
        for seed in seeds:
            obs, _ = env.reset(seed=seed)
            expert.reset()
            assert expert.phase == "above"
            info = {"is_success": False}
            for _ in range(env.max_steps):
                action = expert.act(obs)
                assert action.dtype == np.float32 and action.shape == (7,)
                assert np.all(np.abs(action) <= 1.0)
                if task != "NutAssemblySquare":  # only Square turns the gripper
                    assert np.all(action[3:6] == 0.0)
                obs, _, terminated, truncated, info = env.step(action)
                assert terminated == info["is_success"]
                if terminated or truncated:
                    break
            if not info["is_success"]:
                failures.append(f"seed {seed} ended in phase {expert.phase!r}")
    finally:
        env.close()
    assert not failures, f"{task} expert failed: {failures}"


def test_lift_expert_succeeds():
    run_expert("Lift", [0, 1, 2])


def test_stack_expert_succeeds():
    run_expert("Stack", [0, 1, 2])


@pytest.mark.slow
def test_pick_place_can_expert_succeeds():
    run_expert("PickPlaceCan", [2, 3, 100000])  # 2 and 3: the hand used to land on the can's lid


@pytest.mark.slow
def test_nut_assembly_square_expert_succeeds():
    # 19 needs a half turn of the nut, 100011 a grasp near the wrist's joint limit
    run_expert("NutAssemblySquare", [0, 19, 100011])


@pytest.mark.slow
def test_render_shortcuts_change_no_pixel_of_an_expert_episode(monkeypatch):
    """While its view stays on the table the wrist camera renders without MuJoCo's reflection pass
    and without the geoms it cannot show; the frames must be exactly those of robosuite rendering
    every camera with the pass and every geom."""
    from robopolicy.sim.robosuite_render import _table_top, _view_inside_table

    def episode(skip, cull):
        monkeypatch.setattr(RobosuiteEnv, "skip_hidden_reflections", skip)
        monkeypatch.setattr(RobosuiteEnv, "cull_outside_view", cull)
        env = make_env("robosuite/Lift", images=True, image_size=84)
        expert = make_expert("robosuite/Lift", env)
        obs, _ = env.reset(seed=7)
        expert.reset()
        ctx = env.raw.sim._render_context_offscreen
        assert getattr(ctx, "_robopolicy_wrapped", False) == skip
        frames, skipped, drawn = [obs], 0, []
        table = _table_top(env.raw.sim)
        wrist, front = (env.raw.sim.model.camera_name2id(c) for c in ("robot0_eye_in_hand", "agentview"))
        for _ in range(40):
            if _view_inside_table(env.raw.sim, wrist, table):
                skipped += 1
                ctx.render(84, 84, camera_id=front)
                everything = ctx.scn.ngeom
                ctx.render(84, 84, camera_id=wrist)
                drawn.append(ctx.scn.ngeom / everything)
            assert not _view_inside_table(env.raw.sim, front, table)  # the front view shows the floor
            obs, *_ = env.step(expert.act(obs))
            frames.append(obs)
        env.close()
        return frames, skipped, drawn

    as_robosuite, _, _ = episode(False, False)
    reflections_skipped, skipped, drawn_all = episode(True, False)
    culled, _, drawn_culled = episode(True, True)
    assert skipped >= 30  # the wrist camera's view was on the table for most of the episode
    assert min(drawn_all) == 1.0 and max(drawn_culled) < 0.5  # most geoms were left out of those renders
    for frames in (reflections_skipped, culled):
        for a, b in zip(as_robosuite, frames):
            for key in ("observation.images.agentview", "observation.images.wrist"):
                np.testing.assert_array_equal(a[key], b[key])

"""Training windows: right shapes, padding at episode edges, never a frame from another episode."""

import numpy as np
import pytest
import torch

from conftest import LIFT_VIDEO
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.data.windows import BatchLoader, WindowedDataset, WindowSpec, deltas_from_timestamps
from robopolicy.errors import DatasetError

CAMS = ["observation.images.agentview", "observation.images.wrist"]


@pytest.fixture(scope="module")
def windows():
    ds = LeRobotDataset(LIFT_VIDEO)
    spec = WindowSpec(n_obs_steps=2, horizon=16, action_offset=-1)
    return WindowedDataset(ds, spec.deltas(["observation.state", "episode_index", *CAMS]))


def test_batch_shapes_follow_the_contract(windows):
    batch = windows.get_batch([0, 100, 500])
    assert batch["observation.state"].shape == (3, 2, 9)
    assert batch["observation.images.wrist"].shape == (3, 2, 3, 84, 84)
    assert batch["observation.images.wrist"].dtype == torch.float32
    assert batch["action"].shape == (3, 16, 7) and batch["action_is_pad"].shape == (3, 16)
    assert batch["task"] == ["lift the red cube"] * 3


def test_windows_never_cross_episodes_and_pad_at_edges(windows):
    ds = windows.dataset
    first, last = int(ds.episodes.from_index[3]), int(ds.episodes.to_index[3]) - 1
    batch = windows.get_batch([first, last])
    # observation at t-1 for the first frame is padded with the first frame itself
    assert batch["observation.state_is_pad"][0].tolist() == [True, False]
    assert torch.equal(batch["observation.state"][0, 0], batch["observation.state"][0, 1])
    # actions: t-1 padded at the start; everything after the last frame padded at the end
    assert batch["action_is_pad"][0].tolist() == [True] + [False] * 15
    assert batch["action_is_pad"][1].tolist() == [False, False] + [True] * 14
    assert torch.equal(batch["action"][1, 1], torch.from_numpy(ds.columns["action"][last]))
    assert (batch["episode_index"] == 3).all()
    every = windows.get_batch(np.arange(len(ds)))
    ep = torch.from_numpy(ds.episode_of_row).view(-1, 1)
    assert (every["episode_index"].view(len(ds), -1) == ep).all()
    # unpadded action steps are exactly the dataset's actions at t-1 .. t+14
    row = first + 10
    assert torch.equal(windows.get_batch([row])["action"][0], torch.from_numpy(ds.columns["action"][row - 1:row + 15]))


def test_loader_is_deterministic_and_ranks_disjoint(windows):
    a = BatchLoader(windows, batch_size=8, seed=3, prefetch=2)
    b = BatchLoader(windows, batch_size=8, seed=3, prefetch=0)
    assert [x["index"].tolist() for x in a.iterate(5, 3)] == [b.batch(s)["index"].tolist() for s in (5, 6, 7)]
    r0 = BatchLoader(windows, batch_size=8, seed=3, rank=0, world_size=2)
    r1 = BatchLoader(windows, batch_size=8, seed=3, rank=1, world_size=2)
    assert not set(r0.rows_for_step(4).tolist()) & set(r1.rows_for_step(4).tolist())
    epoch = [r for s in range(a.batches_per_epoch) for r in a.rows_for_step(s).tolist()]
    assert len(set(epoch)) == len(epoch)  # an epoch never repeats a sample


def test_episode_subset_and_errors(windows):
    ds = windows.dataset
    sub = WindowedDataset(ds, {"action": list(range(4))}, episodes=[2, 5])
    assert len(sub) == ds.episodes.length[2] + ds.episodes.length[5]
    with pytest.raises(DatasetError, match="episode 40 does not exist"):
        WindowedDataset(ds, {"action": [0]}, episodes=[40])
    with pytest.raises(DatasetError, match="'observation.images.top' is not in dataset"):
        WindowedDataset(ds, {"observation.images.top": [0]})
    assert deltas_from_timestamps({"action": [0.0, 0.05, 0.1]}, fps=20) == {"action": [0, 1, 2]}
    with pytest.raises(DatasetError, match="not multiples of 1/fps"):
        deltas_from_timestamps({"action": [0.0, 0.03]}, fps=20)

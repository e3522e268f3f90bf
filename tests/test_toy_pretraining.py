"""The micro CLIP's pretraining script, on a few steps: deterministic, locks the text tower
while it should, and writes a folder open_clip loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fewshot.toyworld import train as pretrain


@pytest.fixture
def short_run(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(pretrain, "TEXT_WARMUP_STEPS", 2)
    config = pretrain.load_config()

    def run(steps: int = 4, locked: float = 0.5):
        monkeypatch.setattr(pretrain, "LOCKED_TEXT", locked)
        return pretrain.train(steps, seed=3, batch_size=16, lr=1e-3, config=config, workers=0, log_every=100)

    return config, run


def test_pretraining_is_deterministic(short_run) -> None:
    _, run = short_run
    first, second = run().state_dict(), run().state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    untrained = pretrain.build_model(pretrain.load_config(), seed=3).state_dict()
    assert not torch.equal(first["visual.conv1.weight"], untrained["visual.conv1.weight"])


def test_text_tower_is_locked_only_while_it_should_be(short_run) -> None:
    _, run = short_run
    # locked for every image-text step: the text tower ends where the text warm-up left it
    locked = run(steps=3, locked=1.0).state_dict()
    free = run(steps=3, locked=0.0).state_dict()
    key = "transformer.resblocks.0.attn.in_proj_weight"
    assert not torch.equal(locked[key], free[key])
    warm_only = pretrain.build_model(pretrain.load_config(), seed=3)
    tokenizer = pretrain.get_tokenizer(32)
    embed = pretrain.CompactEmbedding(warm_only.token_embedding, pretrain.caption_token_ids(tokenizer))
    warm_only.train()
    pretrain.warm_up_text(warm_only, embed, 3, 2, 1e-3, tokenizer)
    assert torch.equal(warm_only.state_dict()[key], locked[key])


def test_saved_checkpoint_loads_in_open_clip(short_run, tmp_path: Path) -> None:
    import open_clip

    config, run = short_run
    model = run(steps=2)
    weights = pretrain.save(model, config, tmp_path / "toy")
    loaded = open_clip.create_model(f"local-dir:{tmp_path / 'toy'}")
    assert weights.stat().st_size < 20 * 2**20
    expected = model.state_dict()["visual.conv1.weight"].half().float()
    assert torch.equal(loaded.state_dict()["visual.conv1.weight"], expected)

"""Core types: backbone id parsing, config resolution, run specs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fewshot.types import (
    AdapterConfig,
    BackboneSpec,
    ConfigError,
    Item,
    RunResult,
    RunSpec,
    Split,
    safe_name,
    stable_hash,
)


@pytest.mark.parametrize(
    ("text", "source", "arch", "pretrained"),
    [
        ("toy", "toy", "toy", ""),
        ("ViT-B-16:openai", "open_clip", "ViT-B-16", "openai"),
        ("ViT-B-32:laion2b_s34b_b79k", "open_clip", "ViT-B-32", "laion2b_s34b_b79k"),
        ("hf-hub:timm/ViT-B-16-SigLIP", "hf-hub", "", "timm/ViT-B-16-SigLIP"),
        ("RN50:/models/rn50.pt", "local", "RN50", "/models/rn50.pt"),
        ("ViT-B-16:weights.safetensors", "local", "ViT-B-16", "weights.safetensors"),
    ],
)
def test_backbone_spec_parse_and_round_trip(text: str, source: str, arch: str, pretrained: str) -> None:
    spec = BackboneSpec.parse(text)
    assert (spec.source, spec.arch, spec.pretrained) == (source, arch, pretrained)
    assert BackboneSpec.parse(spec.id) == spec
    assert "/" not in spec.safe_name and ":" not in spec.safe_name


@pytest.mark.parametrize("text", ["ViT-B-16", "", ":openai", "hf-hub:", "hf-hub:noslash"])
def test_backbone_spec_rejects_bad_ids(text: str) -> None:
    with pytest.raises(ConfigError, match="backbone id"):
        BackboneSpec.parse(text)


def test_safe_name_and_hash() -> None:
    assert safe_name("coop[n_ctx=4]") == "coop_n_ctx=4"
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash([1, 2]) != stable_hash([2, 1])


def test_split_hash_depends_on_order_and_labels() -> None:
    a = Split("train", (Item("x.jpg", 0), Item("y.jpg", 1)))
    b = Split("train", (Item("y.jpg", 1), Item("x.jpg", 0)))
    c = Split("train", (Item("x.jpg", 0), Item("y.jpg", 0)))
    assert len({a.hash, b.hash, c.hash}) == 3


@dataclass(frozen=True)
class _Config(AdapterConfig):
    epochs: int = 10
    lr: float = 0.1
    init: str = ""
    csc: bool = False
    sizes: tuple[int, ...] = (1, 2)

    @classmethod
    def preset(cls, protocol: str, shots: int) -> dict:
        return {"epochs": 50 if shots == 1 else 200}


def test_config_resolution_order_and_coercion() -> None:
    assert _Config.build("fewshot", 1).epochs == 50
    cfg = _Config.build("fewshot", 16, {"epochs": "3", "lr": "1e-3", "csc": "true", "sizes": "4,8"})
    assert (cfg.epochs, cfg.lr, cfg.csc, cfg.sizes) == (3, 1e-3, True, (4, 8))
    assert _Config.build("fewshot", 16, {"init": "a photo of a"}).init == "a photo of a"


def test_config_unknown_key_and_bad_value() -> None:
    with pytest.raises(ConfigError, match="Did you mean epochs"):
        _Config.build(overrides={"epoch": "3"})
    with pytest.raises(ConfigError, match="Bad value 'x' for epochs"):
        _Config.build(overrides={"epochs": "x"})
    with pytest.raises(ConfigError, match="csc"):
        _Config.build(overrides={"csc": "maybe"})


def test_run_spec_validation_variant_and_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--shots"):
        RunSpec("coop", "toy-shapes", shots=-1)
    assert RunSpec("zeroshot", "toy-shapes", shots=0).shots == 0  # methods that read no support
    with pytest.raises(ConfigError, match="Did you mean base2novel"):
        RunSpec("coop", "toy-shapes", protocol="base2nove")
    plain = RunSpec("coop", "toy-shapes", shots=16, seed=2)
    tuned = RunSpec("coop", "toy-shapes", shots=16, seed=2, overrides=(("n_ctx", "4"),))
    online = RunSpec("coop", "toy-shapes", shots=16, seed=2, aug_views=0)
    assert plain.variant == "coop" and tuned.variant == "coop[n_ctx=4]"
    assert online.variant == "coop[aug_views=online]"
    assert plain.record_path(tmp_path) == tmp_path / "toy-shapes" / "toy" / "coop" / "fewshot-k16-s2.json"
    assert len({plain.record_path(tmp_path), tuned.record_path(tmp_path), online.record_path(tmp_path)}) == 3
    # the device does not change what a run computes, so it is not part of its identity
    assert RunSpec("coop", "toy-shapes", device="cuda").hash == RunSpec("coop", "toy-shapes").hash
    assert plain.hash != tuned.hash


def test_transfer_specs_share_one_fit() -> None:
    source = RunSpec("coop", "toy-objects", protocol="cross-dataset")
    target = RunSpec("coop", "toy-objects", protocol="cross-dataset", target="toy-colors")
    assert target.fit_spec == source and source.fit_spec is source
    assert target.hash != source.hash
    assert target.record_path(Path("r")) != source.record_path(Path("r"))
    with pytest.raises(ConfigError, match="needs protocol cross-dataset"):
        RunSpec("coop", "toy-objects", target="toy-colors")
    with pytest.raises(ConfigError, match="is the source itself"):
        RunSpec("coop", "toy-objects", protocol="cross-dataset", target="toy-objects")


def test_records_of_the_older_targets_form_keep_their_identity() -> None:
    """Records written before per-target records stored ``targets: []``; they still match."""
    spec = RunSpec("coop", "toy-shapes", shots=4, seed=2)
    old = RunResult(spec).to_dict()
    old["spec"].pop("target")
    old["spec"]["targets"] = []
    assert RunResult.from_dict(old).spec == spec
    old["spec"]["targets"], old["spec"]["protocol"] = ["toy-colors"], "cross-dataset"
    assert RunResult.from_dict(old).spec.target == "toy-colors"


def test_run_result_round_trip() -> None:
    spec = RunSpec(
        "coop", "toy-shapes", overrides=(("n_ctx", "4"),), protocol="cross-dataset", target="toy-colors"
    )
    result = RunResult(spec, metrics={"base": 80.0, "novel": None}, costs={"wall_time_s": 1.5})
    data = result.to_dict()
    assert data["spec_hash"] == spec.hash
    back = RunResult.from_dict(data)
    assert back == result and back.spec.hash == spec.hash


def test_lazy_feature_set_computes_once_on_first_use() -> None:
    import torch

    from fewshot.types import FeatureSet, LazyFeatureSet

    calls: list[int] = []

    def compute() -> FeatureSet:
        calls.append(1)
        return FeatureSet(torch.eye(3), torch.tensor([0, 1, 2]), ("a", "b", "c"), "key")

    lazy = LazyFeatureSet(compute)
    assert calls == []
    assert len(lazy) == 3 and lazy.subset([2]).ids == ("c",) and lazy.key == "key"
    assert calls == [1]

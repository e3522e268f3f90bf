"""Backbone loading (ids, local files, offline hub errors) and the Backbone interface."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
import re
import socket

import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from fewshot import backbones
from fewshot.backbones import Backbone, clear_backbone_cache, list_backbones, load_backbone
from fewshot.toyworld import TOY_MODEL_DIR
from fewshot.types import BackboneSpec, ConfigError, FewshotError

TINY = "fewshot-test-tiny"
TINY_CFG = {
    "embed_dim": 48,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 2, "width": 64, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
OTHER = "fewshot-test-other"  # same family, different width: its weights do not fit TINY
OTHER_CFG = {**TINY_CFG, "embed_dim": 32}


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    clear_backbone_cache()
    logging.disable(logging.WARNING)  # open_clip warns about every random init
    yield
    logging.disable(logging.NOTSET)
    clear_backbone_cache()


@pytest.fixture(scope="module")
def tiny_arch(tmp_path_factory):
    """Register two tiny architectures with open_clip and save random weights for TINY."""
    folder = tmp_path_factory.mktemp("configs")
    (folder / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    (folder / f"{OTHER}.json").write_text(json.dumps(OTHER_CFG))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    weights = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    torch.save(model.state_dict(), weights.with_suffix(".pt"))
    return weights


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    """A stand-in for the bundled toy model: an open_clip local-dir folder (fp16 weights)."""
    folder = tmp_path_factory.mktemp("toy_clip")
    preprocess = {"size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, "interpolation": "bicubic"}
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": preprocess}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    torch.manual_seed(3)
    model = open_clip.CLIP(**TINY_CFG)
    state = {k: v.half().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------
# ids


@pytest.mark.parametrize(
    "text",
    ["toy", "ViT-B-16:openai", "RN50:openai", "hf-hub:timm/ViT-B-16-SigLIP", "ViT-B-16:/models/b16.pt"],
)
def test_spec_round_trip(text):
    spec = BackboneSpec.parse(text)
    assert spec.id == text
    assert BackboneSpec.parse(spec.id) == spec


def test_list_backbones_round_trip():
    ids = list_backbones()
    assert ids[0] == "toy"
    assert "ViT-B-16:openai" in ids and "RN50:openai" in ids
    assert len(ids) == 1 + len(open_clip.list_pretrained())
    for text in ids:
        spec = BackboneSpec.parse(text)
        assert spec.id == text and spec.source in ("toy", "open_clip")


def test_unknown_architecture_suggests_close_names():
    with pytest.raises(ConfigError, match="Did you mean ViT-B-16") as err:
        load_backbone("ViT-B/16:openai")
    assert "ViT-B/16:openai" in str(err.value)


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ConfigError, match="Did you mean openai") as err:
        load_backbone("ViT-B-16:opneai")
    assert "laion2b_s34b_b88k" in str(err.value)  # the tags open_clip knows for ViT-B-16


# ------------------------------------------------------------------------------------------
# hub, offline


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """No cached weights and no network, whatever this machine has."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return tmp_path


@pytest.mark.parametrize("backbone", ["ViT-B-16:openai", "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"])
def test_missing_hub_weights_offline(no_network, backbone):
    with pytest.raises(FewshotError) as err:
        load_backbone(backbone)
    message = str(err.value)
    assert backbone in message  # names the backbone
    assert str(no_network / "hub") in message  # where the weights should be
    assert "HF_HOME" in message and "/path/to/" in message  # how to place them
    assert "Traceback" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_hub_weights_without_network_fails_fast(no_network, monkeypatch):
    # Not told to be offline, but the hub is unreachable: no download attempt, one error.
    import huggingface_hub.constants as hf_constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    with pytest.raises(FewshotError, match="ViT-B-32:openai"):
        load_backbone("ViT-B-32:openai")
    assert hf_constants.HF_HUB_OFFLINE is False  # the offline switch was restored


# ------------------------------------------------------------------------------------------
# local checkpoints


def test_missing_checkpoint(tmp_path, tiny_arch):
    path = tmp_path / "nope.safetensors"
    with pytest.raises(FewshotError, match="does not exist") as err:
        load_backbone(f"{TINY}:{path}")
    assert str(path) in str(err.value)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_corrupt_checkpoint(tmp_path, tiny_arch, suffix):
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"this is not a checkpoint\x00\x01" * 10)
    with pytest.raises(FewshotError, match="cannot be read as weights") as err:
        load_backbone(f"{TINY}:{path}")
    assert str(path) in str(err.value)


def test_truncated_checkpoint(tmp_path, tiny_arch):
    path = tmp_path / "cut.safetensors"
    path.write_bytes(tiny_arch.read_bytes()[:2000])
    with pytest.raises(FewshotError, match=re.escape(str(path))):
        load_backbone(f"{TINY}:{path}")


class Payload:
    """A malicious object: unpickling it creates ``marker`` (so a load that ran it shows)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("layout", ["state_dict", "bare"])
def test_pickled_objects_are_refused_without_advice_to_disable_the_check(tmp_path, tiny_arch, layout):
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    tensors = {"x": torch.zeros(1)}
    payload = {"state_dict": tensors, "extra": Payload(marker)} if layout == "state_dict" else Payload(marker)
    torch.save(payload, path)
    assert not marker.exists()
    with pytest.raises(FewshotError) as err:
        load_backbone(f"{TINY}:{path}")
    message = str(err.value)
    assert not marker.exists()  # the payload never ran
    assert f"checkpoint file {path} holds objects beyond plain tensors" in message
    assert "fewshot loads only weights-only checkpoints" in message and "safetensors" in message
    assert "save_file(state_dict" in message  # how to convert a trusted checkpoint
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    assert "can still be loaded" not in message  # none of torch's advice is quoted
    assert "\n" not in message


def test_no_error_path_quotes_torchs_advice_to_disable_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload(tmp_path / "pwned")}, path)
    with pytest.raises(pickle.UnpicklingError) as err:  # what open_clip lets through from the hub
        torch.load(path, weights_only=True)
    assert "weights_only` set to `False" in str(err.value)  # torch's advice, as torch words it
    reason = backbones._reason(err.value)
    assert reason.startswith("the checkpoint holds objects beyond plain tensors")
    assert "False" not in reason and "can still be loaded" not in reason


def test_checkpoint_of_another_architecture(tiny_arch):
    with pytest.raises(FewshotError, match=f"does not fit architecture {OTHER}"):
        load_backbone(f"{OTHER}:{tiny_arch}")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_checkpoint_loads(tiny_arch, suffix):
    path = tiny_arch.with_suffix(suffix)
    backbone = load_backbone(f"{TINY}:{path}")
    reference = open_clip.create_model(TINY)
    reference.load_state_dict(torch.load(path, weights_only=True) if suffix == ".pt" else _load_st(path))
    for name, value in reference.state_dict().items():
        assert torch.equal(backbone.model.state_dict()[name], value), name
    assert backbone.weights_digest == _sha256(path)


def _load_st(path):
    from safetensors.torch import load_file

    return load_file(str(path))


# ------------------------------------------------------------------------------------------
# the Backbone interface (on the toy model, or a stand-in until its checkpoint exists)


@pytest.fixture
def toy(monkeypatch, toy_dir) -> Backbone:
    if not (TOY_MODEL_DIR / "open_clip_model.safetensors").is_file():
        monkeypatch.setattr(backbones, "_toy_model_dir", lambda: toy_dir)
    return load_backbone("toy")


def test_toy_backbone_attributes(toy):
    model = toy.model
    assert toy.spec == BackboneSpec.parse("toy")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert toy.embed_dim == model.text_projection.shape[1]
    assert toy.image_size == model.visual.image_size[0]
    assert toy.context_length == model.positional_embedding.shape[0]
    assert math.isclose(toy.logit_scale, model.logit_scale.exp().item(), rel_tol=1e-6)
    folder = backbones._toy_model_dir()
    assert toy.weights_digest == _sha256(folder / "open_clip_model.safetensors")
    assert load_backbone("toy") is toy  # memoised per (id, device)
    assert load_backbone(BackboneSpec.parse("toy"), "cpu") is toy


def test_toy_without_weights_is_an_error(monkeypatch, tmp_path, toy_dir):
    (tmp_path / "open_clip_config.json").write_text((toy_dir / "open_clip_config.json").read_text())
    monkeypatch.setattr(backbones, "_toy_model_dir", lambda: tmp_path)
    with pytest.raises(FewshotError, match=re.escape("open_clip_model.safetensors")):
        load_backbone("toy")


def test_encode_texts_matches_open_clip(toy):
    texts = ["a photo of a dog.", "x", "", "a red square next to a blue circle on grass. " * 4, "a cat"]
    got = toy.encode_texts(texts, batch_size=2)  # several batches, sorted by length inside
    raw = toy.encode_texts(texts, normalize=False)
    with torch.no_grad():
        expected = toy.model.encode_text(open_clip.get_tokenizer(_toy_name())(texts))
    assert (raw - expected).abs().max().item() < 1e-4
    assert (got - torch.nn.functional.normalize(expected, dim=-1)).abs().max().item() < 1e-4
    assert not got.requires_grad and toy.encode_texts([]).shape == (0, toy.embed_dim)


def _toy_name() -> str:
    return f"local-dir:{backbones._toy_model_dir()}"


def test_tokenize(toy):
    tokens = toy.tokenize(["a dog", "a photo of a cat"])
    assert tokens.dtype == torch.long and tokens.shape == (2, toy.context_length)
    assert tokens[0, :4].tolist() == [49406, 320, 1929, 49407]  # SOS a dog EOT (CLIP BPE ids)


def test_transforms_and_image_encoding(toy):
    image = Image.new("L", (70, 50), color=128)  # grey and not square: both transforms cope
    size = toy.image_size
    assert toy.preprocess(image).shape == (3, size, size)
    torch.manual_seed(0)
    augmented = toy.train_transform(image)
    assert augmented.shape == (3, size, size) and augmented.dtype == torch.float32
    assert "RandomResizedCrop" in repr(toy.train_transform) and "scale=(0.08, 1.0)" in repr(
        toy.train_transform
    )
    assert toy.transform_id(True) != toy.transform_id(False)
    assert toy.transform_id(False) == toy.transform_id(False)
    batch = torch.stack([toy.preprocess(image), augmented])
    features = toy.encode_images(batch)
    with torch.no_grad():
        expected = toy.model.encode_image(batch)
    assert features.shape == (2, toy.embed_dim) and torch.allclose(features, expected)


def test_hf_hub_loads_from_the_cache_without_network(no_network, toy_dir):
    # A hub cache laid out as huggingface_hub writes it: refs/main -> snapshots/<commit>/files.
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = no_network / "hub" / "models--fewshot-test--tiny"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        (snapshot / name).write_bytes((toy_dir / name).read_bytes())
    backbone = load_backbone("hf-hub:fewshot-test/tiny")
    assert backbone.weights_file == snapshot / "open_clip_model.safetensors"
    assert backbone.weights_digest == _sha256(toy_dir / "open_clip_model.safetensors")
    reference = open_clip.create_model(f"local-dir:{toy_dir}")
    tokens = backbone.tokenize(["a photo of a dog."])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1)
    assert (backbone.encode_texts(["a photo of a dog."]) - expected).abs().max().item() < 1e-5

"""The toy world, the toy datasets and the bundled micro CLIP."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from fewshot.datasets import SUITES, get_dataset
from fewshot.datasets.base import DatasetError
from fewshot.toyworld import TOY_MODEL_DIR
from fewshot.toyworld.catalog import COLORS, SHAPES, TEXTURES
from fewshot.toyworld.world import (
    CaptionNoise,
    caption,
    caption_facts,
    fade,
    fit_matrix,
    fits,
    item_scene,
    render,
    sample_scene,
    seed_rng,
)
from fewshot.types import Item

TOY = ["toy-shapes", "toy-colors", "toy-textures", "toy-objects", "toy-shapes-sketch"]
SIZES = {"train": 40, "val": 10, "test": 30}  # per class, as docs/toyworld.md states


def _digest(image) -> str:
    return hashlib.sha256(np.asarray(image).tobytes()).hexdigest()


@pytest.mark.parametrize("name", TOY)
def test_dataset_shape(name):
    ds = get_dataset(name)  # no data root needed
    assert ds.is_present()
    spec = ds.spec()
    assert spec.name == name and spec.split_source == "toyworld"
    assert spec.num_classes >= 10 and len(set(spec.classnames)) == spec.num_classes
    assert "{}" in spec.template and len(spec.templates) >= 3
    assert all("{}" in t for t in spec.templates)
    splits = ds.splits()
    for split in (splits.train, splits.val, splits.test):
        assert Counter(split.labels) == dict.fromkeys(range(spec.num_classes), SIZES[split.name])
    assert len(splits.test) >= 300
    paths = [it.path for s in (splits.train, splits.val, splits.test) for it in s.items]
    assert len(set(paths)) == len(paths)


@pytest.mark.parametrize("name", ["toy-shapes", "toy-objects"])
def test_splits_use_disjoint_seeds(name):
    ds = get_dataset(name)
    scenes = [
        repr(item_scene(name, s.name, int(it.path.split("/")[1]), SIZES[s.name])[0])
        for s in (ds.splits().train, ds.splits().val, ds.splits().test)
        for it in s.items
    ]
    assert len(set(scenes)) == len(scenes)
    # and the pixels differ too, not just the seeds
    train0 = ds.load_image(ds.splits().train.items[0])
    test0 = ds.load_image(ds.splits().test.items[0])
    assert _digest(train0) != _digest(test0)


def test_items_show_their_class():
    shapes, objects = get_dataset("toy-shapes"), get_dataset("toy-objects")
    for it in shapes.splits().test.items[::7]:
        scene, label = item_scene("toy-shapes", "test", int(it.path[5:]), 30)
        assert label == it.label and scene.shape == shapes.spec().classnames[it.label]
    for it in objects.splits().val.items[::3]:
        scene, _ = item_scene("toy-objects", "val", int(it.path[4:]), 10)
        assert f"{scene.color} {scene.shape}" == objects.spec().classnames[it.label]


def test_viewing_and_contrast_apply_to_every_item():
    """A dataset's fixed viewing attributes and its faded contrast reach the pixels."""
    textures = get_dataset("toy-textures")
    for it in textures.splits().train.items[::37]:
        scene, _ = item_scene("toy-textures", "train", int(it.path[6:]), 40)
        assert (scene.count, scene.size) == (1, "large")
        faded = np.asarray(textures.load_image(it), dtype=float)
        full = np.asarray(render(scene), dtype=float)
        assert faded.std() < 0.4 * full.std()
        assert abs(faded.mean() - full.mean()) < 2.0  # faded towards its own mean brightness
    for it in get_dataset("toy-shapes").splits().test.items[::41]:
        scene, _ = item_scene("toy-shapes", "test", int(it.path[5:]), 30)
        assert (scene.texture, scene.size) == ("hollow", "large")
    image = render(sample_scene(seed_rng("fade")))
    assert fade(image, 1.0) is image


def test_rendering_is_deterministic_and_varies():
    ds = get_dataset("toy-textures")
    items = ds.splits().train.items
    first = [_digest(ds.load_image(it)) for it in items[:4]]
    assert first == [_digest(ds.load_image(it)) for it in items[:4]]
    assert len(set(first)) == 4  # same class (label 0), different seeds, different images
    image = ds.load_image(items[0])
    assert image.mode == "RGB" and image.size == (64, 64)
    a = render(sample_scene(seed_rng("t", 1)))
    b = render(sample_scene(seed_rng("t", 2)))
    assert _digest(a) != _digest(b)
    assert _digest(a) == _digest(render(sample_scene(seed_rng("t", 1))))


def test_rendering_is_the_same_in_a_fresh_process():
    code = (
        "import hashlib, numpy as np; from fewshot.datasets import get_dataset; "
        "ds = get_dataset('toy-shapes-sketch'); it = ds.splits().test.items[5]; "
        "print(hashlib.sha256(np.asarray(ds.load_image(it)).tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ds = get_dataset("toy-shapes-sketch")
    assert out.stdout.strip() == _digest(ds.load_image(ds.splits().test.items[5]))


def test_shifted_domain_matches_its_source():
    sketch, source = get_dataset("toy-shapes-sketch"), get_dataset("toy-shapes")
    assert sketch.domain_of == "toy-shapes"
    assert sketch.spec().classnames == source.spec().classnames
    assert Counter(sketch.splits().test.labels) == Counter(source.splits().test.labels)
    # same item, different pictures: the domain really changes the rendering
    it = source.splits().test.items[0]
    assert _digest(sketch.load_image(it)) != _digest(source.load_image(it))
    assert set(SUITES["toy-shift"]) == {"toy-shapes-sketch"}


def test_bad_item_path_is_a_clear_error():
    ds = get_dataset("toy-colors")
    with pytest.raises(DatasetError, match="SPLIT/INDEX"):
        ds.load_image(Item("images/cat.jpg", 0))
    with pytest.raises(DatasetError, match="out of range"):
        ds.load_image(Item("test/999999", 0))


def test_captions_name_the_scene():
    noise = CaptionNoise(
        mention=dict.fromkeys(["shape", "color", "texture", "size", "count", "background"], 1.0)
    )
    noise = CaptionNoise(mention=noise.mention, flip=0.0, clause=0.0)
    rng = seed_rng("captions")
    for _ in range(20):
        scene = sample_scene(rng, count=2)
        text = caption(scene, rng, noise)
        assert scene.color in text and scene.texture in text and scene.background in text
        assert "two" in text and (scene.shape + "s" in text or scene.shape + "es" in text)
    # captions vary: the default noise leaves attributes out and changes the phrasing
    scene = sample_scene(seed_rng("one"))
    assert len({caption(scene, rng) for _ in range(30)}) > 10


def test_fit_matrix_agrees_with_fits():
    """The vectorised rule pretraining uses equals the per-pair rule, on noisy captions."""
    rng = seed_rng("fit-matrix")
    scenes = [sample_scene(rng, count=int(rng.integers(1, 4))) for _ in range(40)]
    claims = [caption_facts(s, rng, CaptionNoise(flip=0.3))[1] for s in scenes]
    claims += [{"count": "plural"}, {"shape": "circle", "count": 1}, {}]
    expected = np.array([[fits(s, c) for c in claims] for s in scenes])
    got = fit_matrix(scenes, claims)
    assert got.dtype == bool and (got == expected).all()
    assert 0 < expected.mean() < 1  # both outcomes occur
    assert fits(sample_scene(rng, count=2), {"count": "plural"})
    assert not fits(sample_scene(rng, count=1), {"count": "plural"})


def test_class_descriptions():
    for name in ("toy-shapes", "toy-colors", "toy-textures", "toy-objects"):
        ds = get_dataset(name)
        desc = ds.descriptions()
        assert list(desc) == list(ds.spec().classnames)
        assert all(len(v) >= 3 and all(s.endswith(".") for s in v) for v in desc.values())
    assert len(SHAPES) >= 10 and len(COLORS) >= 10 and len(TEXTURES) >= 10


# ------------------------------------------------------------------------------------------
# The bundled micro CLIP


@pytest.fixture(scope="module")
def toy_clip():
    open_clip = pytest.importorskip("open_clip")
    import torch

    torch.set_num_threads(1)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{TOY_MODEL_DIR}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{TOY_MODEL_DIR}")
    return model.eval(), preprocess, tokenizer


def test_checkpoint_is_small_and_loaded(toy_clip):
    from safetensors.torch import load_file

    weights = TOY_MODEL_DIR / "open_clip_model.safetensors"
    assert weights.stat().st_size < 20 * 2**20
    stored = load_file(str(weights))
    assert all(v.dtype.is_floating_point for v in stored.values())
    model = toy_clip[0]
    state = model.state_dict()
    assert set(stored) == set(state)
    for key in ("visual.conv1.weight", "token_embedding.weight", "text_projection"):
        assert (state[key] == stored[key].float()).all()  # the trained weights, not a random init


@pytest.mark.parametrize("name", TOY)
def test_zero_shot_is_above_chance_but_not_saturated(toy_clip, name):
    import torch

    model, preprocess, tokenizer = toy_clip
    ds = get_dataset(name)
    spec, test = ds.spec(), ds.splits().test
    with torch.no_grad():
        images = torch.stack([preprocess(ds.load_image(it)) for it in test.items])
        img = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        txt = model.encode_text(tokenizer([spec.prompt(c) for c in spec.classnames]), normalize=True)
    pred = (img @ txt.T).argmax(dim=-1)
    accuracy = (pred == torch.tensor(test.labels)).float().mean().item() * 100
    chance = 100 / spec.num_classes
    assert 2 * chance < accuracy <= 80.0


def test_dataset_version_follows_its_definition():
    """Changing a toy dataset's viewing or contrast makes its cached features stale."""
    import dataclasses

    from fewshot.datasets.toy import TOY_VERSION, toy_version
    from fewshot.toyworld.catalog import TOY_DATASETS

    d = TOY_DATASETS["toy-textures"]
    assert get_dataset("toy-textures").spec().version == toy_version(d)
    assert toy_version(d).startswith(TOY_VERSION + ".")
    assert toy_version(dataclasses.replace(d, contrast=0.5)) != toy_version(d)
    assert toy_version(dataclasses.replace(d, viewing=())) != toy_version(d)
    assert len({toy_version(x) for x in TOY_DATASETS.values()}) == len(TOY_DATASETS)

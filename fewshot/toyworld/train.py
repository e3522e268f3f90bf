"""Pretrain the micro CLIP on captioned images of the toy world (CPU, minutes).

    python -m fewshot.toyworld.train [--out DIR] [--steps N] [--seed S]

Contrastive training of the open_clip model described by ``toy_clip/open_clip_config.json``
on freshly rendered scenes with noisy captions (:class:`fewshot.toyworld.world.CaptionNoise`),
in two phases: a short caption-paraphrase warm-up of the text tower alone
(:func:`warm_up_text`), then symmetric InfoNCE between images and captions with soft targets,
the text tower locked for the first :data:`LOCKED_TEXT` share of the steps; AdamW with warmup
and cosine decay. Every
batch is a pure function of (seed, step), and the run uses a fixed number of threads, so a
rerun on the same machine gives the same weights. The result is written as an open_clip
``local-dir:`` folder (config + float16 safetensors), then the script prints the zero-shot
top-1 (single template) and a 16-shot logistic-regression probe on every toy dataset.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fewshot.toyworld import TOY_MODEL_DIR
from fewshot.toyworld.catalog import BACKGROUNDS, COLORS, SHAPES, SIZES, SPLIT_SIZES, TEXTURES, TOY_DATASETS
from fewshot.toyworld.world import (
    CaptionNoise,
    Scene,
    caption_facts,
    caption_vocabulary,
    fit_matrix,
    render,
    render_item,
    sample_scene,
    seed_rng,
)

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"

# Words that captions rarely use (the factor multiplies the mention probability): the text
# tower learns them poorly, so zero-shot prompts with them are weak while the images still
# separate the classes. This is the main lever that leaves room for few-shot adaptation.
RARE_WORDS: dict[str, float] = {}
PRETRAIN_NOISE = CaptionNoise(
    mention={"shape": 0.9, "color": 0.8, "texture": 0.7, "size": 0.5, "count": 0.6, "background": 0.5},
    rare=RARE_WORDS,
    flip=0.05,
)
# Share of image-text steps at the start during which the text tower stays as the text
# warm-up left it (locked, as in LiT with the roles swapped). Left free from the start, the
# text tower learns to ignore shape and texture words before the slow image tower can see
# shapes, and never recovers within a CPU budget (checkpoint v1 learned colour only).
LOCKED_TEXT = 0.6
TEXT_WARMUP_STEPS = 300  # caption-paraphrase steps for the text tower alone (cheap)
SKIP_IN_TEXT_WARMUP = {"logit_scale", "token_embedding.weight"}
SHORT_CAPTIONS = (0.8, 0.4)  # share of groups with short captions (group_noise): locked, free
PLAIN_SHARE = 0.6  # share of groups (not focused on texture) whose objects are plain
GROUP_FOCUS = {"shape": 0.5, "texture": 0.25, "color": 0.08, "size": 0.07, "count": 0.05, "background": 0.05}


@functools.cache
def get_tokenizer(context_length: int):
    """open_clip's standard BPE tokenizer (what ``get_tokenizer("local-dir:...")`` returns)."""
    import open_clip

    return open_clip.SimpleTokenizer(context_length=context_length)


def load_config(config_dir: Path = TOY_MODEL_DIR) -> dict:
    """The open_clip config (``{"model_cfg": ..., "preprocess_cfg": ...}``) of the micro CLIP."""
    return json.loads((config_dir / CONFIG_NAME).read_text())


def build_model(config: dict, seed: int) -> Any:
    """A randomly initialised open_clip CLIP from ``config["model_cfg"]``."""
    import open_clip

    torch.manual_seed(seed)
    cfg = config["model_cfg"]
    return open_clip.CLIP(
        embed_dim=cfg["embed_dim"],
        vision_cfg=cfg["vision_cfg"],
        text_cfg=cfg["text_cfg"],
        quick_gelu=cfg.get("quick_gelu", False),
    )


def to_tensor(images: list[Image.Image], preprocess_cfg: dict) -> torch.Tensor:
    """Resize (bicubic, as open_clip's eval transform does) and normalise a list of images."""
    size = preprocess_cfg["size"]
    arr = np.stack([np.asarray(im.resize((size, size), Image.Resampling.BICUBIC)) for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(preprocess_cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def sample_group(rng: np.random.Generator, size: int) -> tuple[str, list[Scene]]:
    """Scenes that share every attribute but one "focus" attribute, which differs.

    These are hard negatives: with independent scenes, colour and background alone tell the
    captions of a batch apart and the image tower never learns shape or texture. The focus
    is drawn with :data:`GROUP_FOCUS` weights, so slow-to-learn attributes get more batches.
    """
    names = list(GROUP_FOCUS)
    focus = names[int(rng.choice(len(names), p=list(GROUP_FOCUS.values())))]
    # Textures break silhouettes up and slow shape learning a lot: favour plain fills.
    base = sample_scene(rng, texture="plain" if rng.random() < PLAIN_SHARE else None)
    shared = {a: getattr(base, a) for a in names if a != focus}
    values = _focus_values(focus, shared)
    picks = rng.choice(len(values), size=size, replace=size > len(values))
    return focus, [sample_scene(rng, **shared, **{focus: values[int(i)]}) for i in picks]


def group_noise(focus: str, rng: np.random.Generator, short: float) -> CaptionNoise:
    """Caption noise for a group: often a short caption that names mainly the focus.

    Short captions put the deciding word next to the end of the text, which lets the text
    tower pick it up early; without them it settles on colour words alone.
    """
    if rng.random() >= short:
        return PRETRAIN_NOISE
    mention = {a: (1.0 if a == focus else 0.25 * p) for a, p in PRETRAIN_NOISE.mention.items()}
    return CaptionNoise(mention=mention, rare=PRETRAIN_NOISE.rare, flip=PRETRAIN_NOISE.flip, clause=0.1)


def _focus_values(focus: str, shared: dict) -> list:
    """The values a focus attribute can take next to the shared ones (colour != background)."""
    if focus == "color":
        return [c for c in COLORS if c != shared["background"]]
    if focus == "background":
        return [b for b in BACKGROUNDS if b != shared["color"]]
    values: dict[str, list] = {
        "shape": list(SHAPES),
        "texture": list(TEXTURES),
        "size": list(SIZES),
        "count": [1, 2, 3],
    }
    return values[focus]


def pretrain_batch(
    seed: int, step: int, batch_size: int, preprocess_cfg: dict, tokenizer, short: float, group: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, caption tokens and the fit matrix of one batch; a pure function of (seed, step).

    ``fit[i, j]`` is 1 where caption j fits image i (every claim it makes is true of it),
    and always on the diagonal (a caption's own image, even if the caption is noisy).
    """
    rng = seed_rng("pretrain", seed, step)
    scenes, captions, claims = [], [], []
    for _ in range(batch_size // group):
        focus, members = sample_group(rng, group)
        noise = group_noise(focus, rng, short)
        for s in members:
            text, facts = caption_facts(s, rng, noise)
            scenes.append(s)
            captions.append(text)
            claims.append(facts)
    fit = torch.from_numpy(fit_matrix(scenes, claims)).float()
    fit.fill_diagonal_(1.0)
    return to_tensor([render(s) for s in scenes], preprocess_cfg), tokenizer(captions), fit


class PretrainBatches(torch.utils.data.Dataset):
    """Batch ``step`` of a pretraining run, so a loader worker can render ahead of training."""

    def __init__(self, seed: int, steps: int, batch_size: int, config: dict) -> None:
        self.seed, self.steps, self.batch_size = seed, steps, batch_size
        self.preprocess_cfg = config["preprocess_cfg"]
        self.context_length = config["model_cfg"]["text_cfg"]["context_length"]

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokenizer = get_tokenizer(self.context_length)
        short = SHORT_CAPTIONS[0] if step < self.steps * LOCKED_TEXT else SHORT_CAPTIONS[1]
        return pretrain_batch(self.seed, step, self.batch_size, self.preprocess_cfg, tokenizer, short)


def batch_stream(seed: int, steps: int, batch_size: int, config: dict, workers: int = 1):
    """Pretraining batches in step order, rendered by ``workers`` background processes."""
    dataset = PretrainBatches(seed, steps, batch_size, config)
    if workers == 0:
        return (dataset[i] for i in range(steps))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        prefetch_factor=4,
        worker_init_fn=lambda _: torch.set_num_threads(1),
    )


class CompactEmbedding(torch.nn.Module):
    """Trainable rows of the token embedding for the tokens captions can contain.

    Captions use a few hundred of the 49,408 tokens; training only those rows gives the same
    result as training the full table (unused rows get no gradient, and embeddings have no
    weight decay) at a fraction of the optimizer cost. :meth:`write_back` copies them home.
    """

    ids: torch.Tensor
    remap: torch.Tensor

    def __init__(self, full: torch.nn.Embedding, token_ids: list[int]) -> None:
        super().__init__()
        ids = torch.tensor(sorted(set(token_ids)))
        self.register_buffer("ids", ids)
        remap = torch.full((full.num_embeddings,), -1, dtype=torch.long)
        remap[ids] = torch.arange(len(ids))
        self.register_buffer("remap", remap)
        self.weight = torch.nn.Parameter(full.weight.detach()[ids].clone())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        local = self.remap[tokens]
        if bool((local < 0).any()):
            raise ValueError("a caption uses a token outside caption_vocabulary()")
        return F.embedding(local, self.weight)

    @torch.no_grad()
    def write_back(self, full: torch.nn.Embedding) -> None:
        full.weight[self.ids] = self.weight


def caption_token_ids(tokenizer) -> list[int]:
    """Ids of every token a pretraining caption can contain, plus padding, start and end."""
    tokens = tokenizer(caption_vocabulary())
    return sorted(set(tokens.flatten().tolist()) | {0})


def encode_text_cut(model, tokens: torch.Tensor, embed: torch.nn.Module | None = None) -> torch.Tensor:
    """``model.encode_text`` cut at the longest end-of-text token (exact: the mask is causal)."""
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = (embed or model.token_embedding)(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    return x @ model.text_projection


def clip_loss(
    model,
    embed: CompactEmbedding,
    images: torch.Tensor,
    tokens: torch.Tensor,
    fit: torch.Tensor,
    lock_text: bool = False,
) -> torch.Tensor:
    """Symmetric InfoNCE over the batch with the model's learnable temperature.

    Every caption that fits an image is a positive for it (soft targets, as in UniCL): the
    toy world is small, so a batch holds many captions that describe an image equally well
    ("a circle." for every circle), and counting them as negatives would push images away
    from the very words that describe them. ``lock_text`` keeps the text tower fixed.
    """
    img = F.normalize(model.encode_image(images), dim=-1)
    with torch.set_grad_enabled(not lock_text):
        txt = F.normalize(encode_text_cut(model, tokens, embed), dim=-1)
    logits = model.logit_scale.exp().clamp(max=100.0) * img @ txt.T
    to_text = fit / fit.sum(dim=1, keepdim=True)
    to_image = fit.T / fit.T.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, to_text) + F.cross_entropy(logits.T, to_image)) / 2


def make_optimizer(model, embed: CompactEmbedding, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with one group per (tower, decay); no decay on gains, biases, embeddings, temperature.

    Parameters without a gradient (the text tower while it is locked) are left untouched,
    weight decay included: AdamW skips them.
    """
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {
        (tower, decay): [] for tower in ("image", "text") for decay in (True, False)
    }
    groups[("text", False)].append(embed.weight)
    for name, p in model.named_parameters():
        if name == "token_embedding.weight":
            continue  # trained through ``embed``
        tower = "image" if name.startswith("visual.") or name == "logit_scale" else "text"
        no_decay = p.ndim < 2 or "embedding" in name or name == "logit_scale"
        groups[(tower, not no_decay)].append(p)
    return torch.optim.AdamW(
        [{"params": ps, "weight_decay": weight_decay if decay else 0.0} for (_, decay), ps in groups.items()],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def text_batch(
    seed: int, step: int, batch_size: int, tokenizer
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two independent captions of each of ``batch_size`` scenes, and which pairs agree.

    ``agree[i, j]`` is 1 where caption a_i fits scene j and caption b_j fits scene i.
    """
    rng = seed_rng("pretrain-text", seed, step)
    scenes, first, second = [], [], []
    for _ in range(batch_size // 8):
        focus, members = sample_group(rng, 8)
        noise = group_noise(focus, rng, SHORT_CAPTIONS[0])
        for s in members:
            scenes.append(s)
            first.append(caption_facts(s, rng, noise))
            second.append(caption_facts(s, rng, PRETRAIN_NOISE))
    fit_a = torch.from_numpy(fit_matrix(scenes, [f for _, f in first])).float()  # scene i, caption a_j
    fit_b = torch.from_numpy(fit_matrix(scenes, [f for _, f in second])).float()
    agree = fit_a.T * fit_b
    agree.fill_diagonal_(1.0)
    return tokenizer([t for t, _ in first]), tokenizer([t for t, _ in second]), agree


def warm_up_text(model, embed: CompactEmbedding, seed: int, steps: int, lr: float, tokenizer) -> None:
    """Contrastive caption-paraphrase pretraining of the text tower alone.

    Two captions of one scene are positives, captions of scenes that differ in a named
    attribute are negatives. A text tower trained like this separates shape and texture
    words; the image tower then learns against it (locked, as in LiT) from the start,
    instead of both towers settling on colour, the one attribute a fresh ViT sees at once.
    """
    params = [embed.weight] + [
        p for n, p in model.named_parameters() if not n.startswith("visual.") and n not in SKIP_IN_TEXT_WARMUP
    ]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.0)
    for step in range(steps):
        a, b, agree = text_batch(seed, step, 256, tokenizer)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, max(1, steps // 10))
        ta = F.normalize(encode_text_cut(model, a, embed), dim=-1)
        tb = F.normalize(encode_text_cut(model, b, embed), dim=-1)
        logits = 20.0 * ta @ tb.T
        loss = (
            F.cross_entropy(logits, agree / agree.sum(1, keepdim=True))
            + F.cross_entropy(logits.T, agree.T / agree.T.sum(1, keepdim=True))
        ) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"text step {step:4d}/{steps}  loss {loss.item():.3f}", flush=True)


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warmup then cosine decay to zero."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(
    steps: int, seed: int, batch_size: int, lr: float, config: dict, workers: int = 1, log_every: int = 50
):
    """Pretrain and return the model (eval mode)."""

    tokenizer = get_tokenizer(config["model_cfg"]["text_cfg"]["context_length"])
    model = build_model(config, seed)
    embed = CompactEmbedding(model.token_embedding, caption_token_ids(tokenizer))
    model.train()
    start = time.perf_counter()
    warm_up_text(model, embed, seed, TEXT_WARMUP_STEPS, lr, tokenizer)
    opt = make_optimizer(model, embed, lr, weight_decay=0.1)
    warmup = max(1, steps // 20)
    locked = int(steps * LOCKED_TEXT)
    for step, (images, tokens, fit) in enumerate(batch_stream(seed, steps, batch_size, config, workers)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        loss = clip_loss(model, embed, images, tokens, fit, lock_text=step < locked)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            elapsed = time.perf_counter() - start
            scale = float(model.logit_scale.detach().exp())
            print(
                f"step {step:5d}/{steps}  loss {loss.item():.3f}  scale {scale:5.1f}  {elapsed:6.0f}s",
                flush=True,
            )
    embed.write_back(model.token_embedding)
    return model.eval()


def save(model, config: dict, out: Path) -> Path:
    """Write the open_clip ``local-dir:`` folder: the config and float16 safetensors weights."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "pt", "source": "fewshot.toyworld.train"})
    config_path = out / CONFIG_NAME
    if config_path.resolve() != (TOY_MODEL_DIR / CONFIG_NAME).resolve():
        config_path.write_text(json.dumps(config, indent=2) + "\n")
    return out / WEIGHTS_NAME


# ------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def encode_split(model, dataset: str, split: str, preprocess_cfg: dict) -> tuple[torch.Tensor, np.ndarray]:
    """L2-normalised image features and labels of a toy dataset split."""
    d = TOY_DATASETS[dataset]
    per_class = SPLIT_SIZES[split]
    n = per_class * len(d.classes)
    feats = []
    for lo in range(0, n, 256):
        images = [render_item(dataset, split, i, per_class) for i in range(lo, min(n, lo + 256))]
        feats.append(F.normalize(model.encode_image(to_tensor(images, preprocess_cfg)), dim=-1))
    return torch.cat(feats), np.arange(n) // per_class


@torch.no_grad()
def zero_shot(model, tokenizer, dataset: str, feats: torch.Tensor, labels: np.ndarray) -> float:
    """Top-1 (percent) of single-template zero-shot classification."""
    d = TOY_DATASETS[dataset]
    text = F.normalize(model.encode_text(tokenizer([d.template.format(c) for c in d.classnames])), dim=-1)
    pred = (feats @ text.T).argmax(dim=-1).numpy()
    return float((pred == labels).mean() * 100)


def probe(
    train: tuple[torch.Tensor, np.ndarray],
    val: tuple[torch.Tensor, np.ndarray],
    test: tuple[torch.Tensor, np.ndarray],
    shots: int,
    seeds: int = 3,
) -> float:
    """Mean top-1 (percent) of logistic regression on ``shots`` images per class.

    The inverse regularisation C is picked on the val split from a small grid, per seed.
    """
    from sklearn.linear_model import LogisticRegression

    x, y = train[0].numpy(), train[1]
    accs = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in np.unique(y)])
        fits = [LogisticRegression(C=c, max_iter=3000).fit(x[idx], y[idx]) for c in (1.0, 10.0, 100.0)]
        best = max(fits, key=lambda f: (f.predict(val[0].numpy()) == val[1]).mean())
        accs.append((best.predict(test[0].numpy()) == test[1]).mean() * 100)
    return float(np.mean(accs))


def evaluate(model, config: dict, shots: int = 16) -> dict[str, dict[str, float]]:
    """Zero-shot and few-shot probe top-1 on every toy dataset's test split."""

    tokenizer = get_tokenizer(config["model_cfg"]["text_cfg"]["context_length"])
    results = {}
    for name, d in TOY_DATASETS.items():
        test = encode_split(model, name, "test", config["preprocess_cfg"])
        row = {"chance": 100.0 / len(d.classes), "zeroshot": zero_shot(model, tokenizer, name, *test)}
        if shots:
            row[f"probe{shots}"] = probe(
                encode_split(model, name, "train", config["preprocess_cfg"]),
                encode_split(model, name, "val", config["preprocess_cfg"]),
                test,
                shots,
            )
        results[name] = row
    return results


def main(argv: list[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=TOY_MODEL_DIR, help="output local-dir folder")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (results depend on it)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering batches ahead")
    parser.add_argument("--shots", type=int, default=16, help="shots for the probe (0: skip it)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    config = load_config()
    start = time.perf_counter()
    model = train(args.steps, args.seed, args.batch_size, args.lr, config, args.workers)
    path = save(model, config, args.out)
    print(
        f"trained in {time.perf_counter() - start:.0f}s; wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)"
    )
    results = evaluate(model, config, args.shots)
    for name, row in results.items():
        extra = "".join(f"  {k} {v:5.1f}" for k, v in row.items() if k not in ("chance", "zeroshot"))
        print(f"{name:20s} chance {row['chance']:5.1f}  zero-shot {row['zeroshot']:5.1f}{extra}")


if __name__ == "__main__":
    main()

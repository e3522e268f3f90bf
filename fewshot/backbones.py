"""Backbones: frozen open_clip models behind one small interface.

A backbone id (see :class:`fewshot.types.BackboneSpec`) names where the weights come from:

- ``toy``: the bundled micro CLIP (``fewshot/toyworld/toy_clip``, an open_clip ``local-dir:``).
- ``ARCH:TAG``: open_clip's pretrained weights, e.g. ``ViT-B-16:openai``, fetched through the
  Hugging Face hub cache (``$HF_HOME/hub``). The cache is tried first without network, so a
  machine that has the weights never touches the network; one without them and without
  network gets a single :class:`FewshotError` saying how to place them.
- ``hf-hub:ORG/NAME``: an open_clip model published on the hub (config + weights).
- ``ARCH:/path/to/weights``: an open_clip architecture with a local file (safetensors or a
  plain state dict; pickles are refused: ``torch.load(weights_only=True)``).

Weights are always required: open_clip's habit of falling back to random initialisation
when weights are missing is turned into an error. Tags that open_clip marks as trained with
QuickGELU (the OpenAI ones) get QuickGELU, as the original models do.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import pickle
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlparse

import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

from fewshot import prompting
from fewshot.types import BackboneSpec, ConfigError, FewshotError, stable_hash

__all__ = [
    "Backbone",
    "clear_backbone_cache",
    "file_digest",
    "list_backbones",
    "load_backbone",
    "state_dict_digest",
]

Transform = Callable[[Image.Image], torch.Tensor]


# ------------------------------------------------------------------------------------------
# The Backbone


class ConvertRGB:
    """PIL image -> RGB (grey, palette and RGBA inputs become 3-channel)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return "ConvertRGB()"


class Backbone:
    """A frozen open_clip model with its transforms and tokenizer.

    ``encode_images`` returns raw (unnormalised) features; ``encode_texts`` returns
    normalised text features by default, computed with the exact truncated text encoder of
    :mod:`fewshot.prompting`. Both run without grad and return float32 on ``device``.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        model: nn.Module,
        preprocess: Transform,
        tokenizer: Callable[..., torch.Tensor],
        device: str | torch.device = "cpu",
        weights_file: Path | None = None,
    ) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.weights_file = weights_file
        pp = dict(getattr(model.visual, "preprocess_cfg", {}))
        size = pp.get("size", getattr(model.visual, "image_size", 224))
        self.image_size: int = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean: tuple[float, ...] = tuple(pp.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.std: tuple[float, ...] = tuple(pp.get("std", (0.26862954, 0.26130258, 0.27577711)))
        self.embed_dim: int = _embed_dim(model)
        # The tokenizer decides the token length that every text path sees.
        ctx = getattr(tokenizer, "context_length", None) or getattr(model, "context_length", None) or 77
        self.context_length: int = int(ctx)
        self.logit_scale: float = float(cast(torch.Tensor, model.logit_scale).detach().exp().item())
        self.train_transform: Transform = T.Compose(
            [
                ConvertRGB(),
                T.RandomResizedCrop(
                    self.image_size, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC
                ),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(self.mean, self.std),
            ]
        )

    def __repr__(self) -> str:
        return f"Backbone({self.spec.id!r}, device={str(self.device)!r}, embed_dim={self.embed_dim})"

    @property
    def id(self) -> str:
        return self.spec.id

    @cached_property
    def weights_digest(self) -> str:
        """SHA-256 of the weights file (memoised per path, size, mtime), else of the state dict."""
        if self.weights_file is not None and self.weights_file.is_file():
            return file_digest(self.weights_file)
        return state_dict_digest(self.model)

    def transform_id(self, augment: bool) -> str:
        """A short id of the train (``augment=True``) or test transform, for cache keys."""
        transform = self.train_transform if augment else self.preprocess
        # Reprs of plain functions carry a memory address; drop it so ids are stable.
        text = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(transform))
        return f"{'train' if augment else 'test'}-{stable_hash(text, 12)}"

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """Token ids (N, context_length), int64, on CPU."""
        return self.tokenizer(list(texts)).long()

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image features (B, D) of preprocessed images (B, 3, H, W)."""
        visual = cast(nn.Module, self.model.visual)
        dtype = next(visual.parameters()).dtype
        encode = cast(Callable[[torch.Tensor], torch.Tensor], self.model.encode_image)
        return encode(images.to(self.device, dtype)).float()

    @torch.no_grad()
    def encode_texts(self, texts: list[str], normalize: bool = True, batch_size: int = 256) -> torch.Tensor:
        """Text features (N, D); exact, cut at the longest EOT of each batch.

        Texts are batched in order of token length, so a long prompt does not make the
        short ones in its batch pay for its length.
        """
        if not texts:
            return torch.empty(0, self.embed_dim, device=self.device)
        tokens = self.tokenize(texts)
        order = torch.argsort(tokens.argmax(dim=-1), stable=True)
        out = torch.empty(len(texts), self.embed_dim, device=self.device)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            features = prompting.encode_tokens(self.model, tokens[idx].to(self.device))
            out[idx.to(self.device)] = features.float()
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out


def _embed_dim(model: nn.Module) -> int:
    dim = getattr(model.visual, "output_dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    with torch.no_grad():  # last resort: ask the text tower
        encode = cast(Callable[[torch.Tensor], torch.Tensor], model.encode_text)
        return int(encode(torch.zeros(1, 8, dtype=torch.long)).shape[-1])


# ------------------------------------------------------------------------------------------
# Digests


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path, chunk_size: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks; memoised per (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        sha = hashlib.sha256()
        with path.open("rb") as fh:
            while chunk := fh.read(chunk_size):
                sha.update(chunk)
        _DIGESTS[key] = sha.hexdigest()
    return _DIGESTS[key]


def state_dict_digest(model: nn.Module) -> str:
    """Hex SHA-256 of a model's state dict (names, dtypes, shapes and bytes, in name order)."""
    sha = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        sha.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}".encode())
        sha.update(flat.view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()


# ------------------------------------------------------------------------------------------
# Loading


_BACKBONES: dict[tuple[str, str], Backbone] = {}


def load_backbone(backbone: str | BackboneSpec, device: str | torch.device = "cpu") -> Backbone:
    """Load (or reuse, per id and device) a frozen backbone; errors are :class:`FewshotError`."""
    spec = backbone if isinstance(backbone, BackboneSpec) else BackboneSpec.parse(backbone)
    key = (spec.id, str(torch.device(device)))
    if key not in _BACKBONES:
        if spec.source not in _LOADERS:
            raise ConfigError(f"Unknown backbone source {spec.source!r} in {spec.id!r}.")
        _BACKBONES[key] = _LOADERS[spec.source](spec, torch.device(device))
    return _BACKBONES[key]


def clear_backbone_cache() -> None:
    """Forget loaded backbones (frees their memory once no one else holds them)."""
    _BACKBONES.clear()


def list_backbones() -> list[str]:
    """Known backbone ids: ``toy`` plus open_clip's pretrained ``ARCH:TAG`` pairs."""
    import open_clip

    return ["toy", *(f"{arch}:{tag}" for arch, tag in open_clip.list_pretrained())]


@dataclass
class _Created:
    model: nn.Module
    preprocess: Transform
    tokenizer: Callable[..., torch.Tensor]


def _create(
    name: str, pretrained: str | None, device: torch.device, *, tokenizer: bool = True, **kwargs: Any
) -> _Created:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, device=device, require_pretrained=True, weights_only=True, **kwargs
    )
    tok = open_clip.get_tokenizer(name, cache_dir=kwargs.get("cache_dir")) if tokenizer else None
    return _Created(model, preprocess, tok)  # type: ignore[arg-type]


def _toy_model_dir() -> Path:
    try:
        from fewshot.toyworld import TOY_MODEL_DIR
    except ImportError as exc:  # the toy world is part of the package; this is a broken install
        raise FewshotError(f"The bundled toy model cannot be located ({exc}). Reinstall fewshot.") from None
    return Path(TOY_MODEL_DIR)


def _load_toy(spec: BackboneSpec, device: torch.device) -> Backbone:
    folder = _toy_model_dir()
    weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not (folder / "open_clip_config.json").is_file() or not weights:
        raise FewshotError(
            f"The bundled toy model is incomplete: {folder} needs open_clip_config.json and "
            "open_clip_model.safetensors. Reinstall fewshot, or rebuild the checkpoint with "
            "`python -m fewshot.toyworld.train`."
        )
    try:
        created = _create(f"local-dir:{folder}", None, device)
    except Exception as exc:
        raise FewshotError(f"The bundled toy model in {folder} cannot be loaded: {_reason(exc)}") from None
    chosen = folder / "open_clip_model.safetensors"
    return Backbone(spec, created.model, created.preprocess, created.tokenizer, device,
                    chosen if chosen.is_file() else weights[0])  # fmt: skip


def _load_local(spec: BackboneSpec, device: torch.device) -> Backbone:
    arch = _check_arch(spec)
    path = Path(spec.pretrained).expanduser()
    if not path.is_file():
        raise FewshotError(
            f"Backbone {spec.id!r}: checkpoint file {path} does not exist"
            f"{' (it is a folder)' if path.is_dir() else ''}. Pass the path of a weights file "
            f"(.safetensors or a torch state dict), e.g. {arch}:/path/to/weights.safetensors."
        )
    try:
        created = _create(arch, str(path.resolve()), device, tokenizer=False)
    except Exception as exc:
        raise FewshotError(f"Backbone {spec.id!r}: checkpoint file {path} {_problem(exc, arch)}.") from None
    # Some tokenizers (SigLIP, HF text towers) come from the hub: cache first, as for weights.
    tokenizer = _from_hub(spec, "", lambda: _Created(created.model, created.preprocess, _tokenizer(arch)))
    return Backbone(spec, created.model, created.preprocess, tokenizer.tokenizer, device, path.resolve())


def _problem(exc: Exception, arch: str) -> str:
    """Why a local checkpoint did not load, for the error message (torch's advice left out)."""
    if _unsafe_pickle(exc):
        found = re.search(r"GLOBAL (\S+)", str(exc))
        return (
            f"holds objects beyond plain tensors{f' ({found[1]})' if found else ''}; fewshot loads only "
            "weights-only checkpoints (plain state dicts of tensors) or safetensors. If you trust the "
            "file, convert it: load it yourself, save its state_dict with "
            "safetensors.torch.save_file(state_dict, 'weights.safetensors') and pass that file"
        )
    text = _reason(exc)
    if "state_dict" in text or "size mismatch" in text:
        return f"does not fit architecture {arch} ({text})"
    return (
        f"cannot be read as weights ({text}). It may be truncated or corrupt; only safetensors "
        "and plain state dicts loadable with torch.load(weights_only=True) are accepted"
    )


def _tokenizer(name: str) -> Callable[..., torch.Tensor]:
    import open_clip

    return open_clip.get_tokenizer(name, cache_dir=_hub_cache_dir())  # type: ignore[no-any-return]


def _load_pretrained(spec: BackboneSpec, device: torch.device) -> Backbone:
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    arch = _check_arch(spec)
    cfg = _check_tag(spec, arch)
    cache = _hub_cache_dir()
    quick_gelu = bool(cfg.get("quick_gelu", False))
    repo = os.path.split(str(cfg.get("hf_hub", "")))[0]  # "org/name/" or "org/name/file.bin"
    tag = spec.pretrained
    created = _from_hub(
        spec, repo, lambda: _create(arch, tag, device, force_quick_gelu=quick_gelu, cache_dir=cache)
    )
    weights = _cached_path(lambda: download_pretrained(get_pretrained_cfg(arch, tag), cache_dir=cache))
    return Backbone(spec, created.model, created.preprocess, created.tokenizer, device, weights)


def _load_hf_hub(spec: BackboneSpec, device: torch.device) -> Backbone:
    from open_clip.pretrained import download_pretrained_from_hf

    cache = _hub_cache_dir()
    created = _from_hub(spec, spec.pretrained, lambda: _create(spec.id, None, device, cache_dir=cache))
    weights = _cached_path(lambda: download_pretrained_from_hf(spec.pretrained, cache_dir=cache))
    return Backbone(spec, created.model, created.preprocess, created.tokenizer, device, weights)


_LOADERS: dict[str, Callable[[BackboneSpec, torch.device], Backbone]] = {
    "toy": _load_toy,
    "open_clip": _load_pretrained,
    "hf-hub": _load_hf_hub,
    "local": _load_local,
}


def _check_arch(spec: BackboneSpec) -> str:
    import open_clip

    models = open_clip.list_models()
    if spec.arch in models:
        return spec.arch
    folded = {m.lower().replace("/", "-"): m for m in models}
    key = spec.arch.lower().replace("/", "-")
    close = [folded[key]] if key in folded else []
    close += [folded[m] for m in difflib.get_close_matches(key, list(folded), n=5, cutoff=0.6)]
    close = list(dict.fromkeys(close))
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"Unknown open_clip architecture {spec.arch!r} in backbone {spec.id!r}.{hint} "
        "`fewshot list backbones` shows ARCH:TAG ids; any name from open_clip.list_models() works."
    )


def _check_tag(spec: BackboneSpec, arch: str) -> dict[str, Any]:
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg: dict[str, Any] = get_pretrained_cfg(arch, spec.pretrained)
    if cfg:
        return cfg
    tags = list_pretrained_tags_by_model(arch)
    if not tags:
        raise ConfigError(
            f"open_clip has no pretrained weights for {arch} (backbone {spec.id!r}). "
            f"Pass a weights file instead: {arch}:/path/to/weights.safetensors."
        )
    close = difflib.get_close_matches(spec.pretrained, tags, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"Unknown pretrained tag {spec.pretrained!r} for {arch}.{hint} Tags open_clip knows for {arch}: "
        f"{', '.join(tags)}. A local file works too: {arch}:/path/to/weights.safetensors."
    )


# ------------------------------------------------------------------------------------------
# The Hugging Face hub, offline first


def _hub_cache_dir() -> str:
    """The hub cache folder, read from the environment now (not at huggingface_hub import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _user_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(constants.HF_HUB_OFFLINE)


@contextmanager
def _hub_offline() -> Iterator[None]:
    """Make huggingface_hub answer from the local cache only, for the duration."""
    from huggingface_hub import constants

    old, old_disable = constants.HF_HUB_OFFLINE, logging.root.manager.disable
    constants.HF_HUB_OFFLINE = True
    # A cache miss is expected here and reported by us; open_clip would log it as an error.
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old
        logging.disable(old_disable)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe of the hub endpoint, so that an offline machine fails in seconds
    instead of going through huggingface_hub's retries for every candidate file."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # through a proxy a direct probe says nothing; let the download decide
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _from_hub(spec: BackboneSpec, repo: str, create: Callable[[], _Created]) -> _Created:
    """Run ``create`` against the local cache; go online only if that fails and we may."""
    try:
        with _hub_offline():
            return create()
    except Exception as exc:
        cached_error = exc
    if _user_offline() or not _hub_reachable():
        raise FewshotError(_missing_weights_message(spec, repo, "offline", cached_error)) from None
    try:
        return create()
    except Exception as exc:
        raise FewshotError(_missing_weights_message(spec, repo, "download failed", exc)) from None


def _missing_weights_message(spec: BackboneSpec, repo: str, why: str, exc: BaseException) -> str:
    cache = _hub_cache_dir()
    reason = f"could not be fetched ({why}: {_reason(exc)})"
    if spec.source == "local":  # the weights are local; only the tokenizer comes from the hub
        fetch = f"open_clip.get_tokenizer('{spec.arch}')"
        return (
            f"Backbone {spec.id!r}: the tokenizer files of {spec.arch} are not in the local Hugging Face "
            f"cache {cache} and {reason}. To place them: on a machine with internet run "
            f'`python -c "import open_clip; {fetch}"`, then copy its hub cache folder (by default '
            f"~/.cache/huggingface/hub) to {cache}, or point HF_HOME at a copy of it."
        )
    if spec.source == "hf-hub":
        fetch = f"open_clip.create_model('{spec.id}')"
        local = "ARCH:/path/to/open_clip_model.safetensors"
    else:
        fetch = f"open_clip.create_model('{spec.arch}', pretrained='{spec.pretrained}')"
        local = f"{spec.arch}:/path/to/weights.safetensors"
    return (
        f"Backbone {spec.id!r}: its weights (Hugging Face repo {repo}) are not in the local Hugging Face "
        f'cache {cache} and {reason}. To place them: on a machine with internet run `python -c "import '
        f'open_clip; {fetch}"` (or `hf download {repo}`), then copy its hub cache folder (by default '
        f"~/.cache/huggingface/hub) to {cache}, or point HF_HOME at a copy of it; or download the "
        f"weights file and use the backbone id {local}."
    )


def _cached_path(resolve: Callable[[], str]) -> Path | None:
    """The local path of a hub file that is already cached, or None."""
    try:
        with _hub_offline():
            path = resolve()
    except Exception:
        return None
    return Path(path) if path and Path(path).is_file() else None


def _unsafe_pickle(exc: BaseException) -> bool:
    """torch.load(weights_only=True) refused the file: it holds more than tensors.

    torch's message then suggests retrying with weights_only=False, i.e. running the file's
    code; fewshot never quotes it.
    """
    return isinstance(exc, pickle.UnpicklingError) and "weights only load failed" in str(exc).lower()


def _reason(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, shortened: enough to diagnose, no traceback."""
    if _unsafe_pickle(exc):
        return "the checkpoint holds objects beyond plain tensors; fewshot loads only weights-only ones"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."

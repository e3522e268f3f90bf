"""GIST's fine-tuning stage: contrastive training with checkpoint selection, cached and
resumable through the run's :class:`~fewshot.stages.StageCache` (see
:mod:`fewshot.methods.gist` for the method and its deviations).

Stage entries, under one key (everything the fine-tuned weights depend on) plus ``part``:

- ``partial``: written at every checkpoint before the last: the trained weights (the rest
  is the frozen backbone's), Adam's state, the run generator's state, the epochs done, the
  best checkpoint so far (its image tower and probe) and the trace. A fit that finds one
  resumes after it; on a CPU (deterministic kernels) it ends with the weights an
  uninterrupted fit would have.
- ``final``: the kept checkpoint's image tower and probe, its digest and the trace; a fit
  that finds it skips the stage. The partial entry is dropped when the final one is written.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from fewshot.methods._gist import ProbeResult, caption_passes, contrastive_loss, train_probe
from fewshot.methods.base import FitContext

if TYPE_CHECKING:
    from fewshot.methods.gist import GistConfig

__all__ = ["FineTune", "StageResult"]


@dataclass
class StageResult:
    """The kept checkpoint: its image tower and probe, and how it was chosen."""

    visual: nn.Module
    probe: nn.Linear
    digest: str  # SHA-256 of the whole fine-tuned model's state dict at the kept checkpoint
    epoch: int  # epochs of fine-tuning behind it
    probe_epoch: int
    val_accuracy: float
    trace: list[list[float]]  # [epochs, probe val accuracy] of every checkpoint
    trained_params: int
    status: str  # computed | resumed | cached


@dataclass
class _Best:
    epoch: int
    probe: ProbeResult
    visual: dict[str, torch.Tensor]
    digest: str


@dataclass
class FineTune:
    """One fit's fine-tuning stage."""

    config: GistConfig
    ctx: FitContext
    texts: list[list[str]]  # per support row, its training texts (num_captions each)
    key: dict[str, Any]
    trace: list[list[float]] = field(default_factory=list)

    def run(self) -> StageResult:
        """The kept checkpoint: from the stage cache, or trained (resuming a partial run)."""
        stages = self.ctx.stages
        final = stages.load(self._key("final")) if stages is not None else None
        if final is not None:
            return self._restore(final, "cached")
        model = copy.deepcopy(self.ctx.backbone.model).eval()  # GIST trains in eval mode too
        params = self._trainable(model)
        betas = (float(self.config.betas[0]), float(self.config.betas[1]))
        optimizer = torch.optim.Adam(
            params, lr=self.config.lr, betas=betas, eps=self.config.eps, weight_decay=self.config.weight_decay
        )
        start, best, status = 0, None, "computed"
        partial = stages.load(self._key("partial")) if stages is not None else None
        if partial is not None:
            start, best, status = self._resume(partial, model, optimizer), self._best_of(partial), "resumed"
        if self.config.epochs == 0:
            best = self._candidate(model, 0, frozen=True)
        rows = self.ctx.train_images.derive(labels=list(range(len(self.ctx.train_images))))
        total = self.config.epochs
        for step in self.ctx.epochs(total - start, "gist fine-tune"):
            done = start + step + 1
            self._train_epoch(model, optimizer, rows)
            if done % self.config.checkpoint_every and done != total:
                continue
            found = self._candidate(model, done)
            if best is None or found.probe.val_accuracy > best.probe.val_accuracy:  # earliest on a tie
                best = found
            if stages is not None and done < total:
                stages.save(self._key("partial"), self._partial(model, optimizer, done, best))
        assert best is not None
        entry = self._final(best, sum(p.numel() for p in params))
        if stages is not None:
            stages.save(self._key("final"), entry)
            stages.drop(self._key("partial"))
        return self._restore(entry, status)

    def _key(self, part: str) -> dict[str, Any]:
        return {**self.key, "part": part}

    def _trainable(self, model: nn.Module) -> list[nn.Parameter]:
        """Set requires_grad on the trained part: the towers ``trainable`` names (``all``: both
        and the logit scale), each whole, or its last ``trainable_blocks`` transformer blocks
        with its final layer norm and projection."""
        model.requires_grad_(False)
        towers = ("image", "text") if self.config.trainable == "all" else (self.config.trainable,)
        for tower in towers:
            for part in _tower_parts(model, tower, self.config.trainable_blocks):
                part.requires_grad_(True)
        if self.config.trainable == "all":
            cast(nn.Parameter, model.logit_scale).requires_grad_(True)
        return [p for p in model.parameters() if p.requires_grad]

    def _train_epoch(self, model: nn.Module, optimizer: torch.optim.Optimizer, rows: Any) -> None:
        """``num_captions`` passes over the shuffled support set, pass p pairing each image
        with a different one of its captions."""
        from fewshot.prompting import encode_tokens

        ctx, cfg = self.ctx, self.config
        plan = caption_passes([len(t) for t in self.texts], cfg.num_captions, ctx.generator)
        for chosen in plan:
            loader = rows.loader(cfg.batch_size, augment=True, shuffle=True, generator=ctx.generator)
            for images, index in loader:
                idx = index.tolist()
                texts = [self.texts[i][chosen[i]] for i in idx]
                tokens = ctx.backbone.tokenize(texts).to(ctx.device)
                groups = [ctx.train.ids[i] for i in idx] if cfg.mask_same_image else None
                with ctx.autocast():
                    image = model.encode_image(images.to(ctx.device))  # type: ignore[operator]
                    text = encode_tokens(model, tokens)
                    scale = model.logit_scale.exp()  # type: ignore[operator]
                loss = contrastive_loss(image, text, scale, groups, texts if cfg.mask_same_image else None)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()

    def _candidate(self, model: nn.Module, done: int, frozen: bool = False) -> _Best:
        """The probe on this checkpoint's features (the cached frozen ones before training)."""
        from fewshot.backbones import state_dict_digest

        ctx, cfg = self.ctx, self.config
        if frozen:
            train = (ctx.train.features.to(ctx.device), ctx.train.labels.to(ctx.device))
            val = (ctx.val.features.to(ctx.device), ctx.val.labels.to(ctx.device))
        else:
            train, val = self._features(model, ctx.train_images), self._features(model, ctx.val_images)
        probe = train_probe(
            train,
            val,
            len(ctx.classnames),
            lr=cfg.probe_lr,
            epochs=cfg.probe_epochs,
            batch_size=cfg.probe_batch_size,
            generator=ctx.generator,
        )
        self.trace.append([done, round(probe.val_accuracy, 4)])
        visual = {k: v.detach().cpu().clone() for k, v in model.visual.state_dict().items()}  # type: ignore[union-attr]
        return _Best(done, probe, visual, state_dict_digest(model))

    def _features(self, model: nn.Module, images: Any) -> tuple[torch.Tensor, torch.Tensor]:
        rows, labels = [], []
        with torch.no_grad(), self.ctx.autocast():
            for batch, label in images.loader(64, augment=False, shuffle=False):
                rows.append(model.encode_image(batch.to(self.ctx.device)).float())  # type: ignore[operator]
                labels.append(label.to(self.ctx.device))
        return torch.cat(rows), torch.cat(labels)

    # -- stage entries -------------------------------------------------------------------

    def _partial(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, done: int, best: _Best
    ) -> dict[str, Any]:
        trained = {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}
        return {
            "epoch": done,
            "model": trained,  # the rest is the frozen backbone's
            "optimizer": optimizer.state_dict(),
            "generator": self.ctx.generator.get_state(),
            "best": self._best_entry(best),
            "trace": self.trace,
        }

    def _resume(self, partial: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
        missing = set(partial["model"]) - {name for name, p in model.named_parameters() if p.requires_grad}
        if missing:  # cannot happen for one key (the settings are in it); never load a mismatch
            raise RuntimeError(
                f"gist: a partial stage entry holds parameters not trained here: {sorted(missing)[:3]}"
            )
        model.load_state_dict(partial["model"], strict=False)
        optimizer.load_state_dict(partial["optimizer"])
        self.ctx.generator.set_state(partial["generator"])
        self.trace = [list(row) for row in partial["trace"]]
        return int(partial["epoch"])

    @staticmethod
    def _best_entry(best: _Best) -> dict[str, Any]:
        return {
            "epoch": best.epoch,
            "probe": best.probe.state,
            "probe_epoch": best.probe.epoch,
            "val_accuracy": best.probe.val_accuracy,
            "visual": best.visual,
            "digest": best.digest,
        }

    @staticmethod
    def _best_of(entry: dict[str, Any]) -> _Best:
        best = entry["best"]
        probe = ProbeResult(best["probe"], int(best["probe_epoch"]), float(best["val_accuracy"]))
        return _Best(int(best["epoch"]), probe, best["visual"], str(best["digest"]))

    def _final(self, best: _Best, trained: int) -> dict[str, Any]:
        return {"best": self._best_entry(best), "trace": self.trace, "trained": trained}

    def _restore(self, entry: dict[str, Any], status: str) -> StageResult:
        best = self._best_of(entry)
        ctx = self.ctx
        visual = copy.deepcopy(cast(nn.Module, ctx.backbone.model.visual))
        visual.load_state_dict(best.visual)
        visual.requires_grad_(False).eval()
        weight = best.probe.state["weight"]
        probe = nn.Linear(weight.shape[1], weight.shape[0]).to(ctx.device)
        probe.load_state_dict(best.probe.state)
        probe.requires_grad_(False)
        return StageResult(
            visual=visual,
            probe=probe,
            digest=best.digest,
            epoch=best.epoch,
            probe_epoch=best.probe.epoch,
            val_accuracy=best.probe.val_accuracy,
            trace=[list(row) for row in entry["trace"]],
            trained_params=int(entry["trained"]),
            status=status,
        )


def _tower_parts(model: nn.Module, tower: str, blocks: int) -> list[nn.Module | nn.Parameter]:
    """The modules and parameters of one tower of an open_clip model that train: the whole
    tower (``blocks`` 0), or its last ``blocks`` transformer blocks, final norm and projection."""
    from fewshot.types import ConfigError

    if tower == "image":
        root: nn.Module = cast(nn.Module, model.visual)
        heads = ("ln_post", "proj")
    else:
        root, heads = model, ("ln_final", "text_projection")
    if blocks == 0:
        if tower == "image":
            return [root]
        return [child for name, child in model.named_children() if name != "visual"] + [
            p for name, p in model.named_parameters(recurse=False) if name != "logit_scale"
        ]
    resblocks = getattr(getattr(root, "transformer", None), "resblocks", None)
    if not isinstance(resblocks, nn.ModuleList):
        raise ConfigError(
            f"gist trainable_blocks needs a transformer {tower} tower (open_clip's resblocks); "
            "use trainable_blocks=0 to train the whole tower."
        )
    found = [getattr(root, name, None) for name in heads]
    return [*list(resblocks)[-blocks:], *(h for h in found if isinstance(h, (nn.Module, nn.Parameter)))]

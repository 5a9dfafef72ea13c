"""The public selection API: any registered selector inside any PyTorch training loop.

    from saln_exp import selection

    sel = selection.make("topk_loss", filter_ratio=0.5)   # options: conf/selector/topk_loss.yaml
    for x, y, index in loader:                            # index: dataset indices
        kept = sel.select(model, x, y, index)
        if not kept:                                      # a staging selector has no full batch yet
            continue
        losses = F.cross_entropy(model(kept.x), kept.y, reduction="none")
        (losses * kept.weights).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        sel.update(kept.index, losses)                    # a no-op for selectors that learn nothing

A thin layer over the selector contract (selectors/base.py), with no selection rule of its own:
`select` builds the candidate `Batch` and its lazy `BatchView`, calls `Selector.select`, stages
the kept samples in the `Accumulator` where the selector accumulates, and hands each process its
share of the step; `update` feeds `observe_training_losses`; `sampler` turns `epoch_positions`
into a `torch.utils.data.Sampler`. The user's page is docs/own-loop.md.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.utils.data import Dataset, Sampler

from saln_exp import PROJECT_ROOT, distributed, rng
from saln_exp.data.base import DataBundle, Split
from saln_exp.errors import ConfigError
from saln_exp.features import FeatureStore
from saln_exp.fit import train_epochs
from saln_exp.optim import build_optimizer
from saln_exp.reference import ReferenceLosses
from saln_exp.selectors import (
    SELECTORS,
    Batch,
    BatchView,
    RunContext,
    Selection,
    Selector,
    ViewSources,
)
from saln_exp.selectors.accumulate import Accumulator

CONF = PROJECT_ROOT / "conf"
# keywords of `make` that are not the selector's YAML keys (some only where they apply)
API_OPTIONS = ("batch_size", "head", "autocast")
# `pretrained_features=` this: the features are extracted by `prepare(ctx)` with the selector's
# `backbone` options, as saln-train does
FROM_BACKBONE = "backbone"


# -- building --------------------------------------------------------------------------------------
def available() -> list[str]:
    """Every name `make` takes: the registered selectors and the paper variants in conf/selector/
    (e.g. `saln_paper`, `accuracy_epoch_batch`)."""
    return sorted({path.stem for path in (CONF / "selector").glob("*.yaml")} | set(SELECTORS))


def make(name: str, **options: Any) -> BatchSelector:
    """The selector `name` as `saln-train selector=<name>` runs it: the defaults of
    conf/selector/<name>.yaml (and config.yaml's common `selector:` keys), overridden by `options`.

    Besides the YAML keys: `reference=` (rho, jest) an `nn.Module` or a callable
    `index -> losses`; `pretrained_features=` (saln with `features="pretrained"`) a tensor of
    features by dataset index or a callable `index -> features`; `head=` the `nn.Linear` whose
    input is the learner's penultimate features (only where the model makes that ambiguous);
    `batch_size=` the optimizer step's size for staging selectors (default: the size of the
    first candidate batch); `autocast=` a context-manager factory the learner's scoring forward
    runs under (the runner's mixed precision). Unknown names and options raise one ValueError
    naming the closest.

    The runner's forms, built by `prepare(ctx)` before training: `reference=` a dict, the
    YAML's `reference:` recipe (the reference model is trained or loaded from it), and
    `pretrained_features="backbone"` (extracted with the `backbone` options)."""
    if name not in available():
        raise ValueError(_unknown(f"no selector {name!r}", name, available()))
    settings = defaults(name)
    cls = SELECTORS[settings.pop("name")]
    accepted = _constructor_options(cls)
    valid = (
        accepted | set(API_OPTIONS) | ({"pretrained_features"} if "features" in accepted else set())
    )
    for key in options:
        if key not in valid:
            raise ValueError(_unknown(f"selector {name!r} has no option {key!r}", key, valid))
    settings.update(options)
    reference = settings.pop("reference", None) if "reference" in accepted else None
    pretrained = settings.pop("pretrained_features", None)
    batch_size, head = settings.pop("batch_size", None), settings.pop("head", None)
    autocast = settings.pop("autocast", None) or nullcontext
    recipes: list[str] = []  # the runner's forms: what prepare(ctx) builds
    if isinstance(reference, Mapping) and "reference" in options:
        settings["reference"] = dict(reference)
        recipes.append("reference")
    if pretrained == FROM_BACKBONE and settings.get("features") == "pretrained":
        recipes.append("pretrained_features")
    try:
        selector = cls(**settings)
    except ConfigError as err:
        raise ValueError(str(err)) from None
    sources = ViewSources()
    if "reference" in accepted and "reference" not in recipes:
        sources.reference_losses = _reference_losses(name, reference)
    if "pretrained_features" not in recipes:
        sources.pretrained_features = _pretrained_features(
            name, settings.get("features"), pretrained
        )
    seed = int(settings.get("seed", 0))
    return BatchSelector(name, selector, sources, batch_size, head, seed, autocast, recipes)


def defaults(name: str) -> dict[str, Any]:
    """The options `make(name)` starts from, `name` (the registered selector) included:
    config.yaml's common `selector:` keys, then the file's defaults chain, then the file."""
    common = yaml.safe_load((CONF / "config.yaml").read_text())["selector"]
    return {**common, **_selector_file(name)} if (CONF / "selector" / f"{name}.yaml").exists() \
        else {**common, "name": name}  # fmt: skip


def _selector_file(name: str) -> dict[str, Any]:
    """One conf/selector/ file with the files its `defaults:` list names (same group, Hydra's
    order: `_self_` where listed, else last)."""
    raw = yaml.safe_load((CONF / "selector" / f"{name}.yaml").read_text()) or {}
    order = list(raw.pop("defaults", []))
    if "_self_" not in order:
        order.append("_self_")
    merged: dict[str, Any] = {}
    for entry in order:
        if entry == "_self_":
            merged.update(raw)
        elif isinstance(entry, str):
            merged.update(_selector_file(entry))
        else:  # no file in conf/selector/ does this; say so rather than guess Hydra's meaning
            raise ValueError(f"conf/selector/{name}.yaml: unsupported defaults entry {entry!r}")
    return merged


def _constructor_options(cls: type[Selector]) -> set[str]:
    """The keywords the selector's constructors take, down to `Selector`'s common ones: exactly
    the keys of its YAML (extending.md: the options in the YAML arrive as constructor keywords)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}  # fmt: skip
        if klass is Selector:
            break
    return names


def _unknown(what: str, given: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(given, sorted(valid), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"one of {sorted(valid)}"
    return f"{what}; {hint}"


def _reference_losses(name: str, reference: Any) -> Callable[[Batch], Tensor]:
    """rho and jest score against a reference model: its per-sample losses on the candidates."""
    if isinstance(reference, nn.Module):  # the runner's own lookup, as for augmented batches
        return ReferenceLosses(reference.eval(), None, None, nullcontext)
    if callable(reference):
        return lambda batch: torch.as_tensor(reference(batch.index)).float().to(batch.y.device)
    raise ValueError(
        f"selector {name!r} scores samples against a reference model: pass reference= an "
        "nn.Module or a callable index -> losses (selection.train_reference trains one)"
    )


def _pretrained_features(name: str, features: Any, given: Any) -> Callable[[Tensor], Tensor] | None:
    if features != "pretrained":
        if given is not None:
            raise ValueError(f"pretrained_features= is used by selector {name!r} only with features='pretrained'")  # fmt: skip
        return None
    if isinstance(given, Tensor):
        return FeatureStore(given)
    if callable(given):
        return given
    raise ValueError(
        f"selector {name!r} with features='pretrained' needs pretrained_features= a tensor of "
        "features by dataset index or a callable index -> features"
    )


# -- the kept samples --------------------------------------------------------------------------------
@dataclass
class Kept:
    """What one `select` call gives the training step.

    `x`, `y`, `index`, `weights` are aligned: this process's samples of the step, and the weight
    of each one's loss (ones where the selector has none). Without staging they are
    `x[positions]`, `y[positions]`, `index[positions]`. `positions` are the positions in this call's
    candidate batch that the selector kept (under DDP without staging: this rank's share of them).
    A staging selector (`accumulate: true`) trains on samples of earlier batches too: its `x` is
    the staged batch, empty until a full one is ready, and `positions` say what this batch added."""

    positions: Tensor
    weights: Tensor
    x: Tensor
    y: Tensor
    index: Tensor
    step_size: int  # samples of the whole step, over every process; 0: no step this call
    weighted: bool  # False: every weight is exactly 1 (the plain mean is the same loss)
    selection: Selection  # the selector's own answer over `candidates` (diagnostics, fallback)
    candidates: Batch  # what the selector chose from (this rank's share with scope="local")
    view: BatchView  # the candidates' lazily computed learner outputs

    def __len__(self) -> int:
        return len(self.y)

    def __bool__(self) -> bool:
        """Whether a step is due now. The same on every process: a rank with nothing in a step
        the others train still steps (DDP waits for every rank's gradient)."""
        return self.step_size > 0

    @property
    def diagnostics(self) -> dict[str, float]:
        return self.selection.diagnostics


# -- the selector in a loop --------------------------------------------------------------------------
class BatchSelector:
    """A selector with what a training loop needs around it: staging, the processes' shares, the
    training losses it learns from, and the epoch's sampler. Built by `make`."""

    def __init__(
        self,
        name: str,
        selector: Selector,
        sources: ViewSources,
        batch_size: int | None,
        head: nn.Module | None,
        seed: int,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        recipes: Iterable[str] = (),
    ):
        self.name = name
        self.selector = selector
        self.sources = sources
        self.batch_size = None if batch_size is None else int(batch_size)
        self.head = head
        self.autocast = autocast
        self.recipes = tuple(recipes)  # sources `prepare` has still to build
        self.accumulator: Accumulator | None = None
        self._last: tuple[Selection, Batch, BatchView] | None = None  # of the last `select`
        self.epochs_started = 0
        self.order_generator = rng.generator(seed, "epoch_order")  # the runner's epoch order

    # what differs between selectors, as the loop sees it
    @property
    def stages(self) -> bool:
        """Kept samples pile up across candidate batches until a step's worth is ready."""
        return self.selector.accumulate

    @property
    def learns_from_steps(self) -> bool:
        """`update` feeds the selector (InfoBatch's scores); elsewhere it does nothing."""
        return self.selector.wants_training_losses

    @property
    def epoch_level(self) -> bool:
        """The selector chooses each epoch's samples: iterate the data with `sampler(...)`."""
        return type(self.selector).epoch_positions is not Selector.epoch_positions

    @property
    def per_rank(self) -> bool:
        """Under DDP with scope="local": each rank chose within its own share of the batch."""
        return self.selector.scope == "local" and distributed.adopt_process_group().active

    @property
    def overflow(self) -> int:
        """Kept samples a staging selector discarded so far because the staged batch was full."""
        return 0 if self.accumulator is None else self.accumulator.overflow

    @property
    def staged(self) -> int:
        """Kept samples a staging selector holds for its next step."""
        return 0 if self.accumulator is None else self.accumulator.count

    def prepare(self, ctx: RunContext) -> None:
        """The one-time work before training that saln-train does (a loop of your own needs it
        only where it gave `make` the runner's forms): the selector's `prepare`, which trains or
        loads the reference model of a `reference={...}` recipe, extracts
        `pretrained_features="backbone"` and makes the device's choices (SALN's solver). The
        sources given to `make` stay as they were."""
        prepared = self.selector.prepare(ctx)
        given = self.sources
        self.sources = ViewSources(
            pretrained_features=given.pretrained_features
            if given.pretrained_features is not None
            else prepared.pretrained_features,
            reference_losses=given.reference_losses
            if given.reference_losses is not None
            else prepared.reference_losses,
        )
        self.recipes = ()

    def select(self, model: nn.Module, x: Tensor, y: Tensor, index: Tensor) -> Kept:
        """Choose from the candidate batch (x, y) whose dataset indices are `index`.

        `model` is scored in eval mode under `torch.inference_mode` (its train/eval mode is
        restored). Under DDP every rank passes the same candidate batch (the same seeded sampler
        on every rank) and receives its share of the step; `scope` decides who selects what."""
        world = distributed.adopt_process_group()
        self._require_epoch()
        if self.recipes:
            raise ValueError(
                f"selector {self.name!r} was given the runner's form of {' and '.join(self.recipes)}: "
                "call sel.prepare(ctx) before select, or pass what make()'s docstring names"
            )
        batch = Batch(torch.as_tensor(index).to(y.device), x, y)
        learner = _Learner.of(model, self.head, self.name)
        if world.active:
            _check_same_batch(batch)
            if self.selector.scope == "local":
                return self._select_local(batch, learner)
        view = _View(batch, learner, self.sources, self.autocast, shard=True)
        selection = self.selector.select(batch, view, accumulating=self.stages)
        kept = batch if len(selection.positions) == len(batch) else batch.take(selection.positions)
        if selection.weights is not None:
            kept = Batch(kept.index, kept.x, kept.y, selection.weights)
        positions = selection.positions
        self._last = (selection, batch, view)
        step = self._stage(kept, len(batch)) if self.stages else kept
        if step is None:
            return self._kept(positions, batch.take(positions[:0]), 0, selection, batch, view)
        return self._share(step, positions, selection, batch, view)

    def next_step(self, epoch_end: bool = False, run_end: bool = False) -> Kept:
        """After `select`, another step a staging selector has ready: carried samples that fill
        a further step, and with `epoch_end` / `run_end` (that `select` was the epoch's / the
        run's last candidate batch) what is staged then, as the runner trains it
        (selectors.md, "Accumulation"). Falsy when there is none: call it until then. Always
        falsy for selectors that do not stage."""
        if self._last is None:
            raise ValueError("next_step() follows a select() call")
        selection, candidates, view = self._last
        step = None
        if self.accumulator is not None:
            step = self.accumulator.ready(epoch_end=epoch_end, run_end=run_end)
        none = selection.positions[:0]  # this candidate batch added nothing to these steps
        if step is None:
            return self._kept(none, candidates.take(none), 0, selection, candidates, view)
        return self._share(step, none, selection, candidates, view)

    def _share(self, step: Batch, positions: Tensor, selection, candidates, view) -> Kept:
        """The step's Kept; under DDP every rank trains its contiguous share of the step."""
        world, total = distributed.WORLD, len(step)
        if world.active:
            share = world.share(total)
            step = step.take(torch.arange(total, device=step.y.device)[share])
            positions = positions if self.stages else positions[share]
        return self._kept(positions, step, total, selection, candidates, view)

    def _select_local(self, batch: Batch, learner: nn.Module) -> Kept:
        """scope="local": this rank selects within its share and trains what it kept."""
        if self.stages:
            raise ValueError(
                f"selector {self.name!r} stages samples (accumulate=True) and scope='local' would "
                "make ranks step at different times; use scope='global'"
            )
        share = distributed.WORLD.share(len(batch))
        mine = batch.take(torch.arange(len(batch), device=batch.y.device)[share])
        view = _View(mine, learner, self.sources, self.autocast)
        selection = self.selector.select(mine, view, accumulating=False)
        self._last = (selection, mine, view)
        step = mine.take(selection.positions)
        if selection.weights is not None:
            step = Batch(step.index, step.x, step.y, selection.weights)
        count = torch.tensor([len(step)], dtype=torch.float64, device=batch.y.device)
        total = int(distributed.all_reduce_sum(count).item())
        return self._kept(selection.positions + share.start, step, total, selection, mine, view)

    def _stage(self, kept: Batch, n_candidates: int) -> Batch | None:
        if self.accumulator is None:  # the runner's step size: the batch size of its loader
            self.accumulator = self._accumulator(self.batch_size or n_candidates)
        self.accumulator.add(kept)
        return self.accumulator.ready()  # one step; `next_step` gives any other

    def _accumulator(self, size: int) -> Accumulator:
        return Accumulator(size, self.selector.overflow_rule)

    @staticmethod
    def _kept(positions, step: Batch, total, selection, candidates, view) -> Kept:
        """One process minimises mean_k(w_k l_k) over the K samples of a step; DDP averages the
        ranks' gradients, so rank r, with k_r of them, weighs its mean by W k_r / K: the same
        gradient whatever the shares (a factor of exactly 1 in one process)."""
        world = distributed.WORLD
        factor = world.size * len(step) / total if total else 1.0
        weights = step.w if step.w is not None else torch.ones(len(step), device=step.y.device)
        weighted = step.w is not None or factor != 1.0
        if factor != 1.0:
            weights = weights * factor
        return Kept(positions, weights, step.x, step.y, step.index, total, weighted,
                    selection, candidates, view)  # fmt: skip

    def update(self, index: Tensor, losses: Tensor) -> None:
        """After a step: the per-sample training losses of the samples it trained (`kept.index`),
        for selectors that learn from them (`learns_from_steps`, e.g. InfoBatch's scores). A no-op
        for the others, so a loop may call it for every selector. Under DDP call it on every
        rank: the ranks' losses are gathered, so every rank's selector holds the same state."""
        if not self.learns_from_steps:
            return
        self._require_epoch()
        losses = losses.detach().float()
        index = torch.as_tensor(index).to(losses.device)
        if distributed.adopt_process_group().active:  # rows of (loss, index), in rank order
            rows = distributed.all_gather_cat(torch.stack([losses.double(), index.double()], 1))
            losses, index = rows[:, 0].float(), rows[:, 1].long()
        self.selector.observe_training_losses(index, losses)

    # -- epochs ----------------------------------------------------------------------------------
    def sampler(
        self,
        size: int,
        epochs: int | None = None,
        model: nn.Module | None = None,
        eval_loader: Iterable | None = None,
    ) -> EpochSampler:
        """A `torch.utils.data.Sampler` over dataset indices 0..size-1: each epoch, the
        selector's epoch positions (all of them for a per-batch selector) in a seeded random
        order. `epochs` (InfoBatch's annealing), `model` and `eval_loader` (ASSIST's epochwise
        filter classifies the training set, un-augmented, yielding x, y, index) where the
        selector needs them; a missing one is named when first needed."""
        return EpochSampler(self, int(size), epochs, model, eval_loader)

    def start_epoch(self, ctx: RunContext) -> Tensor | None:
        """The epoch's training positions (None: all), once per epoch before its batches."""
        self.selector.start_epoch()
        positions = self.selector.epoch_positions(ctx)
        self.epochs_started += 1
        return positions

    def _require_epoch(self) -> None:
        if self.epoch_level and self.epochs_started == 0:
            raise ValueError(
                f"selector {self.name!r} chooses whole epochs: iterate the training data with "
                "DataLoader(..., sampler=sel.sampler(len(dataset), ...))"
            )

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "selector": self.selector.state_dict(),
            "accumulator": None if self.accumulator is None else self.accumulator.state_dict(),
            "accumulator_size": None if self.accumulator is None else self.accumulator.batch_size,
            "epochs_started": self.epochs_started,
            "order": self.order_generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.selector.load_state_dict(state["selector"])
        if state["accumulator"] is not None:
            self.accumulator = self._accumulator(state["accumulator_size"])
            self.accumulator.load_state_dict(state["accumulator"], torch.device(device))
        self.epochs_started = int(state["epochs_started"])
        self.order_generator.set_state(state["order"])


class EpochSampler(Sampler[int]):
    """Dataset indices for one epoch at a time, drawn when the epoch starts (its first `len` or
    `iter`) and kept until its iteration ends, so `len(loader)` matches the epoch it describes."""

    def __init__(self, selector: BatchSelector, size: int, epochs, model, eval_loader):
        self.selector = selector
        self.size = size
        self.epochs = epochs
        self.model = model
        self.eval_loader = eval_loader
        self._positions: Tensor | None = None

    def _draw(self) -> Tensor:
        if self._positions is None:
            positions = self.selector.start_epoch(self._context())
            self._positions = torch.arange(self.size) if positions is None else positions.cpu()
        return self._positions

    def __len__(self) -> int:
        return len(self._draw())

    def __iter__(self) -> Iterator[int]:
        positions = self._draw()
        order = positions[torch.randperm(len(positions), generator=self.selector.order_generator)]
        try:
            yield from order.tolist()
        finally:  # the epoch is over: the next len() or iter() draws the next one
            self._positions = None

    def _context(self) -> RunContext:
        """The runner's context for `epoch_positions`, from the loop's plain values: the training
        split is the dataset (positions = dataset indices); labels come with the predictions."""
        model = _unwrap(self.model) if self.model is not None else None
        device = next(model.parameters()).device if model is not None else torch.device("cpu")
        train = Split(torch.empty(0), torch.full((self.size,), -1, device=device),
                      torch.arange(self.size, device=device))  # fmt: skip
        data = DataBundle("own_loop", train, None, train, 0, None, torch.zeros(self.size, dtype=torch.bool))  # type: ignore[arg-type]  # fmt: skip
        return RunContext(
            data=data, model=model, device=device, cache_dir="", run_dir="",
            train_outputs=_LoaderOutputs(self.selector.name, self.eval_loader),  # type: ignore[arg-type]
            epochs=self.epochs,
            eval_batch_size=0,  # the eval loader has its own batch size
        )  # fmt: skip


class _LoaderOutputs:
    """The training set's eval-mode (losses, predictions, logits) by dataset index, from the
    user's un-augmented loader; `SplitOutputs.get`'s signature, so epochwise filtering runs its
    own code. The labels land in the split's targets, which the selector compares them with."""

    def __init__(self, name: str, loader: Iterable | None):
        self.name, self.loader = name, loader

    @torch.inference_mode()
    def get(self, model, split: Split, pipeline, batch_size) -> tuple[Tensor, Tensor, Tensor]:
        if self.loader is None or model is None:
            raise ValueError(
                f"selector {self.name!r} classifies the training set at each epoch start: pass "
                "sampler(..., model=model, eval_loader=...) (the training data without "
                "augmentation, yielding x, y, index)"
            )
        device = split.targets.device
        was_training = model.training
        model.eval()
        parts = [(model(x.to(device)).float(), y.to(device), torch.as_tensor(i).to(device))
                 for x, y, i in self.loader]  # fmt: skip
        model.train(was_training)
        logits = torch.cat([p[0] for p in parts])
        labels, index = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
        if len(torch.unique(index)) != len(split):
            raise ValueError(
                f"eval_loader covered {len(torch.unique(index))} of the {len(split)} samples"
            )
        split.targets[index] = labels
        by_index = torch.empty_like(logits)
        by_index[index] = logits
        losses = F.cross_entropy(by_index, split.targets, reduction="none")
        return losses, by_index.argmax(1), by_index


# -- the learner's outputs for any classifier ------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    """Selection scores the module itself, never through DistributedDataParallel."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class _Learner(nn.Module):
    """`forward_features` / `classifier` (what `BatchView` reads) for a classifier without them:
    the logits are the model's output, the penultimate features the input of its head, the
    `nn.Linear` whose output the model returns (found with forward hooks), or `head=`."""

    def __init__(self, model: nn.Module, head: nn.Module | None, name: str):
        super().__init__()
        self.model, self.head, self.name = model, head, name
        self.train(model.training)  # BatchView restores the mode it found
        self.problem: str | None = None
        self._logits: Tensor | None = None

    @staticmethod
    def of(model: nn.Module, head: nn.Module | None, name: str) -> nn.Module:
        model = _unwrap(model)
        if head is None and hasattr(model, "forward_features") and hasattr(model, "classifier"):
            return model  # saln_exp.models: exactly what the runner's view uses
        return _Learner(model, head, name)

    def forward_features(self, x: Tensor) -> Tensor:
        heads = [self.head] if self.head is not None else [
            m for m in self.model.modules() if isinstance(m, nn.Linear)]  # fmt: skip
        calls: list[tuple[tuple, Any]] = []
        hooks = [m.register_forward_hook(lambda _m, i, o: calls.append((i, o))) for m in heads]
        try:
            self._logits = logits = self.model(x)
        finally:
            for hook in hooks:
                hook.remove()
        self.problem = self._why_not(calls, logits)
        return logits if self.problem else calls[-1][0][0]

    def _why_not(self, calls: list, logits: Any) -> str | None:
        kind = type(self.model).__name__
        if not calls:
            return f"{kind} calls no nn.Linear" if self.head is None else "head= was not called"
        if self.head is None and calls[-1][1] is not logits:
            return f"{kind}'s output is not the output of its last nn.Linear"
        return None

    def classifier(self, features: Tensor) -> Tensor:
        return self._logits

    def explain(self) -> str:
        return (
            f"selector {self.name!r} needs the learner's penultimate features and {self.problem}: "
            "pass head= the nn.Linear whose input they are (selection.make(..., head=model.fc)), "
            "or give the model forward_features(x) and a classifier module (saln_exp.models)"
        )


class _View(BatchView):
    def features(self, source: str) -> Tensor:
        if source == "learner" and isinstance(self.model, _Learner):
            _ = self.logits  # the forward finds the head
            if self.model.problem:
                raise ValueError(self.model.explain())
        return super().features(source)


def _check_same_batch(batch: Batch) -> None:
    """Every rank must pass the same candidate batch (global selection gathers the shares'
    scores; local takes each rank's share): a cheap fingerprint, compared across ranks."""
    n = len(batch)
    rank_of = torch.arange(1, n + 1, device=batch.index.device)
    facts = torch.stack([
        torch.tensor(float(n), dtype=torch.float64, device=batch.y.device),
        batch.index.sum().double().to(batch.y.device),
        (batch.index * rank_of).sum().double().to(batch.y.device),
        batch.y.sum().double(),
        batch.x.sum(dtype=torch.float64).to(batch.y.device),
    ]).view(1, -1)  # fmt: skip
    every = distributed.all_gather_cat(facts, [1] * distributed.WORLD.size)
    if not torch.equal(every, facts.expand_as(every)):
        raise ValueError(
            "under DDP every rank passes the same candidate batch to select() (a loader with the "
            "same seeded sampler on every rank, not a DistributedSampler); docs/own-loop.md"
        )


# -- helpers for a loop ------------------------------------------------------------------------------
class Indexed(Dataset):
    """A dataset of (x, y) as (x, y, index): the dataset index stateful selectors key on."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple:
        return (*self.dataset[i], i)


def train_reference(
    model: nn.Module,
    loader: Iterable,
    epochs: int = 10,
    optimizer: torch.optim.Optimizer | None = None,
    seed: int = 0,
) -> nn.Module:
    """Train a reference ("irreducible loss") model for rho and jest on held-out data, as the
    runner trains its own (saln_exp/reference.py): plain mini-batch training on the mean
    cross-entropy of the loader's (x, y[, index]) batches, `epochs` passes, with torch's, numpy's
    and python's global random streams seeded from `seed` inside and restored after, so the
    learner's initialisation is untouched. The optimizer defaults to conf/optimizer/sgd.yaml's.
    Returns the model in eval mode: pass it as `make(..., reference=model)`."""
    device = next(model.parameters()).device
    if optimizer is None:
        recipe = yaml.safe_load((CONF / "optimizer" / "sgd.yaml").read_text())
        optimizer = build_optimizer(recipe, model.parameters())

    def epoch_batches(epoch: int) -> Iterator[tuple[None, Tensor, Tensor]]:
        for x, y, *_ in loader:
            yield None, x.to(device), y.to(device)

    with rng.isolated(rng.stream_seed(seed, "reference_fit"), device):
        train_epochs(model, optimizer, epochs, epoch_batches, desc="reference model",
                     lr_key="the reference model's optimizer lr")  # fmt: skip
    return model.eval()

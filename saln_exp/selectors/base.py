"""The selector contract: a candidate batch and a lazy view of it in, kept positions out.

A selector never trains, logs or touches the optimizer. It reads what it needs from the
`BatchView` (each quantity computed at most once per batch, and only when asked), returns the
positions to train on and a dict of numbers worth logging. The trainer does the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saln_exp import distributed, rng
from saln_exp.errors import ConfigError
from saln_exp.metrics import SplitOutputs
from saln_exp.registry import Registry

if TYPE_CHECKING:
    from saln_exp.data.base import DataBundle
    from saln_exp.fit import Recipe

FEATURE_SOURCES = ("pixels", "learner", "pretrained")
SCOPES = ("global", "local")
# with accumulation, kept samples beyond a full batch wait for the next step (carry) or are
# dropped (discard, ASSIST Alg. 10); accumulate.py
OVERFLOW_RULES = ("carry", "discard")


@dataclass
class Batch:
    """A candidate batch: dataset indices, model inputs (augmented, normalised), labels, and
    optionally per-sample loss weights (None: every sample weighs 1)."""

    index: Tensor
    x: Tensor
    y: Tensor
    w: Tensor | None = None

    def __len__(self) -> int:
        return len(self.y)

    def take(self, positions: Tensor) -> Batch:
        w = None if self.w is None else self.w[positions]
        return Batch(self.index[positions], self.x[positions], self.y[positions], w)


@dataclass
class Selection:
    positions: Tensor  # positions in the candidate batch to train on: unique, sorted
    diagnostics: dict[str, float] = field(default_factory=dict)
    fallback: bool = False  # too few kept, a uniform draw replaced them (never when accumulating)
    # per kept sample (aligned with positions): the training loss is mean(w_i * loss_i) over the
    # kept samples (importance weights, InfoBatch's 1 / (1 - r)); None: the plain mean
    weights: Tensor | None = None


@dataclass
class ViewSources:
    """What a selector's `prepare` adds to every view: lookups keyed by dataset index."""

    pretrained_features: Callable[[Tensor], Tensor] | None = None
    reference_losses: Callable[[Batch], Tensor] | None = None


class BatchView:
    """Lazily computed facts about one candidate batch.

    Learner outputs come from one inference-mode forward in eval mode (no dropout noise, no
    batch-norm statistics updated by looking); logits and penultimate features share it.
    `computed` counts each computation so tests can check "at most once".
    """

    def __init__(
        self,
        batch: Batch,
        model: nn.Module,
        sources: ViewSources | None = None,
        autocast: Callable[[], AbstractContextManager] = nullcontext,
        shard: bool = False,
    ):
        self.batch = batch
        self.model = model
        self.sources = sources or ViewSources()
        self.autocast = autocast
        # several processes (saln_exp.distributed): each computes the learner outputs of its
        # share of the batch and all of them are gathered, so the view holds the whole batch's
        self.shard = shard and distributed.WORLD.active
        self.computed: dict[str, int] = {}
        self._cache: dict[str, Tensor] = {}

    def _once(self, key: str, compute: Callable[[], Tensor]) -> Tensor:
        if key not in self._cache:
            self._cache[key] = compute()
            self.computed[key] = self.computed.get(key, 0) + 1
        return self._cache[key]

    def has(self, key: str) -> bool:
        return key in self._cache

    def _forward(self) -> Tensor:
        was_training = self.model.training
        self.model.eval()
        x = self.batch.x
        if self.shard:
            x = x[distributed.WORLD.share(len(x))]
        with torch.inference_mode(), self.autocast():
            feats = self.model.forward_features(x)
            logits = self.model.classifier(feats)
        self.model.train(was_training)
        feats, logits = feats.float(), logits.float()
        if self.shard:  # the shares' logits (n x classes); features only when asked for
            self._local_features = feats
            return distributed.all_gather_cat(logits, distributed.WORLD.sizes(len(self.batch)))
        self._cache["learner_features"] = feats
        return logits

    def _learner_features(self) -> Tensor:
        _ = self.logits
        if "learner_features" not in self._cache:  # sharded: gather the shares' rows (n x d)
            sizes = distributed.WORLD.sizes(len(self.batch))
            self._cache["learner_features"] = distributed.all_gather_cat(
                self._local_features, sizes
            )
        return self._cache["learner_features"]

    @property
    def logits(self) -> Tensor:
        return self._once("logits", self._forward)

    @property
    def losses(self) -> Tensor:
        """Per-sample cross-entropy of the learner."""
        return self._once(
            "losses", lambda: F.cross_entropy(self.logits, self.batch.y, reduction="none")
        )

    @property
    def predictions(self) -> Tensor:
        return self._once("predictions", lambda: self.logits.argmax(dim=1))

    @property
    def probabilities(self) -> Tensor:
        return self._once("probabilities", lambda: self.logits.softmax(dim=1))

    def features(self, source: str) -> Tensor:
        """Per-sample feature rows (n x d) from `pixels`, `learner` or `pretrained`."""
        if source == "pixels":
            return self._once("pixels", lambda: self.batch.x.flatten(1).float())
        if source == "learner":
            return self._learner_features()
        if source == "pretrained":
            lookup = self.sources.pretrained_features
            if lookup is None:
                raise RuntimeError(
                    "pretrained features requested but the selector did not prepare them"
                )
            return self._once("pretrained", lambda: lookup(self.batch.index))
        raise ConfigError(f"features must be one of {FEATURE_SOURCES}, got {source!r}")

    @property
    def reference_losses(self) -> Tensor:
        lookup = self.sources.reference_losses
        if lookup is None:
            raise RuntimeError("reference losses requested but the selector did not prepare them")
        return self._once("reference_losses", lambda: lookup(self.batch))


@dataclass
class RunContext:
    """What `Selector.prepare` and epoch hooks may use: the data, the learner, where to cache,
    and the few facts of the run they depend on, as plain values."""

    data: DataBundle
    model: nn.Module
    device: torch.device
    cache_dir: str
    run_dir: str
    autocast: Callable[[], AbstractContextManager] = nullcontext
    # the training split's eval-mode outputs, shared with the trainer's evaluation (see SplitOutputs)
    train_outputs: SplitOutputs = field(default_factory=SplitOutputs)
    epochs: int | None = None  # the run's length (InfoBatch anneals over it); None: not known
    eval_batch_size: int = 1024  # batches of the un-augmented passes over a split
    # the dataset's options (its config group's keys): what cached features and reference
    # models are keyed by, with the split they were computed from
    dataset: dict[str, Any] = field(default_factory=dict)
    # how the learner is trained: a reference model's defaults (None outside the runner)
    learner: Recipe | None = None


# every concrete selector, by name, registered when its class is defined (see Selector.__init_subclass__)
REGISTRY: Registry[type[Selector]] = Registry("selector")


class Selector:
    """Base class. Subclasses set `name` (and `style`) and implement `choose`; `select` adds the
    fallback rule. Defining the subclass registers it: a new selector is one module in this
    package and one YAML in conf/selector/."""

    name = "base"
    style = ("#DDCC77", ".")  # (colour, marker) in every figure; each selector sets its own
    # accumulation's rule for kept samples beyond a full batch (accumulate.py): carried to the
    # next step, as Selective-Backprop's staging does; only ASSIST's accuracy filters discard
    # them, as its Algorithm 10 says
    overflow_rule = "carry"

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        # the package's own modules register (abstract helpers keep the name "base"); a subclass
        # defined elsewhere (a test's stand-in) is registered only by whoever defines it
        if cls.name != "base" and cls.__module__.startswith(f"{__package__}."):
            REGISTRY.register(cls.name, cls)

    def __init__(
        self,
        filter_ratio: float = 0.0,
        min_keep: int = 1,
        seed: int = 0,
        accumulate: bool = False,
        candidate_batch_size: int | None = None,
        loss_diagnostics: bool = False,
        scope: str = "global",
        **unused: Any,
    ):
        if unused:
            raise ConfigError(f"selector={self.name} has no option(s) {sorted(unused)}")
        if not 0.0 <= float(filter_ratio) < 1.0:
            raise ConfigError(f"selector.filter_ratio must be in [0, 1), got {filter_ratio}")
        if int(min_keep) < 1:
            raise ConfigError(f"selector.min_keep must be at least 1, got {min_keep}")
        self.filter_ratio = float(filter_ratio)
        self.min_keep = int(min_keep)
        # How selections become optimizer steps; the trainer reads these, the selector carries
        # them because they are options of the selection (conf/selector/*.yaml).
        self.accumulate = bool(accumulate)  # stage kept samples up to a full batch (accumulate.py)
        self.candidate_batch_size = (
            None if candidate_batch_size is None else int(candidate_batch_size)
        )
        self.loss_diagnostics = bool(loss_diagnostics)
        # several processes: select over the whole candidate batch (global: what one process
        # selects) or within each rank's share (local); docs/distributed.md
        if scope not in SCOPES:
            raise ConfigError(f"selector.scope must be one of {SCOPES}, got {scope!r}")
        self.scope = str(scope)
        self.generator = rng.generator(int(seed), "selector")

    # -- the contract ---------------------------------------------------------------------------
    @classmethod
    def shrink_for_smoke(cls, options: dict[str, Any]) -> None:
        """`smoke=true`: make this selector's options (the run's `selector` keys as a plain dict,
        edited in place) cheap enough for a few-second run on a 32x32 stand-in. Selectors with
        side models or downloads override it; the candidate batch is capped here for all."""
        if options.get("candidate_batch_size"):
            options["candidate_batch_size"] = min(int(options["candidate_batch_size"]), 32)

    def prepare(self, ctx: RunContext) -> ViewSources:
        """Once before training: build caches (features, reference model). Default: nothing."""
        return ViewSources()

    def start_epoch(self) -> None:
        """Once as each epoch starts, before `epoch_positions`. Default: nothing."""

    def epoch_positions(self, ctx: RunContext) -> Tensor | None:
        """Once per epoch: the training positions the epoch iterates over (None = all)."""
        return None

    def choose(self, batch: Batch, view: BatchView) -> tuple:
        """(positions, diagnostics) or (positions, diagnostics, weights per position)."""
        raise NotImplementedError

    # a selector that learns from the training step's own per-sample losses (InfoBatch) sets this,
    # and the trainer calls `observe_training_losses` after every step
    wants_training_losses = False

    def observe_training_losses(self, index: Tensor, losses: Tensor) -> None:
        """Per-sample losses of a training step (train mode, the trained inputs), by dataset index."""

    def select(self, batch: Batch, view: BatchView, accumulating: bool = False) -> Selection:
        """`choose`, then ASSIST's fallback rule, which exists for the non-accumulating mode only.

        Without accumulation a filter that keeps fewer than `min_keep` samples is replaced by a
        uniform draw of `keep_count` (plain SGD), as ASSIST did when its filter ran dry. With
        accumulation (Alg. 10) a batch with nothing to keep contributes nothing: ASSIST 3.3.2,
        "several epochs may pass without a training step being performed".
        """
        positions, diagnostics, *weights = self.choose(batch, view)
        weights = weights[0] if weights else None
        fallback = not accumulating and len(positions) < self.min_keep
        if fallback:  # plain SGD on a uniform draw: unweighted
            positions, weights = self.uniform(len(batch), self.keep_count(len(batch))), None
        positions, order = torch.sort(positions.to(batch.y.device))
        if weights is not None:
            weights = weights.to(batch.y.device)[order]
        return Selection(positions, diagnostics, fallback, weights)

    # -- shared helpers -------------------------------------------------------------------------
    def keep_count(self, n: int) -> int:
        """`int(n * (1 - f))`, at least 1: SALN's and JEST's code, float arithmetic included
        (so 100 * (1 - 0.8) = 19.999... keeps 19, exactly as the papers' selections did).

        Where `int(n * (1 - f))` is 0 (n = 4, f = 0.8) SALN's Algorithm 1 takes
        `argsort(...)[-0:]`, which is the whole batch: the filter would switch off where it is
        set strictest. We keep 1 sample instead, the most informative, so the kept count never
        grows as f rises (a documented choice, tested in test_selectors.py)."""
        return max(1, int(n * (1.0 - self.filter_ratio)))

    def kept_ratio(self) -> float:
        """1 - f as the decimal it stands for (1 - 0.9 = 0.1, where float arithmetic gives
        0.09999999999999998): for the methods whose code is given the kept ratio itself."""
        return float(Decimal(1) - Decimal(repr(self.filter_ratio)))

    def uniform(self, n: int, k: int) -> Tensor:
        return torch.randperm(n, generator=self.generator)[:k]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

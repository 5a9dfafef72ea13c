"""The training loop: candidate batch -> selector -> (accumulate) -> optimizer step -> metrics.

One loop for every selector. What differs between selectors lives in the selector (`select`,
`prepare`, `epoch_positions`); the loop never asks which selector it runs. Everything needed to
continue a run (weights, optimizer, RNG streams, accumulation buffer, counters, metrics so far) is
checkpointed atomically, so a killed run resumes to the same numbers it would have produced.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm.auto import tqdm

from saln_exp import stop
from saln_exp.checkpoint import Checkpoints, check_same_run, numpy_rng_state, set_numpy_rng_state
from saln_exp.data.base import DataBundle
from saln_exp.errors import NonFiniteLossError
from saln_exp.forgetting import ForgettingTracker
from saln_exp.metrics import Timers, evaluate_split, ratios
from saln_exp.optim import build_optimizer, build_scheduler
from saln_exp.rundir import FINAL_LAYER, FORGETTING, SELECTION_EXAMPLE, save_npz, save_torch
from saln_exp.selectors import Batch, BatchView, RunContext, Selection, Selector, ViewSources
from saln_exp.selectors.accumulate import Accumulator
from saln_exp.selectors.diagnostics import class_entropy_ratio, topk_loss_overlap
from saln_exp.tracking import Tracking

log = logging.getLogger(__name__)

TIME_PHASES = ("train", "select", "eval", "diag")


@dataclass
class EpochStats:
    """Selection and training counts of the epoch in progress (part of mid-epoch checkpoints)."""

    seen: int = 0
    kept: int = 0
    candidate_batches: int = 0
    steps: int = 0
    backprop: int = 0
    fallbacks: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    forget_events: int = 0
    diagnostics: dict[str, list[float]] = field(default_factory=dict)

    def add_diagnostics(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.diagnostics.setdefault(key, []).append(float(value))

    def as_metrics(self, overflow: int) -> dict[str, float]:
        out = {
            "select/kept_frac": self.kept / max(self.seen, 1),
            "select/fallbacks": self.fallbacks,
            "select/overflow": overflow,
            "select/raw_batches_per_step": self.candidate_batches / self.steps
            if self.steps
            else float("nan"),
            "select/candidate_batches": self.candidate_batches,
            "train_batch/loss": self.loss_sum / max(self.backprop, 1),
            "train_batch/acc": self.correct / max(self.backprop, 1),
            "forget/events_epoch": self.forget_events,
        }
        for key, values in self.diagnostics.items():
            finite = [v for v in values if np.isfinite(v)]
            out[f"select/{key}"] = float(np.mean(finite)) if finite else float("nan")
        return out


@dataclass
class Progress:
    """Counters that survive a resume."""

    epoch: int = 0  # completed epochs
    cursor: int = 0  # candidate batches done in the current epoch
    order: Tensor | None = None  # the current epoch's sample order (kept for mid-epoch resume)
    steps: int = 0
    seen: int = 0
    backprop: int = 0
    overflow_at_epoch_start: int = 0
    seconds: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys((*TIME_PHASES, "wall"), 0.0)
    )
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_stats: EpochStats = field(default_factory=EpochStats)


def autocast_factory(device: torch.device, precision: str):
    """fp32: no autocast. bf16 / fp16: autocast on the device; the loss is computed in float32."""
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


class Trainer:
    def __init__(
        self,
        cfg: DictConfig,
        data: DataBundle,
        model: nn.Module,
        selector: Selector,
        run_dir: str | Path,
        device: torch.device,
        tracking: Tracking | None = None,
    ):
        self.cfg = cfg
        self.data = data
        self.model = model
        # the training step may run a compiled graph; checkpoints, evaluation and the selector's
        # view use the module itself, so state_dict keys never depend on `trainer.compile`
        self.train_forward = torch.compile(model) if cfg.trainer.get("compile") else model
        self.selector = selector
        self.run_dir = Path(run_dir)
        self.device = device
        self.tracking = tracking
        self.epochs = int(cfg.trainer.epochs)
        self.batch_size = int(cfg.dataset.batch_size)
        self.candidate_batch_size = int(cfg.selector.get("candidate_batch_size") or self.batch_size)
        self.loss_diagnostics = bool(cfg.selector.get("loss_diagnostics", False))

        self.optimizer = build_optimizer(cfg.optimizer, model.parameters())
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer)
        self.autocast = autocast_factory(device, str(cfg.trainer.get("precision", "fp32")))
        fp16_on_cuda = cfg.trainer.get("precision") == "fp16" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16_on_cuda)
        self.accumulator = Accumulator(self.batch_size) if cfg.selector.get("accumulate") else None
        self.forgetting = ForgettingTracker(len(data.noisy), device)  # keyed by source-train index
        self.timers = Timers(sync=device.type == "cuda")
        self.data_generator = torch.Generator().manual_seed(int(cfg.seed) + 1)
        self.progress = Progress()
        # loss sum, correct count, forgetting events of the batches since the last `flush`
        sums_dtype = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
        self.pending = torch.zeros(3, dtype=sums_dtype, device=device)
        self.checkpoints = Checkpoints(self.run_dir)
        self.ctx = RunContext(
            cfg=cfg,
            data=data,
            model=model,
            device=device,
            cache_dir=str(cfg.paths.cache_dir),
            run_dir=str(self.run_dir),
            autocast=self.autocast,
        )
        self.sources = ViewSources()
        self.train_eval_positions = self._train_eval_subset(cfg.eval.get("train_subset"))
        self._clock_start = time.perf_counter()

    # -- public ------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; return the per-epoch metrics of the whole run."""
        resumed = self.maybe_resume()
        with self.timers("select"):  # reference models and feature caches are selection cost
            self.sources = self.selector.prepare(self.ctx)
        if not resumed and self.tracking is not None:
            self.tracking.files.rewrite_metrics([])
        with stop.deferred():  # a signal stops the run after a batch, with a checkpoint
            while self.progress.epoch < self.epochs:
                self.run_epoch()
                self.end_epoch()
                stop.check()
        self.save_final_artifacts()
        return self.progress.history

    # -- one epoch ---------------------------------------------------------------------------------
    def run_epoch(self) -> None:
        p = self.progress
        if p.order is None:  # a fresh epoch (not a mid-epoch resume)
            with self.timers("select"):
                positions = self.selector.epoch_positions(self.ctx)
            if positions is None:
                positions = torch.arange(len(self.data.train))
            positions = positions.cpu()
            p.order = positions[torch.randperm(len(positions), generator=self.data_generator)]
            p.cursor = 0
            p.epoch_stats = EpochStats()
            p.overflow_at_epoch_start = self.accumulator.overflow if self.accumulator else 0
        n_batches = -(-len(p.order) // self.candidate_batch_size)
        every = self.cfg.trainer.get("checkpoint_every_steps")
        bar = tqdm(
            total=n_batches,
            initial=p.cursor,
            desc=f"epoch {p.epoch + 1}/{self.epochs}",
            # None: no bar when stderr is not a terminal (a log file gets one line per epoch)
            disable=None if self.cfg.trainer.get("progress", True) else True,
            leave=False,
            dynamic_ncols=True,
        )
        while p.cursor < n_batches:
            start = p.cursor * self.candidate_batch_size
            steps_before = p.steps
            self.candidate_batch(p.order[start : start + self.candidate_batch_size].to(self.device))
            p.cursor += 1
            bar.update(1)
            if (
                p.cursor % int(self.cfg.trainer.get("log_every_steps", 10)) == 0
                or p.cursor == n_batches
            ):
                self.flush()
                bar.set_postfix(self._live_numbers(), refresh=False)
            if (
                every
                and p.steps // int(every) > steps_before // int(every)
                and p.cursor < n_batches
            ):
                self.save_checkpoint()
            if stop.STATE.requested is not None and p.cursor < n_batches:
                if self.cfg.trainer.get("checkpoint", True):
                    self.save_checkpoint()
                bar.close()
                stop.check()
        bar.close()
        p.order = None

    def candidate_batch(self, positions: Tensor) -> None:
        train = self.data.train
        stats = self.progress.epoch_stats
        with self.timers("train"):  # reading and augmenting the batch is part of training
            batch = Batch(
                train.indices[positions],
                self.data.pipeline.batch(train, positions, train=True),
                train.targets[positions],
            )
            if self.cfg.trainer.get("channels_last") and batch.x.dim() == 4:
                batch.x = batch.x.contiguous(memory_format=torch.channels_last)
        with self.timers("select"):
            view = BatchView(batch, self.model, self.sources, self.autocast)
            selection = self.selector.select(batch, view, accumulating=self.accumulator is not None)
        self.record_selection(batch, view, selection)
        if self.progress.epoch == 0 and self.progress.cursor == int(
            self.cfg.trainer.get("example_batch", 0)
        ):
            self.save_selection_example(batch, selection)
        kept = batch if len(selection.positions) == len(batch) else batch.take(selection.positions)
        if selection.weights is not None:
            kept = Batch(kept.index, kept.x, kept.y, selection.weights)
        stats.seen += len(batch)
        stats.kept += len(kept)
        stats.candidate_batches += 1
        self.progress.seen += len(batch)
        if self.accumulator is None:
            self.train_step(kept)
        elif (full := self.accumulator.add(kept)) is not None:
            self.train_step(full)

    def record_selection(self, batch: Batch, view: BatchView, selection: Selection) -> None:
        stats = self.progress.epoch_stats
        stats.fallbacks += int(selection.fallback)
        values = dict(selection.diagnostics)
        with self.timers("diag"):
            if len(self.data.noisy) and self.cfg.dataset.label_noise.rate > 0:
                values["noisy_kept_frac"] = (
                    self.data.noisy[batch.index[selection.positions]].float().mean().item()
                )
                values["noisy_batch_frac"] = self.data.noisy[batch.index].float().mean().item()
            # nothing dropped: as balanced as the batch by definition, and no device round trip
            values["class_entropy_ratio"] = (
                class_entropy_ratio(batch.y, selection.positions, self.data.num_classes)
                if len(selection.positions) < len(batch)
                else 1.0
            )
            # free when the selector already looked at losses; otherwise an extra forward, on request
            dropped_some = len(selection.positions) < len(batch)
            if view.has("losses") or (self.loss_diagnostics and dropped_some):
                losses = view.losses
                dropped = torch.ones(len(batch), dtype=torch.bool, device=losses.device)
                dropped[selection.positions] = False
                values["topk_loss_overlap"] = topk_loss_overlap(losses, selection.positions)
                values["loss_kept"] = losses[~dropped].mean().item()
                values["loss_dropped"] = (
                    losses[dropped].mean().item() if dropped.any() else float("nan")
                )
        stats.add_diagnostics(values)

    def save_selection_example(self, batch: Batch, selection: Selection, limit: int = 64) -> None:
        """The images of one candidate batch as the selector saw them, and which it kept
        (SALN Fig. 7-8). Written once, in the first epoch."""
        pipe = self.data.pipeline
        images = (batch.x[:limit].float() * pipe.std + pipe.mean).clamp(0, 1)
        kept = torch.zeros(len(batch), dtype=torch.bool, device=batch.y.device)
        kept[selection.positions] = True
        save_torch(
            self.run_dir / SELECTION_EXAMPLE,
            {
                "images": (images * 255).round().to(torch.uint8).cpu(),
                "labels": batch.y[:limit].cpu(),
                "index": batch.index[:limit].cpu(),
                "kept": kept[:limit].cpu(),
                "selector": self.cfg.selector.name,
                "batch": self.progress.cursor,
            },
        )

    def save_final_artifacts(self) -> None:
        """Final-layer weights (SALN Fig. 9-10) and per-sample forgetting counts (Toneva et al.)."""
        head = self.model.classifier
        save_npz(
            self.run_dir / FINAL_LAYER,
            weight=head.weight.detach().float().cpu().numpy(),
            bias=head.bias.detach().float().cpu().numpy() if head.bias is not None else np.zeros(0),
        )
        index = self.data.train.indices.cpu()
        save_npz(
            self.run_dir / FORGETTING,
            index=index.numpy(),
            events=self.forgetting.events.cpu()[index].numpy(),
            learned=self.forgetting.learned.cpu()[index].numpy(),
            presented=self.forgetting.presented.cpu()[index].numpy(),
            noisy=self.data.noisy.cpu()[index].numpy(),
        )

    def train_step(self, batch: Batch) -> None:
        p, stats = self.progress, self.progress.epoch_stats
        with self.timers("train"):
            self.model.train()
            with self.autocast():
                logits = self.train_forward(batch.x)
            if batch.w is None:
                loss = F.cross_entropy(logits.float(), batch.y)
                loss_sum = loss.detach() * len(batch)
            else:  # weighted mean over the kept samples; logged loss stays the plain cross-entropy
                per_sample = F.cross_entropy(logits.float(), batch.y, reduction="none")
                loss = (per_sample * batch.w).mean()
                loss_sum = per_sample.detach().sum()
            if self.selector.wants_training_losses:
                self.selector.observe_training_losses(
                    batch.index, F.cross_entropy(logits.detach().float(), batch.y, reduction="none")
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            correct = logits.detach().argmax(1) == batch.y
            forgotten = self.forgetting.update(batch.index, correct)
            # summed on the device; read back (one synchronisation) every few batches in `flush`
            sums = torch.stack([loss_sum, correct.sum(), forgotten])
            self.pending += sums.to(self.pending.dtype)
        stats.steps += 1
        stats.backprop += len(batch)
        p.steps += 1
        p.backprop += len(batch)

    def flush(self) -> None:
        """Move the device-side sums into the epoch's counts; stop on a non-finite loss.

        Called every `trainer.log_every_steps` batches and before checkpoints and evaluation, so
        a GPU is not made to wait for the host after every step."""
        loss_sum, correct, forgotten = self.pending.tolist()
        self.pending.zero_()
        p = self.progress
        if not np.isfinite(loss_sum):
            raise NonFiniteLossError(
                f"loss became {loss_sum} in epoch {p.epoch + 1} (by step {p.steps}); "
                f"lower optimizer.lr (now {self.cfg.optimizer.lr}) or check the data"
            )
        p.epoch_stats.loss_sum += loss_sum
        p.epoch_stats.correct += int(correct)
        p.epoch_stats.forget_events += int(forgotten)

    def _live_numbers(self) -> dict[str, str]:
        s = self.progress.epoch_stats
        return {
            "loss": f"{s.loss_sum / max(s.backprop, 1):.3f}",
            "acc": f"{s.correct / max(s.backprop, 1):.3f}",
            "kept": f"{s.kept / max(s.seen, 1):.2f}",
        }

    # -- end of epoch ------------------------------------------------------------------------------
    def end_epoch(self) -> None:
        self.flush()
        p = self.progress
        if self.scheduler is not None:
            self.scheduler.step()
        with self.timers("eval"):
            metrics = self.evaluate()
        overflow = (
            (self.accumulator.overflow - p.overflow_at_epoch_start) if self.accumulator else 0
        )
        metrics.update(p.epoch_stats.as_metrics(overflow))
        p.epoch += 1
        for phase, seconds in self.timers.reset().items():
            p.seconds[phase] = p.seconds.get(phase, 0.0) + seconds
        p.seconds["wall"] += time.perf_counter() - self._clock_start
        self._clock_start = time.perf_counter()
        metrics.update(
            {
                "epoch": p.epoch,
                "time/train_s": p.seconds["train"],
                "time/select_s": p.seconds["select"],
                "time/eval_s": p.seconds["eval"],
                "time/diag_s": p.seconds["diag"],
                "time/wall_s": p.seconds["wall"],
                "samples/seen": p.seen,
                "samples/backprop": p.backprop,
                "optim/steps": p.steps,
                "optim/lr": self.optimizer.param_groups[0]["lr"],
            }
        )
        p.history.append(metrics)
        if self.tracking is not None:
            self.tracking.log_epoch(metrics)
        log.info(
            "epoch %d/%d  train/acc %.4f  test/acc %.4f  test/loss_mean %.4f  kept %.2f  wall %.1fs",
            p.epoch, self.epochs, metrics["train/acc"], metrics["test/acc"],
            metrics["test/loss_mean"], metrics["select/kept_frac"], metrics["time/wall_s"],
        )  # fmt: skip
        if self.cfg.trainer.get("checkpoint", True):
            self.save_checkpoint()

    def evaluate(self) -> dict[str, float]:
        """ASSIST's metrics over the FULL train (or its fixed subset), val and test splits."""
        bs = int(self.cfg.eval.batch_size)
        pipe = self.data.pipeline
        metrics = evaluate_split(
            self.model, self.data.train, pipe, "train", bs, self.train_eval_positions,
            cache=self.ctx.train_outputs,
        )  # fmt: skip
        if self.data.val is not None:
            metrics.update(evaluate_split(self.model, self.data.val, pipe, "val", bs))
        metrics.update(evaluate_split(self.model, self.data.test, pipe, "test", bs))
        metrics.update(ratios(metrics))
        metrics.update(self.forgetting.summary(self.data.train.indices))
        return metrics

    def _train_eval_subset(self, size: int | None) -> Tensor | None:
        if size is None or int(size) >= len(self.data.train):
            return None
        g = torch.Generator().manual_seed(int(self.cfg.dataset.split_seed) + 17)
        return torch.sort(torch.randperm(len(self.data.train), generator=g)[: int(size)]).values.to(
            self.device
        )

    # -- checkpoint / resume -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        p = self.progress
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "selector": self.selector.state_dict(),
            "accumulator": self.accumulator.state_dict() if self.accumulator else None,
            "forgetting": self.forgetting.state_dict(),
            "progress": {**asdict(p), "order": p.order, "epoch_stats": asdict(p.epoch_stats)},
            "rng": {
                "python": random.getstate(),
                "numpy": numpy_rng_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "data": self.data_generator.get_state(),
            },
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "wandb_id": self.tracking.run_id if self.tracking is not None else None,
        }

    def save_checkpoint(self) -> None:
        self.flush()
        # fold the clocks in, so a resumed run continues them instead of restarting them
        for phase, seconds in self.timers.reset().items():
            self.progress.seconds[phase] = self.progress.seconds.get(phase, 0.0) + seconds
        self.progress.seconds["wall"] += time.perf_counter() - self._clock_start
        self._clock_start = time.perf_counter()
        self.checkpoints.save(self.state_dict())
        if self.tracking is not None:
            self.tracking.checkpoint_saved(self.checkpoints.latest, self.progress.epoch)

    def maybe_resume(self) -> bool:
        state = self.checkpoints.load()
        if state is None:
            return False
        check_same_run(
            state["config"], OmegaConf.to_container(self.cfg, resolve=True), self.run_dir
        )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.selector.load_state_dict(state["selector"])
        if self.accumulator and state["accumulator"]:
            self.accumulator.load_state_dict(state["accumulator"], self.device)
        self.forgetting.load_state_dict(state["forgetting"])
        saved = dict(state["progress"])
        saved["epoch_stats"] = EpochStats(**saved["epoch_stats"])
        self.progress = Progress(**saved)
        rng = state["rng"]
        random.setstate(rng["python"])
        set_numpy_rng_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.data_generator.set_state(rng["data"])
        if self.tracking is not None:
            self.tracking.files.rewrite_metrics(self.progress.history)
        where = f"epoch {self.progress.epoch}" + (
            f", batch {self.progress.cursor}" if self.progress.order is not None else ""
        )
        log.info("resumed from %s (%s)", self.run_dir, where)
        return True

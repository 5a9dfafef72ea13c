"""The training loop: candidate batch -> selector -> (accumulate) -> optimizer step.

One loop for every selector, and for one process or several: it calls the public selection API
(saln_exp/selection.py, what a user's own loop calls) and trains on what `select` keeps. What
differs between selectors lives in the selector; the loop never asks which selector it runs, and
several processes change what each computes (the selector's scope), not which functions run.
Everything needed to continue a run (weights, optimizer, RNG streams, accumulation buffer,
counters, metrics so far) is checkpointed atomically, so a killed run resumes to the same
numbers it would have produced.

What the loop hands off: the epoch's metrics row to epoch_metrics.py, the counters and random
streams a checkpoint holds to trainer_state.py, the paper artifacts to run_artifacts.py.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from saln_exp import distributed, stop
from saln_exp.checkpoint import Checkpoints, check_same_run
from saln_exp.data.base import DataBundle
from saln_exp.epoch_metrics import (
    EpochStats,
    epoch_row,
    evaluate,
    selection_diagnostics,
    train_eval_positions,
)
from saln_exp.errors import NonFiniteLossError
from saln_exp.fit import Recipe
from saln_exp.forgetting import ForgettingTracker
from saln_exp.metrics import SplitOutputs, Timers
from saln_exp.optim import build_optimizer, build_scheduler
from saln_exp.run_artifacts import save_final_layer, save_forgetting, save_selection_example
from saln_exp.selection import BatchSelector, Kept
from saln_exp.selectors import Batch, RunContext
from saln_exp.tracking import Tracking
from saln_exp.trainer_state import Progress, restore_rng_state, rng_state, selection_state

log = logging.getLogger(__name__)


def autocast_factory(device: torch.device, precision: str):
    """fp32: no autocast. bf16 / fp16: autocast on the device; the loss is computed in float32."""
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class LoopSettings:
    """What the loop reads of the run's config, as plain values (saln_exp.config.loop_settings
    turns the Hydra config into them)."""

    epochs: int
    batch_size: int  # of an optimizer step (what accumulation fills up to)
    candidate_batch_size: int  # drawn per selection
    precision: str
    compile: bool
    channels_last: bool
    progress_bar: bool
    log_every_steps: int  # in candidate batches
    checkpoint: bool
    checkpoint_every_steps: int | None  # in optimizer steps
    example_batch: int
    eval_batch_size: int
    train_subset: int | None
    seed: int
    split_seed: int
    label_noise: bool
    selector_name: str
    optimizer: dict[str, Any]  # the optimizer group's keys (a `_partial_` target)
    scheduler: dict[str, Any]  # the scheduler group's keys
    learner: Recipe  # how the learner is trained: a reference model's defaults
    dataset: dict[str, Any]  # the dataset group's keys: what caches are keyed by
    cache_dir: str
    # the run's whole resolved config: checkpoints record it, to refuse a changed resume
    config: dict[str, Any]

    @property
    def lr(self) -> float | None:  # only quoted when the loss diverges
        return self.optimizer.get("lr")


class Trainer:
    def __init__(
        self,
        settings: LoopSettings,
        data: DataBundle,
        model: nn.Module,
        selector: BatchSelector,
        run_dir: str | Path,
        device: torch.device,
        tracking: Tracking | None = None,
    ):
        self.settings = s = settings
        self.data = data
        self.model = model
        # several processes (saln_exp.distributed): the training step runs through
        # DistributedDataParallel; everything else uses the module itself
        self.world = world = distributed.WORLD
        train_module: nn.Module = model
        if world.active:
            ids = [device.index] if device.type == "cuda" else None
            train_module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        # the training step may run a compiled graph; checkpoints, evaluation and the selector's
        # view use the module itself, so state_dict keys never depend on `trainer.compile`
        # (nor on the number of processes)
        self.train_forward = torch.compile(train_module) if s.compile else train_module
        self.sel = selector  # staging, epoch order and the selector's state live in it
        self.run_dir = Path(run_dir)
        self.device = device
        self.tracking = tracking

        self.optimizer = build_optimizer(s.optimizer, model.parameters())
        self.scheduler = build_scheduler(s.scheduler, self.optimizer)
        self.autocast = autocast_factory(device, s.precision)
        fp16_on_cuda = s.precision == "fp16" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16_on_cuda)
        self.forgetting = ForgettingTracker(len(data.noisy), device)  # keyed by source-train index
        self.timers = Timers(sync=device.type == "cuda")
        self.progress = Progress()
        # loss sum, correct count, forgetting events of the batches since the last `flush`
        sums_dtype = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
        self.pending = torch.zeros(3, dtype=sums_dtype, device=device)
        self.checkpoints = Checkpoints(self.run_dir)
        self.ctx = RunContext(
            data=data,
            model=model,
            device=device,
            cache_dir=s.cache_dir,
            run_dir=str(self.run_dir),
            autocast=self.autocast,
            train_outputs=SplitOutputs(shard=world.active),
            epochs=s.epochs,
            eval_batch_size=s.eval_batch_size,
            dataset=s.dataset,
            learner=s.learner,
        )
        self.train_eval_positions = train_eval_positions(
            len(data.train), s.train_subset, s.split_seed, device
        )
        self._clock_start = time.perf_counter()

    # -- public ------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; return the per-epoch metrics of the whole run."""
        resumed = self.maybe_resume()
        # One-time work (training or loading a reference model, extracting features) is timed
        # apart from per-batch selection: it is cached across runs, so folding it into
        # time/select_s would make a run's time depend on which run of a sweep came first.
        with self.timers("prepare"):
            self.sel.prepare(self.ctx)
        if not resumed and self.tracking is not None:
            self.tracking.files.rewrite_metrics([])
        with stop.deferred():  # a signal stops the run after a batch, with a checkpoint
            while self.progress.epoch < self.settings.epochs:
                self.train_epoch()
                self.end_epoch()
                # what the ranks agreed: a signal that lands on one rank after the agreement
                # stops them all after the next batch, never this rank alone here
                if self.stop_requested():
                    stop.check()
        if self.world.is_main:
            save_final_layer(self.run_dir, self.model)
            save_forgetting(self.run_dir, self.data, self.forgetting)
        return self.progress.history

    def train_epoch(self) -> None:
        """One epoch of training (the rest of it, after a mid-epoch resume): selection and
        optimizer steps, mid-epoch checkpoints on request. The epoch then counts as done
        (`progress.epoch`); its evaluation, metrics row and checkpoint are `end_epoch`'s, so
        the benchmark can time this alone."""
        p = self.progress
        if not p.mid_epoch:
            self.start_epoch()
        size = self.settings.candidate_batch_size
        n_batches = -(-len(p.order) // size)
        every = self.settings.checkpoint_every_steps
        chunks = [
            p.order[i * size : (i + 1) * size].to(self.device) for i in range(p.cursor, n_batches)
        ]
        # the one reader of the epoch's candidate batches (a streamed split decodes ahead)
        inputs = self.data.pipeline.batches(self.data.train, chunks, train=True)
        bar = self.progress_bar(n_batches)
        try:
            for positions in chunks:
                steps_before = p.steps
                try:
                    self.candidate_batch(positions, inputs, last=p.cursor == n_batches - 1)
                except stop.ReaderStopped:
                    # one process: a clean point, before this batch. Several: the ranks may not
                    # all be here, so they resume from the last checkpoint instead
                    if self.settings.checkpoint and not self.world.active:
                        self.save_checkpoint()
                    raise
                p.cursor += 1
                bar.update(1)
                if p.cursor % self.settings.log_every_steps == 0 or p.cursor == n_batches:
                    self.flush()
                    bar.set_postfix(p.epoch_stats.live_numbers(), refresh=False)
                if every and p.steps // every > steps_before // every and p.cursor < n_batches:
                    self.save_checkpoint()
                if self.stop_requested() and p.cursor < n_batches:
                    if self.settings.checkpoint:
                        self.save_checkpoint()
                    stop.check()
        finally:
            bar.close()
            inputs.close()  # a streamed epoch cut short shuts its decoding workers down now
        p.order = None
        p.epoch += 1

    def stop_requested(self) -> bool:
        """A signal asked to stop. Several processes agree (one tiny all-reduce per batch), so
        that all stop, and checkpoint, after the same batch whichever got the signal first."""
        if not self.world.active:
            return stop.STATE.requested is not None
        mine = torch.tensor([float(stop.STATE.requested or 0)], device=self.pending.device)
        signum = int(distributed.all_reduce_sum(mine).item())
        if signum and stop.STATE.requested is None:
            stop.STATE.requested = signal.SIGTERM  # a peer's signal
        return bool(signum)

    # -- one epoch ---------------------------------------------------------------------------------
    def start_epoch(self) -> None:
        """Draw the epoch's sample order (over the selector's epoch positions, if it has any)
        from the selector's epoch-order stream, as its `sampler` does in a loop of your own."""
        p = self.progress
        with self.timers("select"):
            positions = self.sel.start_epoch(self.ctx)
        if positions is None:
            positions = torch.arange(len(self.data.train))
        positions = positions.cpu()
        p.order = positions[torch.randperm(len(positions), generator=self.sel.order_generator)]
        p.cursor = 0
        p.epoch_stats = EpochStats()
        p.overflow_at_epoch_start = self.sel.overflow

    def progress_bar(self, n_batches: int) -> tqdm:
        return tqdm(
            total=n_batches,
            initial=self.progress.cursor,
            desc=f"epoch {self.progress.epoch + 1}/{self.settings.epochs}",
            # None: no bar when stderr is not a terminal (a log file gets one line per epoch)
            disable=None if self.settings.progress_bar and self.world.is_main else True,
            leave=False,
            dynamic_ncols=True,
        )

    def candidate_batch(
        self, positions: Tensor, inputs: Iterator[Tensor], last: bool = False
    ) -> None:
        """Select from, and train on, the candidate batch at `positions` of the training split;
        `inputs` yields its model inputs (`pipeline.batches` over the epoch's batches); `last`:
        the epoch's last candidate batch (where accumulation may train a smaller step)."""
        train, s, p = self.data.train, self.settings, self.progress
        with self.timers("train"):  # reading and augmenting the batch is part of training
            # several processes: every rank reads the whole candidate batch (the same augmented
            # tensors, from the same random streams); the selector shares the work out
            batch = Batch(train.indices[positions], next(inputs), train.targets[positions])
            if s.channels_last and batch.x.dim() == 4:
                batch.x = batch.x.contiguous(memory_format=torch.channels_last)
        with self.timers("select"):
            kept = self.sel.select(self.model, batch.x, batch.y, batch.index)
        self.record_selection(kept)
        if p.epoch == 0 and p.cursor == s.example_batch and self.world.is_main:  # SALN Fig. 7-8
            save_selection_example(
                self.run_dir, self.data, kept.candidates, kept.selection, s.selector_name, p.cursor
            )
        p.epoch_stats.seen += len(batch)
        p.epoch_stats.candidate_batches += 1
        p.seen += len(batch)
        if kept:  # a step is due (a staging selector's staged batch may not be full yet)
            self.train_step(kept)
        # a staging selector may have more: carried samples filling another step, or what is
        # staged at the epoch's (the run's) last candidate batch
        run_end = last and p.epoch == s.epochs - 1
        while kept := self.sel.next_step(epoch_end=last, run_end=run_end):
            self.train_step(kept)

    def record_selection(self, kept: Kept) -> None:
        """The selection's counts and diagnostics into the epoch's stats. Where each rank chose
        within its share (`per_rank`), counts are summed over ranks and a diagnostic is the mean
        of the ranks' values (each over its share); the selection example is rank 0's share."""
        s, stats, selection = self.settings, self.progress.epoch_stats, kept.selection
        with self.timers("diag"):
            diagnostics = selection_diagnostics(
                kept.candidates, kept.view, selection, self.data, s.label_noise,
                self.sel.selector.loss_diagnostics,
            )  # fmt: skip
        counts = [len(selection.positions), int(selection.fallback)]
        if self.sel.per_rank:
            keys = sorted(diagnostics)
            local = torch.tensor([*counts, *(diagnostics[k] for k in keys)],
                                 dtype=torch.float64, device=self.pending.device)  # fmt: skip
            summed = distributed.all_reduce_sum(local).tolist()
            counts = [int(summed[0]), int(summed[1])]
            diagnostics = {k: v / self.world.size for k, v in zip(keys, summed[2:], strict=True)}
        stats.add_diagnostics(diagnostics)
        stats.kept += counts[0]
        stats.fallbacks += counts[1]

    def train_step(self, kept: Kept) -> None:
        """One optimizer step on what `select` kept (this process's share of the step). The
        loss is the mean over the step of weight * cross-entropy, as in a loop of your own;
        where every weight is 1 it is the plain mean cross-entropy.

        Several processes: the kept weights carry each rank's share of the step (W k_r / K), so
        DDP's average of the ranks' gradients is the one-process step's gradient, up to the order
        of the floating-point sums. The per-sample losses, correctness and indices are gathered,
        so that counts and forgetting are the whole step's on every rank (their state, which
        rank 0 checkpoints, stays the same on all ranks); `update` gathers what the selector
        learns from the same way."""
        p, stats = self.progress, self.progress.epoch_stats
        with self.timers("train"):
            self.model.train()
            with self.autocast():
                logits = self.train_forward(kept.x)
            if kept.weighted:  # the logged loss stays the plain cross-entropy
                per_sample = F.cross_entropy(logits.float(), kept.y, reduction="none")
                weighted = per_sample * kept.weights
                # a rank with no share of a step still steps (DDP waits for its gradient)
                loss = weighted.mean() if len(kept) else weighted.sum()
                losses = per_sample.detach()
                loss_sum = losses.sum()
            else:
                loss = F.cross_entropy(logits.float(), kept.y)
                loss_sum = loss.detach() * len(kept)
                losses = None  # per-sample losses only where something reads them (below)
                if self.sel.learns_from_steps or self.world.active:
                    losses = F.cross_entropy(logits.detach().float(), kept.y, reduction="none")
            if self.sel.learns_from_steps:
                self.sel.update(kept.index, losses)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            correct, index = logits.detach().argmax(1) == kept.y, kept.index
            if self.world.active:  # the whole step's, in rank order
                rows = torch.stack([losses.double(), correct.double(), index.double()], dim=1)
                sizes = None if self.sel.per_rank else self.world.sizes(kept.step_size)
                rows = distributed.all_gather_cat(rows, sizes)
                loss_sum, correct, index = rows[:, 0].sum(), rows[:, 1] > 0.5, rows[:, 2].long()
            self.forgetting.update(index, correct)  # counted in `flush`
            # summed on the device; read back (one synchronisation) every few batches in `flush`
            sums = torch.stack([loss_sum, correct.sum()])
            self.pending[:2] += sums.to(self.pending.dtype)
        stats.steps += 1
        stats.backprop += kept.step_size
        p.steps += 1
        p.backprop += kept.step_size

    def flush(self) -> None:
        """Move the device-side sums into the epoch's counts; stop on a non-finite loss.

        Called every `trainer.log_every_steps` batches and before checkpoints and evaluation, so
        a GPU is not made to wait for the host after every step."""
        self.pending[2] += self.forgetting.new_events().to(self.pending.dtype)
        loss_sum, correct, forgotten = self.pending.tolist()
        self.pending.zero_()
        p = self.progress
        if not math.isfinite(loss_sum):
            raise NonFiniteLossError(
                f"loss became {loss_sum} in epoch {p.epoch + 1} (by step {p.steps}); "
                f"lower optimizer.lr (now {self.settings.lr}) or check the data"
            )
        p.epoch_stats.loss_sum += loss_sum
        p.epoch_stats.correct += int(correct)
        p.epoch_stats.forget_events += int(forgotten)

    # -- end of epoch ------------------------------------------------------------------------------
    def end_epoch(self) -> None:
        """Close the epoch `train_epoch` finished: scheduler step, evaluation, its metrics row
        (logged), checkpoint."""
        self.flush()
        p = self.progress
        if self.scheduler is not None:
            self.scheduler.step()
        with self.timers("eval"):
            evaluation = evaluate(
                self.model, self.data, self.settings.eval_batch_size, self.train_eval_positions,
                self.ctx.train_outputs, self.forgetting, shard=self.world.active,
            )  # fmt: skip
        overflow = self.sel.overflow - p.overflow_at_epoch_start
        staged = self.sel.staged
        self.fold_clocks()
        metrics = epoch_row(evaluation, overflow, staged, p, self.optimizer.param_groups[0]["lr"])
        p.history.append(metrics)
        if self.tracking is not None:
            self.tracking.log_epoch(metrics)
        log.info(
            "epoch %d/%d  train/acc %.4f  test/acc %.4f  test/loss_mean %.4f  kept %.2f  wall %.1fs",
            p.epoch, self.settings.epochs, metrics["train/acc"], metrics["test/acc"],
            metrics["test/loss_mean"], metrics["select/kept_frac"], metrics["time/wall_s"],
        )  # fmt: skip
        if self.settings.checkpoint:
            self.save_checkpoint()

    def fold_clocks(self) -> None:
        """Add the phase timers and the wall clock since the last fold into the run's totals
        (`progress.seconds`), which checkpoints carry: a resumed run continues its clocks."""
        seconds = self.progress.seconds
        for phase, spent in self.timers.reset().items():
            seconds[phase] = seconds.get(phase, 0.0) + spent
        now = time.perf_counter()
        seconds["wall"] += now - self._clock_start
        self._clock_start = now

    # -- checkpoint / resume -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "selection": self.sel.state_dict(),  # selector, staged samples, epoch-order stream
            "forgetting": self.forgetting.state_dict(),
            "progress": self.progress.state_dict(),
            "rng": rng_state(),
            "config": self.settings.config,
            "wandb_id": self.tracking.run_id if self.tracking is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.forgetting.load_state_dict(state["forgetting"])
        self.progress = Progress.from_state(state["progress"])
        # older checkpoints kept the selector's parts under their own keys: read them too
        self.sel.load_state_dict(
            selection_state(state, self.progress, self.settings.batch_size), self.device
        )
        restore_rng_state(state["rng"])

    def save_checkpoint(self) -> None:
        self.flush()
        self.fold_clocks()
        if self.world.is_main:  # written once; the other ranks hold the same state
            self.checkpoints.save(self.state_dict())
            if self.tracking is not None:
                self.tracking.checkpoint_saved(self.checkpoints.latest, self.progress.epoch)
        distributed.barrier()

    def maybe_resume(self) -> bool:
        state = self.checkpoints.load()
        if state is None:
            return False
        check_same_run(state["config"], self.settings.config, self.run_dir)
        self.load_state_dict(state)
        if self.tracking is not None:
            self.tracking.files.rewrite_metrics(self.progress.history)
        where = f"epoch {self.progress.epoch}" + (
            f", batch {self.progress.cursor}" if self.progress.mid_epoch else ""
        )
        log.info("resumed from %s (%s)", self.run_dir, where)
        return True

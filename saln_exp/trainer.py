"""The training loop: candidate batch -> selector -> (accumulate) -> optimizer step.

One loop for every selector. What differs between selectors lives in the selector (`select`,
`prepare`, `epoch_positions`); the loop never asks which selector it runs. Everything needed to
continue a run (weights, optimizer, RNG streams, accumulation buffer, counters, metrics so far) is
checkpointed atomically, so a killed run resumes to the same numbers it would have produced.

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
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from tqdm.auto import tqdm

from saln_exp import distributed, rng, stop
from saln_exp.checkpoint import Checkpoints, check_same_run
from saln_exp.data.base import DataBundle
from saln_exp.epoch_metrics import (
    EpochStats,
    epoch_row,
    evaluate,
    selection_diagnostics,
    train_eval_positions,
)
from saln_exp.errors import ConfigError, NonFiniteLossError
from saln_exp.forgetting import ForgettingTracker
from saln_exp.metrics import SplitOutputs, Timers
from saln_exp.optim import build_optimizer, build_scheduler
from saln_exp.run_artifacts import save_final_layer, save_forgetting, save_selection_example
from saln_exp.selectors import Batch, BatchView, RunContext, Selector, ViewSources
from saln_exp.selectors.accumulate import Accumulator
from saln_exp.tracking import Tracking
from saln_exp.trainer_state import Progress, restore_rng_state, rng_state

log = logging.getLogger(__name__)


def autocast_factory(device: torch.device, precision: str):
    """fp32: no autocast. bf16 / fp16: autocast on the device; the loss is computed in float32."""
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return partial(torch.autocast, device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class LoopSettings:
    """The config values the loop reads, read once, typed, with their defaults in one place."""

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
    lr: float | None  # only quoted when the loss diverges
    selector_name: str

    @classmethod
    def from_config(cls, cfg: DictConfig, selector: Selector) -> LoopSettings:
        trainer, every = cfg.trainer, cfg.trainer.get("checkpoint_every_steps")
        subset = cfg.eval.get("train_subset")
        return cls(
            epochs=int(trainer.epochs),
            batch_size=int(cfg.dataset.batch_size),
            candidate_batch_size=selector.candidate_batch_size or int(cfg.dataset.batch_size),
            precision=str(trainer.get("precision", "fp32")),
            compile=bool(trainer.get("compile")),
            channels_last=bool(trainer.get("channels_last")),
            progress_bar=bool(trainer.get("progress", True)),
            log_every_steps=int(trainer.get("log_every_steps", 10)),
            checkpoint=bool(trainer.get("checkpoint", True)),
            checkpoint_every_steps=int(every) if every else None,
            example_batch=int(trainer.get("example_batch", 0)),
            eval_batch_size=int(cfg.eval.batch_size),
            train_subset=None if subset is None else int(subset),
            seed=int(cfg.seed),
            split_seed=int(cfg.dataset.split_seed),
            label_noise=cfg.dataset.label_noise.rate > 0,
            lr=cfg.optimizer.get("lr"),
            selector_name=str(cfg.selector.name),
        )


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
        # The loop reads `settings`; the whole config is kept only for those who take it whole:
        # selectors (through `ctx`) and checkpoints, which record it to refuse a changed resume.
        self.cfg = cfg
        self.settings = s = LoopSettings.from_config(cfg, selector)
        self.data = data
        self.model = model
        # several processes (saln_exp.distributed): the training step runs through
        # DistributedDataParallel; everything else uses the module itself
        self.world = world = distributed.WORLD
        if world.active and selector.scope == "local" and selector.accumulate:
            raise ConfigError(
                "selector.scope=local with selector.accumulate=true: ranks would step at "
                "different times; use selector.scope=global"
            )
        train_module: nn.Module = model
        if world.active:
            ids = [device.index] if device.type == "cuda" else None
            train_module = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        # the training step may run a compiled graph; checkpoints, evaluation and the selector's
        # view use the module itself, so state_dict keys never depend on `trainer.compile`
        # (nor on the number of processes)
        self.train_forward = torch.compile(train_module) if s.compile else train_module
        self.selector = selector
        self.run_dir = Path(run_dir)
        self.device = device
        self.tracking = tracking

        self.optimizer = build_optimizer(cfg.optimizer, model.parameters())
        self.scheduler = build_scheduler(cfg.scheduler, self.optimizer)
        self.autocast = autocast_factory(device, s.precision)
        fp16_on_cuda = s.precision == "fp16" and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16_on_cuda)
        self.accumulator = (
            Accumulator(s.batch_size, selector.overflow_rule) if selector.accumulate else None
        )
        self.forgetting = ForgettingTracker(len(data.noisy), device)  # keyed by source-train index
        self.timers = Timers(sync=device.type == "cuda")
        self.data_generator = rng.generator(s.seed, "epoch_order")
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
            train_outputs=SplitOutputs(shard=world.active),
        )
        self.sources = ViewSources()
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
            self.sources = self.selector.prepare(self.ctx)
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
        """Draw the epoch's sample order (over the selector's epoch positions, if it has any)."""
        p = self.progress
        with self.timers("select"):
            self.selector.start_epoch()
            positions = self.selector.epoch_positions(self.ctx)
        if positions is None:
            positions = torch.arange(len(self.data.train))
        positions = positions.cpu()
        p.order = positions[torch.randperm(len(positions), generator=self.data_generator)]
        p.cursor = 0
        p.epoch_stats = EpochStats()
        p.overflow_at_epoch_start = self.accumulator.overflow if self.accumulator else 0

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
        stats = p.epoch_stats
        with self.timers("train"):  # reading and augmenting the batch is part of training
            # several processes: every rank reads the whole candidate batch (the same augmented
            # tensors, from the same random streams); only forwards and backwards are shared out
            batch = Batch(train.indices[positions], next(inputs), train.targets[positions])
            if s.channels_last and batch.x.dim() == 4:
                batch.x = batch.x.contiguous(memory_format=torch.channels_last)
        if self.world.active and self.selector.scope == "local":
            self.candidate_batch_local(batch)
            return
        with self.timers("select"):
            view = BatchView(batch, self.model, self.sources, self.autocast, shard=True)
            selection = self.selector.select(batch, view, accumulating=self.accumulator is not None)
        stats.fallbacks += int(selection.fallback)
        with self.timers("diag"):
            diagnostics = selection_diagnostics(
                batch, view, selection, self.data, s.label_noise, self.selector.loss_diagnostics
            )
        stats.add_diagnostics(diagnostics)
        if p.epoch == 0 and p.cursor == s.example_batch and self.world.is_main:  # SALN Fig. 7-8
            save_selection_example(
                self.run_dir, self.data, batch, selection, s.selector_name, p.cursor
            )
        kept = batch if len(selection.positions) == len(batch) else batch.take(selection.positions)
        if selection.weights is not None:
            kept = Batch(kept.index, kept.x, kept.y, selection.weights)
        stats.seen += len(batch)
        stats.kept += len(kept)
        stats.candidate_batches += 1
        p.seen += len(batch)
        if self.accumulator is None:
            self.train_step(kept)
            return
        self.accumulator.add(kept)
        run_end = last and p.epoch == s.epochs - 1
        while (ready := self.accumulator.ready(epoch_end=last, run_end=run_end)) is not None:
            self.train_step(ready)

    def candidate_batch_local(self, batch: Batch) -> None:
        """`selector.scope=local` on several processes: each rank selects within its share of
        the candidate batch (InfoBatch's and most multi-GPU implementations' way) and trains on
        what it kept. Counts are summed over ranks; a diagnostic is the mean of the ranks'
        values (each over its share); the selection example is rank 0's share."""
        s, p, stats, world = self.settings, self.progress, self.progress.epoch_stats, self.world
        mine = batch.take(torch.arange(len(batch), device=batch.y.device)[world.share(len(batch))])
        with self.timers("select"):
            view = BatchView(mine, self.model, self.sources, self.autocast)
            selection = self.selector.select(mine, view, accumulating=False)
        with self.timers("diag"):
            diagnostics = selection_diagnostics(
                mine, view, selection, self.data, s.label_noise, self.selector.loss_diagnostics
            )
        if p.epoch == 0 and p.cursor == s.example_batch and world.is_main:
            save_selection_example(
                self.run_dir, self.data, mine, selection, s.selector_name, p.cursor
            )
        keys = sorted(diagnostics)
        local = torch.tensor(
            [len(selection.positions), int(selection.fallback), *(diagnostics[k] for k in keys)],
            dtype=torch.float64,
            device=self.pending.device,
        )
        summed = distributed.all_reduce_sum(local).tolist()
        kept_total, fallbacks = int(summed[0]), int(summed[1])
        stats.add_diagnostics({k: v / world.size for k, v in zip(keys, summed[2:], strict=True)})
        stats.fallbacks += fallbacks
        kept = mine.take(selection.positions)
        if selection.weights is not None:
            kept = Batch(kept.index, kept.x, kept.y, selection.weights)
        stats.seen += len(batch)
        stats.kept += kept_total
        stats.candidate_batches += 1
        p.seen += len(batch)
        self.train_step(kept, total=kept_total)

    def train_step(self, batch: Batch, total: int | None = None) -> None:
        if self.world.active:
            self.train_step_shared(batch, total)
            return
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

    def train_step_shared(self, batch: Batch, total: int | None) -> None:
        """One optimizer step on several processes. `batch` is the whole step's batch (scope
        global: every rank trains its contiguous share of it) or, with `total` (scope local),
        this rank's kept samples out of `total` over all ranks.

        One process minimises mean_k(w_k * l_k) over the K samples of the step; DDP averages the
        ranks' gradients, so rank r minimises world / K * sum_{k in r} w_k * l_k: the same
        gradient, up to the order of the floating-point sums. The per-sample losses, correctness
        and indices of the step are gathered, so that counts, forgetting and the selector's
        observed losses are those of the whole step on every rank (their state, which rank 0
        checkpoints, stays the same on all ranks)."""
        p, stats, world = self.progress, self.progress.epoch_stats, self.world
        with self.timers("train"):
            if total is None:
                total, sizes = len(batch), world.sizes(len(batch))
                mine = torch.arange(len(batch), device=batch.y.device)[world.share(len(batch))]
                batch = batch.take(mine)
            else:
                sizes = None  # each rank's count is its own selection's: gathered
            self.model.train()
            with self.autocast():
                logits = self.train_forward(batch.x)
            per_sample = F.cross_entropy(logits.float(), batch.y, reduction="none")
            weighted = per_sample if batch.w is None else per_sample * batch.w
            loss = weighted.sum() * (world.size / max(total, 1))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            correct = logits.detach().argmax(1) == batch.y
            rows = torch.stack(
                [per_sample.detach().double(), correct.double(), batch.index.double()], dim=1
            )
            rows = distributed.all_gather_cat(rows, sizes)
            losses, correct, index = rows[:, 0], rows[:, 1] > 0.5, rows[:, 2].long()
            if self.selector.wants_training_losses:
                self.selector.observe_training_losses(index, losses.float())
            forgotten = self.forgetting.update(index, correct)
            sums = torch.stack([losses.sum(), correct.sum(), forgotten])
            self.pending += sums.to(self.pending.dtype)
        stats.steps += 1
        stats.backprop += len(index)
        p.steps += 1
        p.backprop += len(index)

    def flush(self) -> None:
        """Move the device-side sums into the epoch's counts; stop on a non-finite loss.

        Called every `trainer.log_every_steps` batches and before checkpoints and evaluation, so
        a GPU is not made to wait for the host after every step."""
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
        acc = self.accumulator
        overflow = (acc.overflow - p.overflow_at_epoch_start) if acc else 0
        staged = acc.count if acc else 0
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
            "selector": self.selector.state_dict(),
            "accumulator": self.accumulator.state_dict() if self.accumulator else None,
            "forgetting": self.forgetting.state_dict(),
            "progress": self.progress.state_dict(),
            "rng": rng_state(self.data_generator),
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "wandb_id": self.tracking.run_id if self.tracking is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.selector.load_state_dict(state["selector"])
        if self.accumulator and state["accumulator"]:
            self.accumulator.load_state_dict(state["accumulator"], self.device)
        self.forgetting.load_state_dict(state["forgetting"])
        self.progress = Progress.from_state(state["progress"])
        restore_rng_state(state["rng"], self.data_generator)

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
        check_same_run(
            state["config"], OmegaConf.to_container(self.cfg, resolve=True), self.run_dir
        )
        self.load_state_dict(state)
        if self.tracking is not None:
            self.tracking.files.rewrite_metrics(self.progress.history)
        where = f"epoch {self.progress.epoch}" + (
            f", batch {self.progress.cursor}" if self.progress.mid_epoch else ""
        )
        log.info("resumed from %s (%s)", self.run_dir, where)
        return True

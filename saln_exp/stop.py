"""Stopping a run on request: SIGTERM, SIGUSR2 (outside Slurm) and Ctrl-C.

A signal during the training loop asks the trainer to stop after the current candidate batch:
it writes a checkpoint there (when checkpoints are on) and raises `Interrupted`, so the run resumes
exactly where it stopped. A signal anywhere else (reading data, training a reference model), or a
second signal, raises `Interrupted` at once. The entry point turns it into status `interrupted` and
prints the command that resumes the run (saln_exp.resume).

Under Slurm and submitit, submitit owns SIGUSR2 and SIGTERM (it checkpoints and requeues the job
itself), so only Ctrl-C is taken over there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)


class Interrupted(BaseException):
    """The run was asked to stop. Not an Exception, so no `except Exception` swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(self.signal_name)


class ReaderStopped(Interrupted):
    """The signal also ended the workers decoding the next batch, before it was read: nothing of
    that batch has happened, so the trainer checkpoints before it and stops."""


@dataclass
class StopState:
    requested: int | None = None  # the signal number, once one arrived
    deferred: bool = False  # True while the trainer checks `requested` after every batch


STATE = StopState()


def under_a_scheduler() -> bool:
    return "SLURM_JOB_ID" in os.environ or "SUBMITIT_EXECUTOR" in os.environ


def handled_signals() -> list[int]:
    if under_a_scheduler():
        return [signal.SIGINT]
    return [signal.SIGINT, signal.SIGTERM, signal.SIGUSR2]


def _handler(signum: int, frame) -> None:
    first = STATE.requested is None
    STATE.requested = signum
    if first and STATE.deferred:
        log.warning("%s: stopping after this batch (send it again to stop at once)",
                    signal.Signals(signum).name)  # fmt: skip
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopState]:
    """Install the handlers for the duration of one run (restored after, as a sweep runs many)."""
    STATE.requested, STATE.deferred = None, False
    previous = {}
    try:
        for signum in handled_signals():
            previous[signum] = signal.signal(signum, _handler)
    except ValueError:  # not the main thread (e.g. a thread pool launcher): keep the defaults
        pass
    try:
        yield STATE
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        STATE.requested, STATE.deferred = None, False


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """The trainer's loop: a signal sets `STATE.requested` instead of raising."""
    STATE.deferred = True
    try:
        yield
    finally:
        STATE.deferred = False


def check() -> None:
    """Raise `Interrupted` if a stop was requested (the trainer calls it at safe points)."""
    if STATE.requested is not None:
        raise Interrupted(STATE.requested)

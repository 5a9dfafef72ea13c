"""Images read from their files batch by batch: folders too large to decode into memory.

A streamed split holds file paths, not pixels. Every read decodes the files it needs exactly as
the one-time decode into memory does (`folder.Decoder`: open, convert, resize), so a streamed run
computes the same numbers as the same run in memory; only where the pixels come from differs
(and the time: every epoch decodes its files again, as any ImageNet loader does).

The loops that read whole splits (the training epoch, evaluation, reference and pruning fits,
feature extraction) take their batches from `ImageFiles.batches`: a DataLoader whose workers
decode the next chunks of positions while the device works on this one. A single batch read
elsewhere (`read`) is decoded in this process.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import PIL.Image
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2 as T

from saln_exp import stop
from saln_exp.errors import DataCorruptError, DataReaderError

Positions = Tensor | np.ndarray | slice | Sequence[int]
# what PIL raises on a file it cannot decode: not an image (UnidentifiedImageError, an OSError),
# truncated ("image file is truncated", OSError), a broken PNG chunk (SyntaxError, ValueError),
# an absurd size (DecompressionBombError)
UNDECODABLE = (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError)
PREFETCH = 2  # chunks decoded ahead per worker (DataLoader's prefetch_factor)


class ImageFiles:
    """A split's images as files: `paths[i]` decodes to uint8 channels x size x size."""

    dtype = torch.uint8

    def __init__(self, paths: np.ndarray | Sequence[str], channels: int, size: int,
                 workers: int, name: str):  # fmt: skip
        # a numpy string array, not a list: forked DataLoader workers then share one buffer
        # instead of copying a million Python strings as their reference counts are touched
        self.paths = np.asarray(paths, dtype=np.str_)
        self.channels, self.size, self.workers, self.name = channels, size, int(workers), name

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, self.size, self.size)

    def subset(self, positions: Positions) -> ImageFiles:
        """The files at `positions`, in that order (a split carved from this one)."""
        return self._with(self.paths[_as_index(positions, len(self))])

    @classmethod
    def concat(cls, parts: Sequence[ImageFiles]) -> ImageFiles:
        return parts[0]._with(np.concatenate([part.paths for part in parts]))

    def _with(self, paths: np.ndarray) -> ImageFiles:
        return ImageFiles(paths, self.channels, self.size, self.workers, self.name)

    def read(self, positions: Positions) -> Tensor:
        """uint8 [len(positions), C, S, S], decoded in this process."""
        return _checked(_ChunkDecoder(self)[_as_index(positions, len(self))])

    def batches(self, chunks: Iterable[Positions], pin_memory: bool = False) -> Iterator[Tensor]:
        """uint8 images of each chunk of positions, in order, decoded ahead in `workers`
        DataLoader processes (in this one with `workers: 0`)."""
        chunks = [_as_index(chunk, len(self)) for chunk in chunks]
        if not chunks:
            return
        workers = min(self.workers, os.cpu_count() or 1, len(chunks))
        loader = DataLoader(
            _ChunkDecoder(self),
            sampler=chunks,
            batch_size=None,  # each sampled item is a whole chunk, decoded by one worker
            num_workers=workers,
            prefetch_factor=PREFETCH if workers else None,
            pin_memory=pin_memory,
            worker_init_fn=leave_signals_to_the_main_process,
            # the loader draws its workers' base seed from this generator, not from torch's
            # global one, which batch augmentation draws from: streaming changes no number
            generator=torch.Generator(),
        )
        decoded_chunks = iter(loader)
        try:
            for decoded in decoded_chunks:
                yield _checked(decoded)
        except (RuntimeError, ConnectionError, EOFError) as err:
            if not _a_worker_died(err):
                raise
            if stop.STATE.requested is not None:  # the signal that stops the run ended them
                raise stop.ReaderStopped(stop.STATE.requested) from err
            raise DataReaderError(_died(self.name, err)) from err
        finally:  # a worker died, or closed early (an error in the caller): end them now, not
            _end_workers(decoded_chunks)  # when the traceback that holds the iterator is collected


@contextlib.contextmanager
def worker_deaths_reported() -> Iterator[None]:
    """Around a whole training: PyTorch's SIGCHLD handler raises "DataLoader worker (pid N) is
    killed by signal" at whatever line the main process is on when a decoding worker dies (the
    system's OOM killer does not wait for the loader to be read: most often the line is in the
    training step), outside `batches`. That error becomes the same one line as a death `batches`
    notices itself."""
    try:
        yield
    except RuntimeError as err:
        if not _a_worker_died(err):
            raise
        raise DataReaderError(_died("a streamed split", err)) from err


def _died(name: str, err: Exception) -> str:
    return (
        f"{name}: a worker decoding its images died ({err}); most often the system killed it "
        "for memory: set dataset.workers lower (0 decodes in the main process)"
    )


def _a_worker_died(err: Exception) -> bool:
    """PyTorch says "DataLoader worker (pid ...) exited unexpectedly" or "... is killed by
    signal", whichever of its SIGCHLD handler and its queue poll notices first; a worker killed
    while handing over a batch can also leave the main process a reset connection, or an
    EOFError from the shared-memory handover (multiprocessing's resource sharer)."""
    return isinstance(err, (ConnectionError, EOFError)) or str(err).startswith("DataLoader worker")


def _end_workers(decoded_chunks: Iterator) -> None:
    """What the loader's iterator does when it is garbage-collected, done now: the exception's
    traceback keeps the iterator alive, and until it stops watching its dead workers, PyTorch's
    SIGCHLD handler raises again at whatever line runs next."""
    shutdown = getattr(decoded_chunks, "_shutdown_workers", None)  # none without workers
    if shutdown is None:
        return
    try:
        shutdown()  # its `finally` stops the watch even when the handler raises in its joins
    except RuntimeError as another:  # a second dead worker, noticed while joining the others
        if not _a_worker_died(another):
            raise


class Decoder(Dataset):
    """One image file -> uint8 channels x size x size; a file that cannot be decoded gives zeros
    and the reason (raised in the main process, naming the file, never as a worker traceback)."""

    def __init__(self, paths: list[str], channels: int, size: int):
        self.paths, self.channels, self.size = paths, channels, size
        self.mode = "L" if channels == 1 else "RGB"
        self.resize = T.Resize((size, size), antialias=True)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        try:
            with PIL.Image.open(self.paths[i]) as image:
                image = image.convert(self.mode)  # decodes the whole file
            if image.size != (self.size, self.size):
                image = self.resize(image)
            return T.functional.pil_to_tensor(image), ""
        except UNDECODABLE as err:
            reason = str(err).splitlines()[0][:120] if str(err) else "unreadable"
            return torch.zeros(self.channels, self.size, self.size, dtype=torch.uint8), (
                f"{type(err).__name__}: {reason}"
            )


class _ChunkDecoder(Dataset):
    """One chunk of positions -> (their stacked images, "" or why the first file that cannot be
    decoded failed): `_checked` raises it in the main process as one line naming the file,
    never as a worker's traceback."""

    def __init__(self, files: ImageFiles):
        self.files = files
        self.decoder = Decoder(list(files.paths), files.channels, files.size)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, chunk: np.ndarray) -> tuple[Tensor, str]:
        out = torch.empty(len(chunk), self.files.channels, self.files.size, self.files.size,
                          dtype=torch.uint8)  # fmt: skip
        for row, i in enumerate(chunk.tolist()):
            image, error = self.decoder[i]
            if error:
                return out, undecodable(self.files.name, str(self.files.paths[i]), error)
            out[row] = image
        return out, ""


def _checked(decoded: tuple[Tensor, str]) -> Tensor:
    images, error = decoded
    if error:
        raise DataCorruptError(error)
    return images


def undecodable(name: str, path: str, reason: str) -> str:
    return f"{name}: {path} cannot be read as an image ({reason}); replace or delete the file"


def _as_index(positions: Positions, n: int) -> np.ndarray:
    if isinstance(positions, slice):
        return np.arange(n)[positions]
    if isinstance(positions, Tensor):
        return positions.detach().cpu().numpy().astype(np.int64, copy=False)
    return np.asarray(positions, dtype=np.int64)


def leave_signals_to_the_main_process(worker_id: int) -> None:
    """A decoding worker is forked with the main process's signal handlers (saln_exp.stop's, or
    submitit's), which must not run in it. Ctrl-C and SIGTERM, which reach every process of a
    terminal's or Slurm step's group, end the worker at once with status 0; the main process
    stops after its batch and checkpoints (a batch that was still being decoded is
    `ReaderStopped`). SIGUSR2 is the scheduler's word to the main process."""
    signal.signal(signal.SIGINT, _exit_quietly)
    signal.signal(signal.SIGTERM, _exit_quietly)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _exit_quietly(signum: int, frame: object) -> None:
    # not KeyboardInterrupt, as PyTorch's workers take Ctrl-C: a worker leaving by an exception
    # first flushes the batches it queued, and blocks while the main process is not reading
    # them; the main process discards them anyway
    os._exit(0)

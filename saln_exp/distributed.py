"""Multi-process training: the process group, the shares of a batch, and the gathers.

One training runs on N processes (`torchrun --nproc_per_node=N -m saln_exp.train ...`, or a Slurm
job with N tasks through submitit). `WORLD` is this process's place in it; with one process
(no RANK / WORLD_SIZE in the environment) every helper here is a no-op and the single-process
path is the code that ran before this module existed.

How work is split (docs/distributed.md): every rank holds the whole dataset and draws the same
epoch order; of every candidate batch of `dataset.batch_size` positions rank r scores and trains
its contiguous share (`share`). Collectives are called by every rank in the same order, because
every rank runs the same selection on the same (gathered) numbers.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)

# seconds a collective may wait for a peer before the run ends (a dead peer is noticed by
# torchrun at once; this bounds the case of a peer that hangs without dying)
DEFAULT_TIMEOUT_S = 300
# seconds a rank waits on the rendezvous store while naming a peer that died
STORE_TIMEOUT_S = 5


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int, rank: int | None = None) -> tuple[int, int]:
        """[start, end) of `rank`'s contiguous share of n positions (sizes differ by at most 1)."""
        r = self.rank if rank is None else rank
        base, extra = divmod(n, self.size)
        start = r * base + min(r, extra)
        return start, start + base + (1 if r < extra else 0)

    def sizes(self, n: int) -> list[int]:
        return [end - start for start, end in (self.bounds(n, r) for r in range(self.size))]

    def share(self, n: int) -> slice:
        start, end = self.bounds(n)
        return slice(start, end)


WORLD = World()
# a client of the rendezvous store (torchrun's agent, or rank 0 under Slurm) in which every rank
# wrote which process it is: what a rank whose peer vanished reads to name it
_STORE: dist.Store | None = None


def from_env() -> World:
    """This process's rank and world size: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, or under
    Slurm (a submitit job of several tasks: `hydra.launcher.tasks_per_node`, `nodes`)
    submitit's TorchDistributedEnvironment, which sets them (and MASTER_ADDR / MASTER_PORT) from
    the job. Every process keeps seeing all of the node's GPUs and takes cuda:LOCAL_RANK, as under
    torchrun."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        try:
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        except (ImportError, RuntimeError, KeyError) as err:  # not a submitit job: one process
            log.debug("no Slurm distributed environment: %s", err)
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def setup(device_request: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
    """Join the process group (nccl on CUDA, gloo on CPU) when there are several processes;
    sets `WORLD`. Returns it; with one process nothing is initialised."""
    global WORLD
    world = from_env()
    if world.active and not dist.is_initialized():
        cuda = torch.cuda.is_available() and str(device_request) in ("auto", "cuda")
        if cuda:
            torch.cuda.set_device(cuda_index(world))
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            timeout=datetime.timedelta(seconds=float(timeout_s)),
        )
        register(world)
    WORLD = world
    return world


def adopt_process_group() -> World:
    """`WORLD` for a process group that someone else initialised: a user's own torchrun script
    that called `torch.distributed.init_process_group` and uses the public selection API."""
    global WORLD
    if dist.is_available() and dist.is_initialized() and WORLD.size != dist.get_world_size():
        WORLD = World(
            rank=dist.get_rank(),
            size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        )
    return WORLD


def _process_key(rank: int) -> str:
    # a torchrun restart starts the ranks again under the same store: keys of this attempt only
    return f"saln_exp/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/rank{rank}"


def register(world: World) -> None:
    """Write `host pid` of this rank into the rendezvous store (MASTER_ADDR:MASTER_PORT, which
    torchrun and submitit set), so that a rank whose peer vanishes can say which one died."""
    global _STORE
    try:
        _STORE = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
            timeout=datetime.timedelta(seconds=STORE_TIMEOUT_S),
        )  # fmt: skip
        _STORE.set(_process_key(world.rank), f"{socket.gethostname()} {os.getpid()}")
    except (KeyError, ValueError, RuntimeError) as err:  # no store to reach: peers stay unnamed
        log.debug("ranks not registered in the store: %s", err)
        _STORE = None


def dead_peers(world: World, attempts: int = 5) -> list[str]:
    """`rank R (pid P on H)` for each other rank whose process is gone, as far as this rank can
    tell: peers on this host, found in the store. A peer on another host, or one that hangs,
    is not named. The killed process's sockets close an instant before the kernel marks it
    dead, so a few short looks."""
    if _STORE is None:
        return []
    try:
        peers = [
            (rank, *_STORE.get(_process_key(rank)).decode().split())
            for rank in range(world.size)
            if rank != world.rank and _STORE.check([_process_key(rank)])
        ]
    except (RuntimeError, ValueError) as err:  # the store went down with its host
        log.debug("the store cannot say which rank died: %s", err)
        return []
    here = socket.gethostname()
    for attempt in range(attempts):
        dead = [
            f"rank {rank} (pid {pid} on {host})"
            for rank, host, pid in peers
            if host == here and not _process_alive(int(pid))
        ]
        if dead or attempt == attempts - 1:
            return dead
        time.sleep(0.2)
    return []


def _process_alive(pid: int) -> bool:
    """False for a process that has ended, a zombie included (torchrun has not reaped it yet);
    True where /proc cannot tell (so nothing is claimed)."""
    if not Path("/proc/self").exists():
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")  # the state follows the name


def teardown() -> None:
    global WORLD, _STORE
    if dist.is_initialized():
        dist.destroy_process_group()
    WORLD, _STORE = World(), None


# a client of the rendezvous store (torchrun's agent, or rank 0 under Slurm) in which every rank
# wrote which process it is: what a rank whose peer vanished reads to name it
_STORE: dist.Store | None = None


def device_for(request: str, world: World) -> str:
    """`auto` / `cuda` on a multi-GPU node means this process's GPU (cuda:LOCAL_RANK)."""
    if world.active and str(request) in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{cuda_index(world)}"
    return str(request)


def cuda_index(world: World) -> int:
    """cuda:LOCAL_RANK among the node's GPUs; cuda:0 where the scheduler shows each process only
    its own GPU (Slurm's --gpus-per-task binding)."""
    return 0 if torch.cuda.device_count() == 1 else world.local_rank


def failure_line(world: World, err: BaseException) -> str:
    """The one line a failing rank prints. A rank whose peer died sees only a broken connection
    (gloo) or a timeout: it says so, and torchrun's summary names the rank that failed first."""
    text = str(err).splitlines()[0] if str(err) else ""
    lost = isinstance(err, dist.DistError) or any(
        word in text for word in ("Connection reset", "Connection closed", "Timed out", "timeout")
    )
    if lost:
        dead = dead_peers(world)
        why = (
            f"{' and '.join(dead)} died"
            if dead
            else "another rank ended or stopped answering; torchrun's 'Root Cause' names it"
        )
        return f"error: rank {world.rank} of {world.size} lost its peers ({text[:160]}): {why}"
    return f"error: rank {world.rank} of {world.size} failed: {type(err).__name__}: {text}"


# -- collectives (no-ops with one process) -------------------------------------------------------
def all_gather_cat(tensor: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate every rank's `tensor` along dim 0, in rank order. Row counts may differ:
    pass them (`sizes`, known when the shares are) or they are gathered first."""
    if not WORLD.active:
        return tensor
    if sizes is None:
        mine = torch.tensor([tensor.shape[0]], device=tensor.device)
        counts = [torch.zeros_like(mine) for _ in range(WORLD.size)]
        dist.all_gather(counts, mine)
        sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(WORLD.size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The sum over ranks (a new tensor; the argument is left as it was)."""
    if not WORLD.active:
        return tensor
    out = tensor.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_object(obj: object) -> object:
    """Rank 0's `obj` on every rank."""
    if not WORLD.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if WORLD.active:
        dist.barrier()

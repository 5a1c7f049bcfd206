"""Several processes launched by ``torchrun``: who this process is and how the ranks talk.

A run under ``torchrun`` (env ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``) joins one process group:
gloo on CPUs, NCCL on CUDA GPUs (``cuda:LOCAL_RANK``). Without ``torchrun`` nothing here
starts and every helper is the identity, so a single process runs exactly as before.

Why the batch is gathered: the high-rankness term is the nuclear norm of the *whole* batch's
prediction matrix, and ||[P_0; P_1]||_* is not ||P_0||_* + ||P_1||_*; averaging per-rank
losses optimises another objective. Each rank therefore gathers every rank's embeddings
(:func:`gather_cat`, PyTorch's differentiable all-gather: autograd flows back, its backward
*sums* every rank's gradient into the rank that owns the rows) and computes the
method's loss on the global batch. With W ranks each rank's local embeddings get W times
d(loss)/d(own rows), and DDP's gradient *average* divides by W again: the network's gradient
is exactly the single-process gradient on the concatenated batch, with no loss scaling. The
method's own parameters (class weights) see the global loss on every rank, so their
gradients already agree; :func:`average_gradients` only removes float noise between ranks.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from rsdml.errors import RsdmlError
from rsdml.training.launch import launched_by_torchrun  # noqa: F401  (re-exported)


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks; ``Dist()`` is the single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    #: A gloo group for host-side agreement (stop flags) that never waits on a GPU.
    control: Any = None

    @property
    def enabled(self) -> bool:
        """Whether this process is one of a ``torchrun`` group (even a group of one)."""
        return dist.is_available() and dist.is_initialized()

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file and prints every line."""
        return self.rank == 0


#: How long a rank waits in a collective before it fails (rank 0 builds the decoded-image
#: cache while the others wait for it).
TIMEOUT_MINUTES = 120

_current = Dist()
#: This process's rank in the group it last left (``rsdml train`` prints its summary after).
_last_rank = 0


def current() -> Dist:
    return _current


def init(device: str) -> Dist:
    """Join the ``torchrun`` group (once; later calls return it): gloo for ``device`` cpu,
    NCCL for cuda. Returns ``Dist()`` outside ``torchrun``."""
    global _current
    if _current.enabled or not launched_by_torchrun():
        return _current
    if not (dist.is_available() and dist.is_gloo_available()):
        raise RsdmlError("this PyTorch build has no torch.distributed (gloo); run without "
                         "torchrun or install a PyTorch with distributed support")
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "gloo"
    if device.startswith("cuda"):
        if torch.cuda.device_count() <= local_rank:
            raise RsdmlError(f"torchrun started local rank {local_rank} but this node has "
                             f"{torch.cuda.device_count()} CUDA device(s); lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    # Generous: the other ranks wait in a collective while rank 0 builds the image cache.
    timeout = datetime.timedelta(minutes=TIMEOUT_MINUTES)
    dist.init_process_group(backend, timeout=timeout)
    control = (dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo"
               else dist.group.WORLD)
    _current = Dist(dist.get_rank(), dist.get_world_size(), local_rank, control)
    if not _current.is_main:  # rank 0 speaks for the group; the others only report errors
        logging.getLogger("rsdml").setLevel(logging.ERROR)
    return _current


def is_main() -> bool:
    """Whether this process writes files and prints (rank 0, or the only process)."""
    return _current.is_main if _current.enabled else _last_rank == 0


def teardown(clean: bool = True) -> None:
    """Leave the group; ``clean``: after a last barrier, so no rank exits while another still
    talks (after an error the others may never reach it: torchrun stops them)."""
    global _current, _last_rank
    _last_rank = _current.rank
    if _current.enabled:
        if clean:
            dist.barrier(group=_current.control)
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    _current = Dist()
#: This process's rank in the group it last left (``rsdml train`` prints its summary after).
_last_rank = 0


@contextlib.contextmanager
def joined(device: str) -> Iterator[Dist]:
    """The block as one rank of the ``torchrun`` group (``Dist()`` without torchrun): joins
    it for ``device`` and leaves it after the block (without the last barrier on an error);
    a group the caller had joined already is left to the caller."""
    if _current.enabled:
        yield _current
        return
    d = init(device)
    try:
        yield d
    except BaseException:
        teardown(clean=False)
        raise
    teardown()


def resolve_device(name: str) -> torch.device:
    """The device a run uses; ``cuda`` is this rank's GPU under torchrun. (Here, below the
    runner and the embedding code that both need it.)"""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RsdmlError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(device_of(name))


def device_of(name: str) -> str:
    """``cuda`` means this rank's GPU under ``torchrun``."""
    if name == "cuda" and _current.enabled:
        return f"cuda:{_current.local_rank}"
    return name


def barrier() -> None:
    if _current.enabled:
        dist.barrier(group=_current.control)


def agree_max(value: int) -> int:
    """The largest ``value`` over the ranks (a stop signal seen by any rank stops all)."""
    if not _current.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_current.control)
    return int(t.item())


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (creates folders, builds caches, downloads weights), the
    other ranks after it; if rank 0 fails, the others stop with its message instead of
    waiting for ever."""
    if not _current.enabled:
        yield
        return
    if _current.is_main:
        try:
            yield
        except BaseException as e:
            _share([f"{e}" if isinstance(e, RsdmlError) else f"rank 0 failed: {type(e).__name__}: {e}"])
            raise
        _share([None])
    else:
        message = _share([None])[0]
        if message is not None:
            raise RsdmlError(message)
        yield


def _share(obj: list[Any]) -> list[Any]:
    dist.broadcast_object_list(obj, src=0, group=_current.control)
    return obj


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (a small picklable value)."""
    if not _current.enabled:
        return obj
    return _share([obj])[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's picklable ``obj``, in rank order (over the gloo control group: host
    memory, whatever the devices)."""
    if not _current.enabled:
        return [obj]
    out: list[Any] = [None] * _current.world_size
    dist.all_gather_object(out, obj, group=_current.control)
    return out


def shard(index: Tensor, d: Dist | None = None) -> Tensor:
    """This rank's contiguous slice of a global batch: disjoint over the ranks, in rank order,
    so gathering the slices rebuilds the batch as one process sees it."""
    d = d or _current
    if d.world_size == 1:
        return index
    return index.tensor_split(d.world_size)[d.rank]


def shard_sizes(total: int, world_size: int) -> list[int]:
    """The sizes of :func:`shard`'s slices of ``total`` rows (``Tensor.tensor_split``'s)."""
    return [total // world_size + (1 if r < total % world_size else 0) for r in range(world_size)]


def gather_cat(t: Tensor, total: int | None = None) -> Tensor:
    """Every rank's ``t`` (the same trailing shape, any number of rows), concatenated in rank
    order on every rank. Differentiable: gradients reach each rank's own rows, summed over the
    ranks that used them. ``total``: the rows of all ranks when the slices are :func:`shard`'s
    of that many (the sizes are then known without asking the ranks, and a GPU without a
    host wait)."""
    if not _current.enabled or _current.world_size == 1:
        return t
    if total is not None:
        counts = shard_sizes(total, _current.world_size)
    else:
        sizes = [torch.zeros(1, dtype=torch.int64, device=t.device)
                 for _ in range(_current.world_size)]
        dist.all_gather(sizes, torch.tensor([len(t)], dtype=torch.int64, device=t.device))
        counts = [int(s.item()) for s in sizes]
    most = max(counts)
    padded = t if len(t) == most else torch.cat([t, t.new_zeros((most - len(t), *t.shape[1:]))])
    if t.requires_grad:
        parts = list(_all_gather_autograd(padded).split(most))
    else:
        parts = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, counts)])


def _all_gather_autograd(t: Tensor) -> Tensor:
    """Every rank's equal-shape ``t`` stacked along dim 0, differentiable (backward: the sum
    over the ranks of the gradient of each rank's rows). PyTorch's functional collective where
    it has one; ``torch.distributed.nn`` (deprecated since 2.6 in its favour) otherwise."""
    try:
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(t))
    return all_gather_single_autograd(t.contiguous(), 0, dist.group.WORLD)  # type: ignore[no-any-return]


def average_gradients(params: Iterable[Tensor]) -> None:
    """Average ``.grad`` over the ranks for parameters outside DDP (the method's)."""
    if not _current.enabled or _current.world_size == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(_current.world_size)

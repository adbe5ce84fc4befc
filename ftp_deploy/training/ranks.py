"""The processes of a data-parallel training run, over torch.distributed, and the few collectives it needs.

A run of N processes must end where one process with the same global batch and seed ends, so
nothing here depends on the rank except which share of the work a process does:

- `share`: each rank's contiguous rows of the global training batch;
- `global_mean`: a loss term's mean over the whole global batch, with the gradient of this
  rank's share only, so that summing the ranks' gradients (`sum_`) gives the gradient of
  the one-process loss, even for terms that are nonlinear in a mean (the sparsity penalty);
- `map`: independent evaluations (the search's genomes, the calibration chunks) dealt out
  round-robin and gathered exactly, so every rank sees the same values and decides alike;
- `agree`: rank 0's answer to a question whose answer differs by rank (is the time budget spent?);
- `from_main`: work done once on rank 0 (reading the run folder, the data), sent to all ranks.

With one process every method is the plain computation, with no process group.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from ftp_deploy.errors import ConfigError, FtpDeployError, RankFailure
from ftp_deploy.training.config import RANK_TIMEOUT_S

T = TypeVar("T")
R = TypeVar("R")

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Ranks:
    """This process's place among `world` processes; `Ranks()` is a single process."""

    rank: int = 0
    world: int = 1
    timeout_s: float = RANK_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, count: int) -> slice:
        """This rank's contiguous rows of `count` global rows (shares differ by at most one row)."""
        if count < self.world:
            raise ConfigError(
                f"--batch-size {count} (the global batch) cannot be shared by {self.world} processes; "
                f"use at least {self.world}"
            )
        return slice(self.rank * count // self.world, (self.rank + 1) * count // self.world)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` over the ranks, in place; every rank gets the same values."""
        if self.world > 1:
            self._collective(lambda: dist.all_reduce(tensor, dist.ReduceOp.SUM))
        return tensor

    def global_mean(self, local_mean: torch.Tensor, weight: int) -> torch.Tensor:
        """The mean over all ranks of per-rank means weighted by their row counts, elementwise.

        Its value is the global mean on every rank; its gradient is that of this rank's share
        (`weight / total weight` times the gradient of `local_mean`), so a loss built from it
        and backpropagated on every rank leaves gradients that sum to the global loss's.
        """
        if self.world == 1:
            return local_mean
        weights = torch.tensor([weight], dtype=torch.float64)
        packed = self.sum_(torch.cat([local_mean.detach().to(CPU, torch.float64).reshape(-1) * weight, weights]))
        value = (packed[:-1] / packed[-1]).reshape(local_mean.shape).to(local_mean.device, local_mean.dtype)
        share = weight / float(packed[-1])
        return value + (local_mean - local_mean.detach()) * share

    def map(self, fn: Callable[[T], float], items: Sequence[T]) -> list[float]:
        """`[fn(item) for item in items]`, the items dealt out round-robin over the ranks.

        Each value is computed by one rank and gathered as float64, so the list is bit for
        bit what one process computes, and the same on every rank.
        """
        if self.world == 1:
            return [fn(item) for item in items]
        values = torch.zeros(len(items), dtype=torch.float64)
        for index in range(self.rank, len(items), self.world):
            values[index] = fn(items[index])
        return self.sum_(values).tolist()  # the other ranks contribute zeros there: exact

    def agree(self, answer: bool) -> bool:
        """Rank 0's `answer`, on every rank."""
        if self.world == 1:
            return answer
        flag = torch.tensor([int(answer)])
        self._collective(lambda: dist.broadcast(flag, src=0))
        return bool(flag.item())

    def from_main(self, fn: Callable[[], R]) -> R:
        """`fn()` run on rank 0 only, its result (or its FtpDeployError) sent to every rank."""
        if self.world == 1:
            return fn()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = (True, fn())
            except FtpDeployError as err:
                box[0] = (False, err)
        # In-memory objects between this run's own processes; nothing a user loads is unpickled.
        self._collective(lambda: dist.broadcast_object_list(box, src=0, device=CPU))
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def _collective(self, call: Callable[[], object]) -> None:
        try:
            call()
        except (dist.DistError, RuntimeError) as err:
            raise RankFailure(
                f"process {self.rank} of {self.world}: another process of this run stopped or did not answer within "
                f"{self.timeout_s:g} s ({_first_line(err)}); the run folder keeps its last checkpoint: "
                "continue with --resume"
            ) from err


ONE_PROCESS = Ranks()


def _first_line(err: BaseException) -> str:
    """The gist of a backend's error: its first sentence, without the source location gloo puts first."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip())
    return re.split(r"(?<=[a-z])\. |\n", text, maxsplit=1)[0] or type(err).__name__


def launched_world() -> int:
    """Processes in this run as a launcher (torchrun, accelerate launch) announced them; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def backend() -> str:
    """gloo for CPU tensors; NCCL as well for CUDA ones when CUDA is present (one backend per device type)."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


@contextmanager
def joined_ranks(timeout_s: float = RANK_TIMEOUT_S) -> Iterator[Ranks]:
    """This process's `Ranks` under a launcher that set the torch.distributed environment variables.

    Joins the process group (env:// rendezvous) for the duration, and leaves it after. On CUDA,
    each process uses the GPU of its local rank as its current device. A process that does not
    join, or stops answering, ends every other one's wait after `timeout_s` seconds.
    """
    world = launched_world()
    if world == 1:
        yield Ranks(timeout_s=timeout_s)
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend(), timeout=timedelta(seconds=timeout_s))
    except (dist.DistError, RuntimeError, ValueError) as err:
        raise RankFailure(
            f"could not join the {world} processes of this run within {timeout_s:g} s: {_first_line(err)}"
        ) from err
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), timeout_s)
    finally:
        dist.destroy_process_group()

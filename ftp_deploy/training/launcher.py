"""`--num-processes N`: the processes `torchrun --standalone --nproc-per-node N` would start, from one call.

torch.distributed's own elastic launcher (the library behind torchrun) starts the processes,
sets their rendezvous environment and watches them: when one dies, it stops the others. Each
process joins the process group (`joined_ranks`) and runs the same function; a process that
hits an FtpDeployError returns it instead of raising, so the caller can report the one that
caused the stop, in one line, rather than N tracebacks.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from ftp_deploy.errors import ConfigError, FtpDeployError, RankFailure
from ftp_deploy.training.ranks import joined_ranks, launched_world

R = TypeVar("R")


def launch(num_processes: int, fn: Callable[..., R], *args: Any, timeout_s: float, threads: int | None = None) -> R:
    """`fn(ranks, *args)` in `num_processes` local processes; rank 0's return value.

    `fn` and `args` must be picklable (the processes are spawned). Each process runs `threads`
    torch threads (default: this process's threads shared out, at least one), as torchrun's
    one thread per process keeps N processes from oversubscribing the cores.
    """
    if num_processes < 1:
        raise ConfigError(f"--num-processes must be at least 1, got {num_processes}")
    if launched_world() > 1:
        raise ConfigError("--num-processes starts its own processes; under torchrun or accelerate launch leave it out")
    threads = threads or max(1, torch.get_num_threads() // num_processes)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=num_processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # torchrun --standalone: a free local port
        rdzv_configs={"timeout": int(timeout_s)},
        max_restarts=0,  # a failed process stops the run; --resume continues it
        start_method="spawn",
    )
    try:
        results = elastic_launch(config, _rank_main)(fn, threads, timeout_s, args)
    except SignalException as err:  # the launcher has stopped the processes already
        if err.sigval == signal.SIGINT:
            raise KeyboardInterrupt from err
        raise RankFailure(
            f"stopped by {err.sigval.name}; the run folder keeps its last checkpoint: continue with --resume"
        ) from err
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with {failure.exitcode}"
        raise RankFailure(
            f"process {rank} of {num_processes} {how}; the others were stopped and the run folder keeps its last "
            "checkpoint: continue with --resume"
        ) from err
    outcomes = [results[rank] for rank in sorted(results)]
    errors = [value for ok, value in outcomes if not ok]
    if errors:
        # The error that stopped the run, not the RankFailure it caused on the other processes.
        raise next((e for e in errors if not isinstance(e, RankFailure)), errors[0])
    return outcomes[0][1]


def _rank_main(
    fn: Callable[..., R], threads: int, timeout_s: float, args: tuple[Any, ...]
) -> tuple[bool, R | FtpDeployError]:
    # Ctrl-C reaches every process, and the launcher forwards it again: a process ends at once,
    # as a kill would (the run folder survives that), and the launcher reports it once.
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(128 + signum))
    torch.set_num_threads(threads)
    try:
        with joined_ranks(timeout_s) as ranks:
            return True, fn(ranks, *args)
    except FtpDeployError as err:
        return False, err

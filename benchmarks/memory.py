"""Resident memory of this process, from Linux /proc, for the benchmarks (torch-free: child processes import it)."""

from __future__ import annotations

import os
import threading

MIB = 2**20


def status_mib(field: str) -> float:
    """A /proc/self/status memory field in MiB: "VmRSS:" now, "VmHWM:" the peak since the process image loaded."""
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith(field)).split()[1]) / 1024


class RssSampler:
    """Peak resident memory of this process while the context is open, sampled every `interval_s` seconds."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.before = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.before = self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def rise_mib(self) -> float:
        """How far the peak rose above the memory held when the context opened."""
        return (self.peak - self.before) / MIB

"""Named wall-clock timers shared by every driver.

    timers = Timers()
    with timers("rollout"):
        ...
    timers.as_dict()            # {"rollout": 12.3, ...} seconds, accumulated over all uses
    timers.log(writer, step)    # TensorBoard scalars time/<name>

No Ray or torch import here: a driver, a test or a worker can use it anywhere.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator, Optional


class Timers:
    """Accumulating named timers; ``with timers(name):`` adds the block's seconds to ``name``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self._last: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.seconds[name] += dt
            self.counts[name] += 1
            self._last[name] = dt

    def add(self, name: str, seconds: float) -> None:
        """Record time measured elsewhere (for example inside a worker) under ``name``."""
        self.seconds[name] += float(seconds)
        self.counts[name] += 1
        self._last[name] = float(seconds)

    def last(self, name: str) -> float:
        """Seconds of the most recent block named ``name`` (0.0 if never timed)."""
        return self._last.get(name, 0.0)

    def as_dict(self) -> dict[str, float]:
        """Accumulated seconds per name."""
        return {k: float(v) for k, v in self.seconds.items()}

    def log(self, writer, step: int, last: bool = False) -> None:
        """Write ``time/<name>`` scalars to a TensorBoard SummaryWriter (accumulated, or the
        last block's seconds with ``last=True``)."""
        if writer is None:
            return
        source = self._last if last else self.seconds
        for name, value in source.items():
            writer.add_scalar(f"time/{name}", float(value), step)

    def write_tensorboard(self, log_dir, step: int = 0) -> None:
        """Write the accumulated ``time/<name>`` scalars to a new event file in ``log_dir``."""
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
        try:
            self.log(writer, step)
        finally:
            writer.close()

    def summary(self) -> str:
        """One line: ``rollout 12.3s (4x) | label 1.2s (1x)``."""
        return " | ".join(f"{k} {v:.1f}s ({self.counts[k]}x)" for k, v in self.seconds.items())

    def reset(self, name: Optional[str] = None) -> None:
        names = [name] if name else list(self.seconds)
        for n in names:
            self.seconds.pop(n, None)
            self.counts.pop(n, None)
            self._last.pop(n, None)


def eta_seconds(done: float, total: float, elapsed: float) -> float:
    """Seconds the remaining ``total - done`` units take at the rate measured so far
    (``elapsed`` seconds for ``done`` units); nan before any unit is done, 0 once all are."""
    if done <= 0:
        return float("nan")
    return max(0.0, float(total) - float(done)) * float(elapsed) / float(done)


def format_duration(seconds: float) -> str:
    """``75.4`` -> ``"1m15s"``, ``3725`` -> ``"1h02m"``; ``"?"`` for nan or inf."""
    if not seconds == seconds or seconds in (float("inf"), float("-inf")):
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"

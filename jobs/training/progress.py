"""Progress inside an epoch, from rank 0: a line every few percent of the epoch's steps, or a tqdm
bar when its stderr is a terminal, with the images per second of all workers and the time left."""
from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from tqdm import tqdm

log = logging.getLogger("stable_snn.train")

EVERY_PERCENT = 5  # a line each time the epoch crosses another multiple of this


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class EpochProgress:
    """Where rank 0 is in an epoch of ``steps`` steps; :meth:`update` after each step with the images
    it trained on (times ``world``: every worker trains a batch of that size per step).  Other ranks
    get a silent one."""

    def __init__(self, label: str, steps: int, world: int = 1, enabled: bool = True, every_percent: int = EVERY_PERCENT,
                 stream: TextIO | None = None, clock=time.perf_counter) -> None:
        self.label, self.steps, self.world, self.every = label, max(steps, 1), max(world, 1), every_percent
        self.enabled, self.clock = enabled, clock
        self.done = self.images = 0
        self.start = clock()
        self.next_mark = every_percent
        stream = stream if stream is not None else sys.stderr
        self.bar = (tqdm(total=steps, desc=label, unit="step", file=stream, dynamic_ncols=True)
                    if enabled and stream.isatty() else None)

    def update(self, batch_images: int) -> None:
        if not self.enabled:
            return
        self.done += 1
        self.images += batch_images * self.world
        elapsed = self.clock() - self.start
        rate = self.images / elapsed if elapsed > 0 else 0.0
        left = elapsed / self.done * (self.steps - self.done)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{rate:.1f} img/s", refresh=False)
            self.bar.update(1)
            return
        percent = 100 * self.done / self.steps
        if percent >= self.next_mark or self.done == self.steps:
            log.info("%s  %3.0f%% (%d/%d steps)  %.1f img/s  ETA %s", self.label, percent, self.done, self.steps,
                     rate, duration(left))
            while self.next_mark <= percent:
                self.next_mark += self.every

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

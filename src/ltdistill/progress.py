"""Progress for long jobs: periodic log lines with rate and ETA, written to the job's log."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("ltdistill")


class Progress:
    """Call step() once per unit of work; logs at most every `every_s` seconds (and at the end)."""

    def __init__(self, total: int, label: str, every_s: float = 10.0, logger: logging.Logger | None = None) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.every_s = every_s
        self.logger = logger or log
        self.start = self.last = time.perf_counter()
        self.done = 0
        self.base = 0  # units finished before this process started (a resumed job)

    def resumed(self, done: int) -> Progress:
        """Units already finished by an earlier, interrupted run: counted as done, left out of
        the rate (so the ETA reflects this process's speed)."""
        self.done = self.base = int(done)
        if done:
            self.logger.info("%s resumed at %d/%d", self.label, self.done, self.total)
        return self

    def step(self, n: int = 1, **info: float) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            elapsed = now - self.start
            rate = (self.done - self.base) / elapsed if elapsed > 0 else float("inf")
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            extra = " ".join(f"{k}={v:.4g}" for k, v in info.items())
            self.logger.info("%s %d/%d (%.0f%%) elapsed %.0fs eta %.0fs %s", self.label, self.done,
                             self.total, 100 * self.done / self.total, elapsed, eta, extra)


def setup_logging(path: str | None = None, level: int = logging.INFO) -> None:
    """Log to a file (the rule's log:) and to stderr, with timestamps."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if path:
        handlers.append(logging.FileHandler(path, mode="w"))
    logging.basicConfig(level=level, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

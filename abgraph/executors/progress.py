"""A one-line progress display on a terminal; silent elsewhere."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, cached: int, enabled=None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.cached = total, cached
        self.done = self.failed = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, done: int, failed: int, running_labels, force=False, skipped: int = 0) -> None:
        """`skipped`: blocked below a failure or stopped early; settled all the same."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        labels = ", ".join(sorted(running_labels))
        line = (f"\rabgraph [{done + self.cached + failed + skipped}/{self.total}] done {done} cached "
                f"{self.cached} failed {failed}" + (f" skipped {skipped}" if skipped else "")
                + f" | {now - self.start:.0f}s | {labels}")
        self.stream.write(line[:160].ljust(160))
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

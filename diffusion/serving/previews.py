"""When a sampling run shows an x0 preview: one clock, used by the page's handlers and by Ray Serve replicas."""

from __future__ import annotations

import time

PREVIEW_SECONDS = 0.5  # x0 previews at most this often


class PreviewClock:
    """When Generate shows an x0 preview: once `interval` seconds have passed since the run began or since the last
    preview. A run shorter than one interval shows none: its images come before a preview could be looked at, and
    each preview costs a PNG and a message through the queue (a few-step run used to send one at its first step)."""

    def __init__(self, interval: float = PREVIEW_SECONDS, clock=time.monotonic):
        self.interval, self.clock = interval, clock
        self.next_at = clock() + interval

    def due(self) -> bool:
        now = self.clock()
        if now < self.next_at:
            return False
        self.next_at = now + self.interval
        return True

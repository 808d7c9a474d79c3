"""Training speed that counts training alone: previews, saves and pauses are left out of it/s and the ETA,
so neither jumps when a preview runs (the ETA is then the time of the remaining training steps)."""
from __future__ import annotations

import contextlib
import time
from typing import Callable


class TrainingPace:
    def __init__(self, step: int, clock: Callable[[], float] = time.perf_counter):
        self._clock = clock
        self._started = clock()
        self._start_step = step
        self._excluded = 0.0

    @contextlib.contextmanager
    def excluded(self):
        """Time spent in the block does not count as training time."""
        began = self._clock()
        try:
            yield
        finally:
            self._excluded += self._clock() - began

    def steps_per_second(self, step: int) -> float:
        training = self._clock() - self._started - self._excluded
        return (step - self._start_step) / max(training, 1e-9)

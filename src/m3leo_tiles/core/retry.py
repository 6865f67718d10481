"""Retrying what failed transiently (quota, timeout, 5xx), with capped exponential backoff.

Sources declare their policy (a local file never needs a retry, Earth Engine's quota wants
waits of tens of seconds) and the download cache has its own; both use this one loop.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How a source retries a tile that failed transiently (quota, timeout, 5xx).

    Sources differ by orders of magnitude: a local file never needs a retry, an HTTP mirror
    wants a second or two, Earth Engine's quota wants waits of tens of seconds. Retry ``n``
    (1, 2, ...) waits ``min(max_delay_s, base_delay_s * 2**(n-1))``, spread by ``jitter`` so
    that many workers throttled at once do not come back at once.
    """

    attempts: int = 3  # tries in all; 1 = no retry
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    jitter: float = 0.25  # ± this fraction of the delay, uniform

    def delay(self, retry: int, rng: Callable[[], float] = random.random) -> float:
        base = min(self.max_delay_s, self.base_delay_s * 2 ** max(0, retry - 1))
        return max(0.0, base * (1.0 + self.jitter * (2.0 * rng() - 1.0)))

    def run(
        self,
        call: Callable[[], T],
        *,
        is_transient: Callable[[BaseException], bool],
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """``call()``, retried while it fails transiently; the last error is raised."""
        for attempt in range(1, max(1, self.attempts) + 1):
            try:
                return call()
            except Exception as error:
                if attempt >= self.attempts or not is_transient(error):
                    raise
                sleep(self.delay(attempt))
        raise AssertionError("unreachable")

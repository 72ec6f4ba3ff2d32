"""Jittered exponential backoff, for reconnecting and for retrying downloads.

"Full jitter": each delay is drawn uniformly between zero and the exponential ceiling, so
thousands of devices that lost the broker at the same moment do not return at the same moment.
"""

import random


class Backoff:
    """Delays that grow from `minimum` towards `maximum`, each one randomised."""

    def __init__(
        self,
        minimum: float,
        maximum: float,
        *,
        factor: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < minimum <= maximum:
            raise ValueError("backoff needs 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.factor = factor
        self.failures = 0
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography

    def ceiling(self) -> float:
        """The largest delay the next call may return."""
        return min(self.maximum, self.minimum * self.factor**self.failures)

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        ceiling = self.ceiling()
        self.failures += 1
        # Never below `minimum`: a broker refusing instantly must not be hammered.
        return (
            self.minimum + self._rng.uniform(0, ceiling - self.minimum)
            if ceiling > self.minimum
            else self.minimum
        )

    def reset(self) -> None:
        """Forget the failures (after a success)."""
        self.failures = 0

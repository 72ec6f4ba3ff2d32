"""Jittered exponential backoff, for reconnecting and for retrying downloads.

"Full jitter": each delay is drawn uniformly between zero and the exponential ceiling, so
thousands of devices that lost the broker at the same moment do not return at the same moment.
"""

import os
from collections.abc import Callable

_FRACTION_BITS = 53  # a float's mantissa: every draw is exactly representable
_SCALE = 1.0 / (1 << _FRACTION_BITS)


def random_fraction() -> float:
    """A uniform draw from [0, 1) from the kernel's generator.

    Not the `random` module: it would stay loaded in every idle agent (a quarter MiB with the
    modules behind it) for the few draws a reconnect needs; os.urandom is already there."""
    return (int.from_bytes(os.urandom(7), "big") >> (56 - _FRACTION_BITS)) * _SCALE


def uniform(low: float, high: float) -> float:
    """A uniform draw from [low, high)."""
    return low + (high - low) * random_fraction()


class Backoff:
    """Delays that grow from `minimum` towards `maximum`, each one randomised."""

    def __init__(
        self,
        minimum: float,
        maximum: float,
        *,
        factor: float = 2.0,
        fraction: Callable[[], float] = random_fraction,
    ) -> None:
        """`fraction` draws from [0, 1); tests may pass a fixed one."""
        if not 0 < minimum <= maximum:
            raise ValueError("backoff needs 0 < minimum <= maximum")
        self.minimum = minimum
        self.maximum = maximum
        self.factor = factor
        self.failures = 0
        self._fraction = fraction

    def ceiling(self) -> float:
        """The largest delay the next call may return."""
        return min(self.maximum, self.minimum * self.factor**self.failures)

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        ceiling = self.ceiling()
        self.failures += 1
        # Never below `minimum`: a broker refusing instantly must not be hammered.
        return self.minimum + (ceiling - self.minimum) * self._fraction()

    def reset(self) -> None:
        """Forget the failures (after a success)."""
        self.failures = 0

"""SlidingWindowLimit: at most `limit` events per key in any window, refused events not
counted, and keys that went quiet forgotten at the next sweep."""

from kernex_backend.core.sliding_window import SlidingWindowLimit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_limit_per_window_and_no_more() -> None:
    clock = Clock()
    limit = SlidingWindowLimit(3, 60.0, clock=clock)
    assert [limit.allow("dev") for _ in range(5)] == [True, True, True, False, False]
    assert limit.allow("other")  # each key has its own window
    clock.now += 30
    assert not limit.allow("dev")  # the three are still within the last 60 s
    clock.now += 30
    assert limit.allow("dev")  # they have left it; refused events were not counted


def test_keys_that_went_quiet_are_forgotten() -> None:
    clock = Clock()
    limit = SlidingWindowLimit(3, 60.0, clock=clock)
    for i in range(1000):
        assert limit.allow(f"dev-{i}")
    clock.now += 30
    assert limit.allow("busy")
    assert len(limit) == 1001
    clock.now += 31  # a window since the first requests, not since "busy"'s
    assert limit.allow("late")
    assert len(limit) == 2  # "busy" asked within the window and stays
    clock.now += 60
    assert limit.allow("latest")
    assert len(limit) == 1

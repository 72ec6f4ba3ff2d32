"""States, events and the one table of transitions between them.

Each state's work is a handler that returns an Event; where the machine goes next is decided
here and nowhere else. Terminal states (COMMITTED, ROLLED_BACK, FAILED, CANCELED) report the
outcome and return to IDLE, so every path ends idle.
"""

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class State(StrEnum):
    """Where an update is."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    HEALTH_CHECK = "health_check"
    COMMITTING = "committing"
    ROLLING_BACK = "rolling_back"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    CANCELED = "canceled"


class Event(StrEnum):
    """What a state's handler reports."""

    SUCCESS = "success"
    FAILURE = "failure"  # permanent: bad signature, corrupt bundle, failed health check
    RETRY = "retry"  # transient: run the state again (after backoff)
    ABORTED = "aborted"  # the notice was withdrawn
    LOOP_DETECTED = "loop_detected"  # raised by the runner, not by handlers


TERMINAL: Final = frozenset({State.COMMITTED, State.ROLLED_BACK, State.FAILED, State.CANCELED})

# Until INSTALLING nothing on the device has changed, so failures end in FAILED and a withdrawn
# notice cancels. From INSTALLING on, the way out of trouble is ROLLING_BACK, and cancelling is
# no longer possible: the update finishes or is rolled back.
TRANSITIONS: Final[Mapping[tuple[State, Event], State]] = {
    (State.DOWNLOADING, Event.SUCCESS): State.VERIFYING,
    (State.DOWNLOADING, Event.RETRY): State.DOWNLOADING,
    (State.DOWNLOADING, Event.FAILURE): State.FAILED,
    (State.DOWNLOADING, Event.ABORTED): State.CANCELED,
    (State.DOWNLOADING, Event.LOOP_DETECTED): State.FAILED,
    (State.VERIFYING, Event.SUCCESS): State.INSTALLING,
    # A partial file damaged by a power cut fails verification: fetch it again.
    (State.VERIFYING, Event.RETRY): State.DOWNLOADING,
    (State.VERIFYING, Event.FAILURE): State.FAILED,
    (State.VERIFYING, Event.ABORTED): State.CANCELED,
    (State.VERIFYING, Event.LOOP_DETECTED): State.FAILED,
    (State.INSTALLING, Event.SUCCESS): State.HEALTH_CHECK,
    (State.INSTALLING, Event.RETRY): State.INSTALLING,
    (State.INSTALLING, Event.FAILURE): State.ROLLING_BACK,
    (State.INSTALLING, Event.LOOP_DETECTED): State.ROLLING_BACK,
    (State.HEALTH_CHECK, Event.SUCCESS): State.COMMITTING,
    (State.HEALTH_CHECK, Event.RETRY): State.HEALTH_CHECK,
    (State.HEALTH_CHECK, Event.FAILURE): State.ROLLING_BACK,
    (State.HEALTH_CHECK, Event.LOOP_DETECTED): State.ROLLING_BACK,
    (State.COMMITTING, Event.SUCCESS): State.COMMITTED,
    (State.COMMITTING, Event.RETRY): State.COMMITTING,
    (State.COMMITTING, Event.FAILURE): State.ROLLING_BACK,
    (State.COMMITTING, Event.LOOP_DETECTED): State.ROLLING_BACK,
    (State.ROLLING_BACK, Event.SUCCESS): State.ROLLED_BACK,
    (State.ROLLING_BACK, Event.RETRY): State.ROLLING_BACK,
    # A rollback that cannot finish leaves the previous version selected (the installer switches
    # atomically), so the device still runs; the failure is reported.
    (State.ROLLING_BACK, Event.FAILURE): State.FAILED,
    (State.ROLLING_BACK, Event.LOOP_DETECTED): State.FAILED,
    **{(terminal, Event.SUCCESS): State.IDLE for terminal in TERMINAL},
    # Reporting the outcome is retried until it is acknowledged.
    **{(terminal, Event.RETRY): terminal for terminal in TERMINAL},
    **{(terminal, Event.LOOP_DETECTED): State.IDLE for terminal in TERMINAL},
}


class InvalidTransition(RuntimeError):
    """A handler returned an event its state does not accept."""


def next_state(state: State, event: Event) -> State:
    """The state that `event` leads to from `state`."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"{state.value} does not accept {event.value}") from None

"""The update state machine: one transition table, state saved before every step."""

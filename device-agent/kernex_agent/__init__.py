"""Kernex device agent."""

from kernex_agent import ascii_idna
from kernex_agent.lazy_modules import defer_unused

__version__ = "0.1.0"

# Before any module of the agent imports paho-mqtt: see lazy_modules. And before the first
# connection looks up the "idna" codec: see ascii_idna.
defer_unused()
ascii_idna.install()

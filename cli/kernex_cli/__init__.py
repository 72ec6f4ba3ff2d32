"""`kernex`: the operator's command line for a Kernex backend, over its REST API only."""

__version__ = "0.1.0"

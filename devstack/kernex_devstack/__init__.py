"""Embedded services for `make demo` and the test suite; never imported by production code."""

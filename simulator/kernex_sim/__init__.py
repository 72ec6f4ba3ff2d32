"""kernex-sim: simulated devices running the real agent, for rehearsals and benchmarks."""

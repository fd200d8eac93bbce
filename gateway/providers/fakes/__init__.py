"""Deterministic fake upstreams for tests, benchmarks and the demo (in-process provider and a loopback server)."""

"""Cadenza's benchmarks: each module measures one thing and reports through `bench.report`."""

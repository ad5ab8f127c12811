"""Benchmarks for pgpool, and the tools they share (see proxy.py)."""

"""Benchmark harness: stage timings, forward FLOP rate vs matmul, baseline vs optimised, service, training.

Run ``python bench/run.py --quick --json``; see bench/README.md. Nothing here asserts timings.
"""

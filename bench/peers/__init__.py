"""Peer comparison (issue 7): the same workloads on celery-durable, plain Celery and DBOS.

Entry point: ``python -m bench.peers`` (bench/peers/run.py). Method and figures:
docs/benchmarks.md, section "Peer comparison (issue 7)".
"""

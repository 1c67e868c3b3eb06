"""Benchmarks of celery-durable against plain Celery baselines (not part of the test suite)."""

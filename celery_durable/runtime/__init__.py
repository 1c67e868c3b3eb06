"""The replay runtime: the ``step`` context and its checkpoint protocol.

It imports neither Django models nor Celery, so it is unit-testable on its own.
"""

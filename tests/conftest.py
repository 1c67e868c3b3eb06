"""Shared fixtures. ``CELERY_DURABLE_REQUIRE_SERVICES=1`` turns 'service unreachable' skips into failures."""

import os

import pytest

pytest_plugins = ["celery_durable.testing"]

REQUIRE_SERVICES = os.environ.get("CELERY_DURABLE_REQUIRE_SERVICES") == "1"


def service_unavailable(reason: str) -> None:
    """Skip (or, when services are required, fail) a test that needs an unreachable service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unreachable: {reason}", pytrace=False)
    pytest.skip(reason)

"""Shared fixtures. ``CELERY_DURABLE_REQUIRE_SERVICES=1`` turns 'service unreachable' skips into failures.

Every test that needs a service or an optional package goes through :func:`service_unavailable`
or :func:`require_module`, never ``pytest.skip``/``pytest.importorskip`` directly: under
``CELERY_DURABLE_REQUIRE_SERVICES=1`` (CI) nothing the tests need may be silently missing.
"""

import importlib
import os
from types import ModuleType

import pytest

pytest_plugins = ["celery_durable.testing"]

REQUIRE_SERVICES = os.environ.get("CELERY_DURABLE_REQUIRE_SERVICES") == "1"


def service_unavailable(reason: str) -> None:
    """Skip (or, when services are required, fail) a test that needs an unreachable service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unreachable: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str) -> ModuleType:
    """Import the optional package ``name`` a test needs; skip without it (fail when required).

    Works at module level, like ``pytest.importorskip``.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if REQUIRE_SERVICES:
            pytest.fail(f"required package missing: {name} ({exc}); install the dev extras", pytrace=False)
        pytest.skip(f"optional package {name} is not installed: {exc}", allow_module_level=True)

"""The tests' helpers for what they need: a skip on a developer machine, a failure under REQUIRE."""

import json

import pytest

from tests import conftest

MISSING = "celery_durable_no_such_optional_package"


def test_require_module__returns_an_installed_module():
    assert conftest.require_module("json") is json


def test_require_module__skips_a_missing_package_on_a_developer_machine(monkeypatch):
    monkeypatch.setattr(conftest, "REQUIRE_SERVICES", False)
    with pytest.raises(pytest.skip.Exception, match=f"optional package {MISSING} is not installed"):
        conftest.require_module(MISSING)


def test_require_module__fails_a_missing_package_when_services_are_required(monkeypatch):
    monkeypatch.setattr(conftest, "REQUIRE_SERVICES", True)
    with pytest.raises(pytest.fail.Exception, match=f"required package missing: {MISSING}"):
        conftest.require_module(MISSING)


def test_service_unavailable__skips_or_fails(monkeypatch):
    monkeypatch.setattr(conftest, "REQUIRE_SERVICES", False)
    with pytest.raises(pytest.skip.Exception, match="redis is down"):
        conftest.service_unavailable("redis is down")
    monkeypatch.setattr(conftest, "REQUIRE_SERVICES", True)
    with pytest.raises(pytest.fail.Exception, match="required service unreachable: redis is down"):
        conftest.service_unavailable("redis is down")

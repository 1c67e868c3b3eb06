"""Fixtures of the chaos suite: real workers (one in its own network namespace), real services.

Everything started here is stopped here: workers are killed and reaped, the namespace, veth
pair and socat forwarders removed, and any service a fault stopped is started again.
"""

import os

import pytest
from django.db import connection

from tests.conftest import service_unavailable
from tests.e2e.conftest import BROKERS, reachable, reset_producer_pool

from . import config, faults, harness, procs, seeds


@pytest.fixture(params=sorted(BROKERS))
def broker(request):
    url = BROKERS[request.param]
    if not reachable(url):
        service_unavailable(f"{request.param} broker at {url} is unreachable")
    return url


@pytest.fixture
def chaos_db(transactional_db, settings):
    """The test database, shared with the workers (PostgreSQL only); services up again at the end."""
    if connection.vendor != "postgresql":
        service_unavailable(
            "the chaos suite shares the test database with workers: run it with DURABLE_TEST_DB=postgres"
        )
    if os.geteuid() != 0:
        service_unavailable("the chaos suite needs root (network namespaces, service restarts)")
    settings.CELERY_DURABLE = dict(config.DURABLE)
    yield connection.settings_dict["NAME"]
    procs.ensure_services_up()
    faults.reconnect()  # for the database flush after the test


@pytest.fixture
def use_broker(broker):
    """The test process publishes to the same broker as its workers."""
    from celery import current_app

    previous = current_app.conf.broker_url
    current_app.conf.broker_url = broker
    reset_producer_pool(current_app)
    yield broker
    current_app.conf.broker_url = previous
    reset_producer_pool(current_app)


@pytest.fixture
def fleet(use_broker, chaos_db, tmp_path):
    fleet = harness.Fleet(broker=use_broker, db_name=chaos_db, directory=tmp_path)
    try:
        yield fleet
    finally:
        fleet.close()
        procs.ensure_services_up()


@pytest.fixture
def chaos_seed(capsys):
    """The session's seed (``DURABLE_CHAOS_SEED`` replays one), printed before anything runs."""
    seed = seeds.chaos_seed()
    with capsys.disabled():
        print(f"\n{seeds.banner(seed)}", flush=True)
    print(seeds.banner(seed))  # again in the captured output shown with a failure
    return seed

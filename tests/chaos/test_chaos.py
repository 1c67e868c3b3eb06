"""The chaos suite, short form: a mixed workload on real workers while every kind of fault lands.

Per broker, about a minute of runs (multi-step with atomic steps, sleeps, waits for events,
child runs, per-key concurrency, cancellations) on three workers, one of them in its own
network namespace, while the harness SIGKILLs pool processes and workers, duplicates
messages, drops database sessions, jumps the waker's clock, freezes a worker, cuts the
namespaced worker off, and restarts PostgreSQL and the broker. Then the checker verifies
SPEC §10 from the database. ``bench/chaos.py`` runs the same for minutes.
"""

import os

import pytest

from . import checker, harness

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

SECONDS = float(os.environ.get("DURABLE_CHAOS_SECONDS", "30"))


def test_chaos__guarantees_hold_under_every_fault(fleet, chaos_rng):
    restart = "redis_restart" if fleet.broker.startswith("redis") else "rabbitmq_restart"
    plan = chaos_rng.sample([*harness.PLAN, restart], len(harness.PLAN) + 1)
    session = harness.run(fleet, chaos_rng, SECONDS, plan, fault_every=SECONDS / (len(plan) + 1))
    report = checker.check(session.workload.called, harness.LEASE)
    summary = f"faults {session.injector.counts}, report {report}"
    print(summary)
    report.assert_ok()
    assert not session.unfinished, summary
    injected = session.injector.counts
    for kind in set(plan):
        # A restart is skipped only while someone else's tests or benchmarks use the services.
        assert injected.get(kind) or injected.get(f"{kind}:skipped"), f"{kind} never landed: {summary}"
    assert report.completed and report.cancelled, summary
    assert report.peak and max(report.peak.values()) == checker.LIMIT, summary  # the limit was reached

"""The harness restarts exited workers during the drain too, as a process supervisor would.

With Redis, a broker restart makes workers holding unacknowledged messages exit ("Unrecoverable
error", docs/reliability.md). The short form injects its last faults right before the drain;
without a supervisor there, a restart at the end left every worker dead and runs unfinished.
"""

import pytest

from tests.testapp import chaos_tasks

from . import checker, harness
from .faults import Injector
from .workload import Workload

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]


@pytest.mark.parametrize("broker", ["redis"], indirect=True)
def test_drain__restarts_workers_that_exit_before_it(chaos_seed, fleet, monkeypatch):
    def settle_then_every_worker_exits(injector: Injector) -> None:
        settle(injector)
        for worker in injector.fleet.values():
            worker.kill()

    def finish_with_one_more_run(workload: Workload) -> None:
        workload._call(chaos_tasks.limited, "k0", 10**6)  # called while no worker is alive
        finish(workload)

    settle, finish = Injector.settle, Workload.finish
    monkeypatch.setattr(Injector, "settle", settle_then_every_worker_exits)
    monkeypatch.setattr(Workload, "finish", finish_with_one_more_run)
    session = harness.run(fleet, chaos_seed, 8, [], fault_every=60, drain_timeout=90)
    report = checker.check(
        session.workload.called, harness.LEASE, overrides=session.workload.overrides, batched=session.workload.batched
    )
    report.assert_ok(session.diagnosis)
    assert session.drained and not session.unfinished, session.diagnosis
    assert session.injector.counts.get("worker_exited") == len(fleet.workers), session.injector.counts

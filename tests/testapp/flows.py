"""Durable tasks that suspend: used by the suspension integration and e2e tests."""

from datetime import timedelta

from celery import shared_task

from celery_durable import CancelOn, Timeouts, durable_task, step
from tests.testapp.tasks import add, counted, plain


@durable_task(name="f.sleepy")
def sleepy(seconds):
    step.run("before", counted, "before", 1)
    step.sleep("nap", seconds)
    return step.run("after", counted, "after", 2)


@durable_task(name="f.dunning")
def dunning(invoice_id):
    """Charge on the billing date, retry over days, send the receipt (or give up)."""
    for attempt in range(3):
        paid = step.run("charge", counted, "charge", attempt == 2)
        if paid:
            step.send_event("paid", "invoice.paid", {"invoice_id": invoice_id})
            return "paid"
        step.sleep("backoff", timedelta(days=2))
    return "gave up"


@durable_task(name="f.confirm")
def confirm(user_id, timeout=3600):
    event = step.wait_for_event("confirmation", "user.confirmed", match={"user_id": user_id}, timeout=timeout)
    if event is None:
        return "expired"
    return step.run("welcome", counted, "welcome", event.data["user_id"])


@durable_task(name="f.two_waits")
def two_waits():
    first = step.wait_for_event("first", "tick", timeout=60)
    second = step.wait_for_event("second", "tick", timeout=60)
    return [first.data["n"] if first else None, second.data["n"] if second else None]


@durable_task(name="f.parent")
def parent(n):
    total = step.invoke("sum", add.s(n, n))
    doubled = step.gather("fan", [add.s(i, 1) for i in range(3)] + [plain.s(total)])
    return {"total": total, "gathered": doubled}


@shared_task(name="f.plain_fails")
def plain_fails():
    raise ValueError("plain child broke")


@durable_task(name="f.parent_of_failure")
def parent_of_failure():
    from celery_durable import ChildRunFailed

    try:
        step.invoke("child", plain_fails.s())
    except ChildRunFailed as failed:
        return f"{failed.error_type}: {failed.message}"
    return "no failure"


@durable_task(name="f.invoke_unknown")
def invoke_unknown():
    from celery import signature

    return step.invoke("ghost", signature("no.such.task"))


@durable_task(name="f.on_signup", on_event="user.signed_up")
def on_signup(event):
    return step.run("greet", counted, "greet", event.data["email"])


@durable_task(name="f.cancellable", cancel_on=[CancelOn(event="order.cancelled", match={"order_id": "order_id"})])
def cancellable(order_id):
    step.sleep("wait-a-day", timedelta(days=1))
    return step.run("ship", counted, "ship", order_id)


@durable_task(name="f.deadline", timeouts=Timeouts(finish=timedelta(hours=1)))
def deadline():
    step.sleep("too-long", timedelta(hours=2))
    return "late"


@shared_task(name="f.failure_handler")
def failure_handler(run_id):
    from tests.testapp.models import BodyRun

    BodyRun.objects.create(run_id=run_id, step="on_failure")


@durable_task(name="f.with_handler", on_failure=failure_handler.s(), retries=0)
def with_handler():
    return step.run("boom", lambda: 1 / 0)


@durable_task(name="f.sleep_then_steps", bind=True)
def sleep_then_steps(self, seconds):
    step.sleep("nap", seconds)
    return self.step.run_id


@durable_task(name="f.child_hold")
def child_hold(i):
    """A child whose step holds until the test writes a 'release' row for index i."""
    import time as _time

    from tests.testapp.models import BodyRun

    def work():
        counted(f"work-{i}")
        deadline = _time.monotonic() + 120
        while _time.monotonic() < deadline and not BodyRun.objects.filter(step=f"release-{i}").exists():
            _time.sleep(0.05)
        return i * 10

    return step.run("work", work)


@durable_task(name="f.gather_held")
def gather_held(n):
    return step.gather("children", [child_hold.s(i) for i in range(n)])


@durable_task(name="f.two_long_waits")
def two_long_waits():
    first = step.wait_for_event("first", "tick", timeout=timedelta(days=2))
    second = step.wait_for_event("second", "tick", timeout=timedelta(days=2))
    return [first.data["n"] if first else None, second.data["n"] if second else None]


@durable_task(name="f.cancelled_mid_step", retries=3)
def cancelled_mid_step():
    from celery_durable import cancel

    def body():
        counted("body")
        cancel(step.run_id, "changed my mind")
        raise ConnectionError("and the step fails too")

    return step.run("work", body)


@durable_task(name="f.cancellable_default", cancel_on=[CancelOn(event="region.closed", match={"region": "region"})])
def cancellable_default(region="eu"):
    step.sleep("wait", timedelta(days=1))
    return region


from celery_durable import Debounce, RateLimit, Singleton, Throttle  # noqa: E402


@durable_task(name="f.idempotent", idempotency_key="order_id")
def idempotent(order_id, note=""):
    return step.run("charge", counted, "charge", f"{order_id}{note}")


@durable_task(name="f.debounced", debounce=Debounce(period=60, key="account", timeout=300))
def debounced(account, version):
    return step.run("reindex", counted, "reindex", version)


@durable_task(name="f.singleton_skip", singleton=Singleton(key="user_id", mode="skip"))
def singleton_skip(user_id):
    step.sleep("work", 60)
    return user_id


@durable_task(name="f.singleton_cancel", singleton=Singleton(key="user_id", mode="cancel"))
def singleton_cancel(user_id, n):
    step.sleep("work", 60)
    return n


@durable_task(name="f.rate_limited", rate_limit=RateLimit(limit=2, period=3600, key="user_id"))
def rate_limited(user_id):
    return user_id


@durable_task(name="f.throttled", throttle=Throttle(limit=1, period=10, key="team"))
def throttled(team, n):
    return n


@durable_task(name="f.celery_rate", rate_limit="10/m")
def celery_rate(x):
    return x


from celery_durable import Concurrency  # noqa: E402


@durable_task(
    name="f.per_user",
    concurrency=Concurrency(limit=1, key="user_id"),
    priority=lambda user_id, plan: 600 if plan == "paid" else 0,
)
def per_user(user_id, plan="free"):
    return step.run("work", counted, "work", user_id)


@durable_task(name="f.per_user_sleeps", concurrency=Concurrency(limit=1, key="user_id"))
def per_user_sleeps(user_id, n):
    step.run("start", counted, f"start-{n}", n)
    step.sleep("nap", 60)
    return step.run("end", counted, f"end-{n}", n)


@durable_task(name="f.quota_a", concurrency=Concurrency(limit=2, scope="global", name="api-quota"))
def quota_a(n):
    return n


@durable_task(name="f.quota_b", concurrency=Concurrency(limit=2, scope="global", name="api-quota"))
def quota_b(n):
    return n


@durable_task(
    name="f.two_limits",
    concurrency=[Concurrency(limit=1, key="user_id"), Concurrency(limit=2, key="team")],
)
def two_limits(user_id, team):
    return user_id


@durable_task(name="f.no_steps_limited", concurrency=Concurrency(limit=1, key="account"))
def no_steps_limited(account):
    """Adopting flow control needs no steps: only the decorator changed."""
    return account


def record_interval(run_id, key, hold=0.0):
    """One row per execution of a body, with start and end from the database clock.

    A worker killed inside the body leaves ``ended`` null.
    """
    import os
    import time as _time

    from django.db.models.functions import Now

    from tests.testapp.models import Interval

    interval = Interval.objects.create(run_id=run_id, key=key, started=Now(), pid=os.getpid())
    if hold:
        _time.sleep(hold)
    Interval.objects.filter(id=interval.id).update(ended=Now())


@durable_task(
    name="f.limited_work",
    concurrency=Concurrency(limit=2, key="key"),
    priority=lambda key, n, urgent=False: 600 if urgent else 0,
)
def limited_work(key, n, urgent=False):
    """Records the interval its step body executed in, for the limit checker."""

    def work():
        record_interval(step.run_id, key, hold=0.05)
        return n

    return step.run("work", work)


@durable_task(name="f.throttled_fast", throttle=Throttle(limit=2, period=1, key="team"))
def throttled_fast(team, n):
    """No steps: the body records when it started (0.5 s apart at the steady rate)."""
    record_interval(step.run_id, team)
    return n


@durable_task(name="f.debounced_fast", debounce=Debounce(period=1.5, key="account", timeout=30))
def debounced_fast(account, version):
    return step.run("reindex", counted, "reindex", version)


@durable_task(name="f.singleton_skip_nap", singleton=Singleton(key="user_id", mode="skip"))
def singleton_skip_nap(user_id, seconds):
    step.sleep("nap", seconds)
    return [user_id, seconds]


@durable_task(name="f.singleton_cancel_nap", singleton=Singleton(key="user_id", mode="cancel"))
def singleton_cancel_nap(user_id, seconds):
    step.sleep("nap", seconds)
    return [user_id, seconds]


# --- pause and resume (tests/integration/test_pause.py, tests/e2e/test_pause_e2e.py) ---


def pause_own_task(name, value, key=None):
    """A step body that pauses its own task (or key) while the run executes, then counts itself."""
    from celery_durable import pause

    pause("f.pausable", key, by="step")
    return counted(name, value)


@durable_task(name="f.pausable")
def pausable(n, pause_in_first=False):
    if pause_in_first:
        step.run("one", pause_own_task, "one", n)
    else:
        step.run("one", counted, "one", n)
    step.run("two", counted, "two", n)
    return step.run("three", counted, "three", n)


@durable_task(name="f.pausable_keyed", concurrency=Concurrency(limit=1, key="user_id"))
def pausable_keyed(user_id, n):
    step.run("one", counted, f"one-{n}", n)
    return step.run("two", counted, f"two-{n}", n)


@durable_task(name="f.pause_hold")
def pause_hold(n):
    """Step "one" holds until the test writes a 'release-pause' row; then step "two"."""
    import time as _time

    from tests.testapp.models import BodyRun

    def one():
        counted("hold-one")
        deadline = _time.monotonic() + 120
        while _time.monotonic() < deadline and not BodyRun.objects.filter(step="release-pause").exists():
            _time.sleep(0.05)
        return n

    step.run("one", one)
    return step.run("two", counted, "hold-two", n)


# Issue 15: fairness, limits that change, when_full, shared throttles and rate limits.
@durable_task(
    name="f.fair",
    concurrency=Concurrency(limit=1, fair_key="tenant"),
    priority=lambda tenant, n, urgent=False: 600 if urgent else 0,
)
def fair(tenant, n, urgent=False):
    return n


@durable_task(name="f.fair_weighted", concurrency=Concurrency(limit=1, fair_key="tenant", fair_weight={"big": 3}))
def fair_weighted(tenant, n):
    return n


def _region_limit(region, n):
    return 2 if region == "eu" else 1


@durable_task(name="f.dyn_limit", concurrency=Concurrency(limit=_region_limit, key="region"))
def dyn_limit(region, n):
    return n


@durable_task(name="f.overridden", concurrency=Concurrency(limit=1, key="k"))
def overridden(k, n):
    return n


@durable_task(name="f.full_skip", concurrency=Concurrency(limit=1, key="k", when_full="skip"))
def full_skip(k, n):
    return n


@durable_task(name="f.full_cancel", concurrency=Concurrency(limit=1, key="k", when_full="cancel_oldest"))
def full_cancel(k, n):
    return n


@durable_task(name="f.stripe_charge", throttle=Throttle(limit=1, period=10, name="stripe"))
def stripe_charge(n):
    return n


@durable_task(name="f.stripe_refund", throttle=Throttle(limit=1, period=10, name="stripe"))
def stripe_refund(n):
    return n


@durable_task(name="f.sms_a", rate_limit=RateLimit(limit=2, period=3600, name="sms"))
def sms_a(n):
    return n


@durable_task(name="f.sms_b", rate_limit=RateLimit(limit=2, period=3600, name="sms"))
def sms_b(n):
    return n


@durable_task(name="f.shared_pool_a", concurrency=Concurrency(limit=1, scope="global", name="pool", key="k"))
def shared_pool_a(k, n):
    return n


@durable_task(name="f.fair_work", concurrency=Concurrency(limit=1, fair_key="tenant"))
def fair_work(tenant, n):
    """Records when it started: with limit 1, the start order is the promotion order."""
    record_interval(step.run_id, tenant)
    return n


@durable_task(name="f.override_work", concurrency=Concurrency(limit=1, key="k"))
def override_work(k, n):
    record_interval(step.run_id, k, hold=0.4)
    return n


@durable_task(name="f.full_cancel_slow", concurrency=Concurrency(limit=1, key="k", when_full="cancel_oldest"))
def full_cancel_slow(k, n, wait=0.0):
    step.run("first", counted, f"first-{n}", n)
    record_interval(step.run_id, k, hold=wait)
    return step.run("second", counted, f"second-{n}", n)


@durable_task(name="f.shared_fast_a", throttle=Throttle(limit=2, period=1, name="shared-fast"))
def shared_fast_a(n):
    record_interval(step.run_id, "shared-fast")
    return n


@durable_task(name="f.shared_fast_b", throttle=Throttle(limit=2, period=1, name="shared-fast"))
def shared_fast_b(n):
    record_interval(step.run_id, "shared-fast")
    return n

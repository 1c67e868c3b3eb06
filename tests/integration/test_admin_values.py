"""Every value type the library accepts reads as its value in the admin and in ``durable_runs show``.

Arguments, step outputs and results are kombu JSON: plain JSON plus datetime, date, time,
Decimal, UUID and bytes. Each surface shows them readable, never as ``{"__type__": ...}``
markers and never as a 500.
"""

import html
import io
import json
import uuid
from datetime import UTC, date, datetime, time
from decimal import Decimal

from django.core.management import call_command
from django.urls import reverse

from celery_durable import durable_task, step
from celery_durable.models import Run, Step
from celery_durable.readable import compact, pretty, readable, unmark
from celery_durable.serialization import dumps
from celery_durable.states import RunStatus

MOMENT = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
TOKEN = uuid.UUID("7bf20960-274e-4d62-80fd-5bbb1ca76bcd")
VALUES = {
    "moment": MOMENT,
    "naive": datetime(2024, 1, 2, 3, 4, 6),
    "day": date(2024, 2, 3),
    "clock": time(4, 5, 6),
    "price": Decimal("12.50"),
    "token": TOKEN,
    "text_bytes": "héllo".encode(),
    "raw_bytes": b"\xff\x00",
    "plain": [1, 2.5, "s", True, None, {"nested": MOMENT}],
}
READABLE = {
    "moment": "2024-01-02T03:04:05+00:00",
    "naive": "2024-01-02T03:04:06",
    "day": "2024-02-03",
    "clock": "04:05:06",
    "price": "12.50",
    "token": "7bf20960-274e-4d62-80fd-5bbb1ca76bcd",
    "text_bytes": "héllo",
    "raw_bytes": "base64:/wA=",
    "plain": [1, 2.5, "s", True, None, {"nested": "2024-01-02T03:04:05+00:00"}],
}


@durable_task(name="t.admin_values")
def every_type(first, **values):
    echoed = step.run("echo", lambda: values)
    return {"first": first, **echoed}


def a_run_of_every_type(durable):
    run_id = every_type.delay(MOMENT, **VALUES).id
    durable.run_until_idle()
    assert Run.objects.get(id=run_id).status == RunStatus.COMPLETED
    stored = Step.objects.get(run_id=run_id, step_id="echo").output
    assert '"__type__"' in stored  # what the database holds: kombu's markers
    return run_id


def show(*args):
    out = io.StringIO()
    call_command("durable_runs", "show", *args, stdout=out)
    return out.getvalue()


def test_readable__every_type_as_plain_json():
    assert readable(VALUES) == READABLE
    text, cut = pretty(dumps(VALUES, "v"), 100_000)
    assert not cut and json.loads(text) == READABLE
    assert json.loads(compact(dumps(VALUES, "v"), 100_000)) == READABLE


def test_unmark__rewrites_the_markers_of_a_cut_value():
    stored = dumps([MOMENT, TOKEN, Decimal("1.5"), "héllo".encode(), "x" * 50], "v")
    head = stored[:-20]  # read cut from the database: not valid JSON any more
    shown = unmark(head)
    assert "__type__" not in shown
    assert '"2024-01-02T03:04:05+00:00", "7bf20960-274e-4d62-80fd-5bbb1ca76bcd", "1.5", "' in shown
    assert 'llo", "xxx' in shown
    assert compact(head, 1000).startswith('["2024-01-02T03:04:05+00:00"')


def test_run_page__shows_every_type_readable(admin_client, durable):
    run_id = a_run_of_every_type(durable)
    response = admin_client.get(reverse("admin:celery_durable_run_change", args=[run_id]))
    assert response.status_code == 200
    body = html.unescape(response.content.decode())
    assert "__type__" not in body
    for value in ("2024-01-02T03:04:05+00:00", "2024-02-03", "04:05:06", "12.50", str(TOKEN), "héllo", "base64:/wA="):
        assert value in body
    # the step output preview too (the timeline row of step "echo")
    row = body[body.index('data-step-id="echo"', body.index('id="durable-timeline"')) :]
    row = row[: row.index("</tr>")]
    assert "2024-01-02T03:04:05+00:00" in row and "__type__" not in row


def test_changelist__shows_arguments_readable(admin_client, durable):
    a_run_of_every_type(durable)
    response = admin_client.get(reverse("admin:celery_durable_run_changelist"))
    assert response.status_code == 200
    body = html.unescape(response.content.decode())
    assert "__type__" not in body
    assert '["2024-01-02T03:04:05+00:00"]' in body  # the positional argument


def test_durable_runs_show__plain_and_json(durable):
    run_id = a_run_of_every_type(durable)
    text = show(run_id)
    assert "__type__" not in text and "2024-01-02T03:04:05+00:00" in text and "12.50" in text
    assert '"text_bytes": "héllo"' in text  # as written, not \u-escaped
    data = json.loads(show(run_id, "--json"))
    assert data["run"]["args"] == ["2024-01-02T03:04:05+00:00"]
    assert data["run"]["kwargs"] == READABLE
    assert data["run"]["result"] == {"first": "2024-01-02T03:04:05+00:00", **READABLE}
    assert data["steps"][0]["output"] == READABLE

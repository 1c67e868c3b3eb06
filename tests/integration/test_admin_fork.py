"""The admin: the fork form and its permission, fork links and diff, metadata search, progress bar."""

import html

import pytest
from django.contrib.admin.models import LogEntry
from django.test import Client
from django.urls import reverse

from celery_durable import durable_task, step
from celery_durable.models import Run, Step
from tests.integration.test_admin import staff
from tests.testapp import tasks

SEEN: list[str] = []
PROBE: dict[str, Client] = {}


def url(run_id, name="change"):
    return reverse(f"admin:celery_durable_run_{name}", args=[run_id])


def text(response):
    return html.unescape(response.content.decode())


@pytest.fixture
def forker_client(db):
    client = Client()
    client.force_login(staff("forker", "view_run", "fork_run"))
    return client


@pytest.fixture
def viewer_client(db):
    client = Client()
    client.force_login(staff("viewer", "view_run"))
    return client


def test_fork__needs_its_permission(viewer_client, forker_client, durable):
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    assert 'id="durable-fork"' not in text(viewer_client.get(url(run.id)))
    assert viewer_client.get(url(run.id, "fork")).status_code == 403
    assert viewer_client.post(url(run.id, "fork"), {"from_step": "two", "args": "[1]"}).status_code == 403
    assert Run.objects.count() == 1
    page = text(forker_client.get(url(run.id)))
    assert 'id="durable-fork"' in page


def test_fork__form_forks_logs_and_links_both_runs(forker_client, durable):
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    form = text(forker_client.get(url(run.id, "fork")))
    assert '<option value="two">' in form and "[\n  1\n]" in form
    response = forker_client.post(url(run.id, "fork"), {"from_step": "two", "args": "[5]", "kwargs": "{}"})
    fork = Run.objects.get(forked_from_id=run.id)
    assert response.status_code == 302 and response["Location"] == url(fork.id)
    assert fork.args_value == [5] and fork.forked_at_step == "two"
    durable.run_until_idle()
    assert durable.result(fork.id) == 7  # "one" reused from the original (n=1): 2 * 2 + 3
    logged = dict(LogEntry.objects.values_list("object_id", "change_message"))
    assert logged[run.id] == f"Forked into {fork.id} from step 'two'"
    assert logged[fork.id] == f"Forked from {run.id} from step 'two'"
    original_page = text(forker_client.get(url(run.id)))
    assert 'id="durable-forks"' in original_page and fork.id in original_page
    fork_page = text(forker_client.get(url(fork.id)))
    assert 'id="durable-forked-from"' in fork_page and run.id in fork_page
    diff = fork_page[fork_page.index('id="durable-fork-diff"') :]
    assert 'durable-diff--same" data-step-id="one"' in diff  # reused: the same output
    assert 'durable-diff--same" data-step-id="two"' in diff  # 2 * 2 either way
    assert 'durable-diff--changed" data-step-id="three"' not in diff


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"from_step": "two", "args": "[1", "kwargs": "{}"}, "not valid JSON"),
        ({"from_step": "two", "args": "{}", "kwargs": "{}"}, "args must be a JSON array"),
        ({"from_step": "two", "args": "[]", "kwargs": "[]"}, "kwargs must be a JSON object"),
        ({"from_step": "nope", "args": "[1]", "kwargs": "{}"}, "has no step 'nope'"),
        ({"from_step": "", "args": "[1, 2]", "kwargs": "{}"}, "t.three_steps"),
    ],
)
def test_fork__bad_form_input_is_shown_and_writes_nothing(forker_client, durable, form, error):
    run = tasks.three_steps.delay(1)
    durable.run_until_idle()
    steps = Step.objects.count()
    response = forker_client.post(url(run.id, "fork"), form)
    assert response.status_code == 400
    assert error in text(response)
    assert Run.objects.count() == 1 and Step.objects.count() == steps
    assert not LogEntry.objects.exists()


def test_changelist__search_by_metadata_field_value(admin_client, durable):
    acme = tasks.tagged.delay(1, customer="acme")
    globex = tasks.tagged.delay(2, customer="globex")
    durable.run_until_idle()
    changelist = reverse("admin:celery_durable_run_changelist")
    found = text(admin_client.get(changelist, {"q": "customer:acme"}))
    assert acme.id in found and globex.id not in found
    found = text(admin_client.get(changelist, {"q": "order_id:2"}))
    assert globex.id in found and acme.id not in found
    assert acme.id not in text(admin_client.get(changelist, {"q": "customer:nobody"}))
    page = text(admin_client.get(url(acme.id)))
    assert 'id="durable-metadata"' in page and "customer=acme" in page


def look_at_myself():
    step.progress(3, 12, "rows copied")
    SEEN.append(text(PROBE["client"].get(url(step.run_id))))
    return "looked"


@durable_task(name="t.admin_progress_probe")
def progress_probe():
    return step.run("copy", look_at_myself)


def test_run_page__shows_the_progress_of_the_running_step(admin_client, durable):
    SEEN.clear()
    PROBE["client"] = admin_client
    run_id = progress_probe.delay().id
    durable.run_until_idle()
    (body,) = SEEN
    bar = body[body.index('id="durable-progress"') :]
    bar = bar[: bar.index("</div>")]
    assert 'max="12" value="3"' in bar and "3 / 12 (25%) in step <code>copy</code>: rows copied" in bar
    assert 'id="durable-progress"' not in text(admin_client.get(url(run_id)))  # finished: no bar


def test_changelist__metadata_search_with_very_many_matches(admin_client, durable, monkeypatch):
    monkeypatch.setattr("celery_durable.admin.runs.MAX_SEARCH_IDS", 1)  # two matches are "very many"
    one = tasks.tagged.delay(1, customer="acme")
    two = tasks.tagged.delay(2, customer="acme")
    other = tasks.tagged.delay(3, customer="globex")
    durable.run_until_idle()
    found = text(admin_client.get(reverse("admin:celery_durable_run_changelist"), {"q": "customer:acme"}))
    assert one.id in found and two.id in found and other.id not in found


def test_fork__folded_by_an_idempotency_key_says_so_and_logs_nothing(forker_client, durable):
    from tests.testapp import flows

    run = flows.idempotent.delay(17)
    durable.run_until_idle()
    response = forker_client.post(url(run.id, "fork"), {"from_step": "", "args": "[17]", "kwargs": "{}"}, follow=True)
    assert "Not forked: the task's flow control answered with run" in text(response)
    assert Run.objects.count() == 1 and not LogEntry.objects.exists()

from tests.testapp import tasks


def test_three_steps__completes(durable):
    result = tasks.three_steps.delay(1)
    assert durable.run_until_idle() == 1
    assert durable.result(result.id) == 7
    assert durable.history(result.id) == [("one", "completed", 1), ("two", "completed", 1), ("three", "completed", 1)]

import pickle

import pytest

from celery_durable import exceptions
from celery_durable.exceptions import DurableError


def all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from all_subclasses(sub)


SAMPLES = {
    exceptions.RetryAfter: (5.0, "later"),
    exceptions.NonDeterminismError: ("charge", "run", "sleep"),
    exceptions.RunNotFound: ("abc",),
    exceptions.RunStateError: ("abc", "running", "replay"),
    exceptions.ChildRunFailed: ("abc", "ValueError", "boom"),
    exceptions.TaskNotRegistered: ("shop.gone",),
    exceptions.StepNotFound: ("abc", "charge"),
    exceptions.WorkerLost: ("abc",),
    exceptions.StepTimeout: ("charge", 2.5),
    exceptions.DirectCallError: ("shop.fulfil", "sleep", 12),
}


@pytest.mark.parametrize("cls", sorted(all_subclasses(DurableError), key=lambda c: c.__name__))
def test_public_error__survives_pickle(cls):
    error = cls(*SAMPLES.get(cls, ("message",)))
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is cls
    assert str(clone) == str(error)
    assert clone.args == error.args


def test_control_flow__is_not_an_exception():
    for cls in (exceptions._Interrupt, exceptions._Suspend, exceptions._LeaseLost, exceptions._StepFailed):
        assert issubclass(cls, BaseException)
        assert not issubclass(cls, Exception)


def test_retry_after__rejects_negative_delay():
    with pytest.raises(exceptions.DurableConfigError):
        exceptions.RetryAfter(-1)

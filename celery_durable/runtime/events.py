"""Events as values, and how a wait's ``match`` selects them (no Django, no Celery)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..exceptions import DurableConfigError
from ..validation import storable

MISSING = object()


@dataclass(frozen=True)
class Event:
    """An event sent with ``send_event``: what ``wait_for_event`` returns and ``on_event`` tasks get."""

    name: str
    data: dict[str, Any]
    id: str
    received_at: datetime

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON-ready dict (kombu's JSON keeps the datetime)."""
        return {"name": self.name, "data": self.data, "id": self.id, "received_at": self.received_at}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Event:
        """Rebuild an event from :meth:`to_json` output."""
        return cls(name=value["name"], data=value["data"], id=value["id"], received_at=value["received_at"])


def consumption_key(event: dict[str, Any]) -> str:
    """What identifies an event a wait consumed: its row, or (in memory) its id.

    Ids may be reused after ``IDEMPOTENCY_WINDOW``; rows never are.
    """
    return f"row:{event['_row']}" if "_row" in event else f"id:{event['id']}"


def lookup(data: Any, path: str) -> Any:
    """The value at a dotted ``path`` inside ``data``, or a sentinel when a part is missing."""
    value = data
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return MISSING
    return value


def matches(data: dict[str, Any], match: dict[str, Any] | None) -> bool:
    """Whether every ``match`` path has that value in ``data`` (a missing field never matches)."""
    if not match:
        return True
    return all(lookup(data, path) == expected for path, expected in match.items())


def validate_match(match: Any, where: str) -> dict[str, Any] | None:
    """Check a ``match`` dict: str paths of identifiers to JSON values."""
    if match is None:
        return None
    if not isinstance(match, dict):
        raise DurableConfigError(f"{where}: match must be a dict of field paths to values, got {match!r}")
    for path in match:
        if not isinstance(path, str) or not path or any(not p.isidentifier() for p in path.split(".")):
            raise DurableConfigError(f"{where}: match key {path!r} is not a field path like 'invoice.id'")
    return dict(match)


# ``Run.waiting_for`` of a run that waits for any of several events (the names are in the
# pending wait step's output, ``{"names": [...]}``). A fixed value, so that ``send_event``
# finds such runs with ``waiting_for IN (name, ANY_OF)`` on the (status, waiting_for) index.
ANY_OF = "(any of several events)"


def wait_names(state: dict[str, Any]) -> list[str]:
    """The event names a stored wait state waits for (one ``name``, or ``names``)."""
    names = state.get("names")
    if isinstance(names, list):
        return [str(name) for name in names]
    return [state["name"]] if state.get("name") is not None else []


def validate_event_names(names: Any, where: str) -> list[str]:
    """One event name or a non-empty list of them, as a list without duplicates (order kept)."""
    if isinstance(names, str):
        return [validate_event_name(names, where)]
    if not isinstance(names, list | tuple) or not names:
        raise DurableConfigError(f"{where}: wait for an event name or a non-empty list of names, got {names!r}")
    unique: list[str] = []
    for name in names:
        if validate_event_name(name, where) not in unique:
            unique.append(name)
    return unique


def validate_event_name(name: Any, where: str) -> str:
    """An event name is a non-empty str of at most 255 characters, without NUL or lone surrogates."""
    if not isinstance(name, str) or not name.strip() or len(name) > 255 or not storable(name):
        raise DurableConfigError(
            f"{where}: an event name must be a non-empty str (max 255, no NUL or lone surrogates), got {name!r}"
        )
    return name

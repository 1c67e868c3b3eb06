"""Stand-ins for the systems the example talks to: a media toolkit and a partner's push API.

They remember their calls, so tests (and you, in a shell) can see what reached them. The
partner API answers ``429 Too Many Requests`` with a ``Retry-After`` when told to.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PartnerRateLimited(Exception):
    """The partner API said 429; ``retry_after`` is its ``Retry-After`` header, in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"429 Too Many Requests (Retry-After: {retry_after:g})")
        self.retry_after = retry_after


class PartnerUnavailable(ConnectionError):
    """The partner API timed out or answered 5xx: worth retrying with a backoff."""


class PartnerRejected(Exception):
    """The partner API answered 4xx (not 429): retrying cannot help."""


@dataclass
class FakeSystems:
    """What the example's tasks called, in order, and the partner's scripted answers."""

    calls: list[tuple[str, int]] = field(default_factory=list)
    partner_answers: list[Exception] = field(default_factory=list)

    def reset(self) -> None:
        self.calls.clear()
        self.partner_answers.clear()


systems = FakeSystems()


def probe(upload_id: int) -> dict[str, int]:
    systems.calls.append(("probe", upload_id))
    return {"upload": upload_id, "duration_seconds": 60 + upload_id}


def transcode(upload_id: int) -> dict[str, str]:
    systems.calls.append(("transcode", upload_id))
    return {"upload": str(upload_id), "url": f"https://cdn.example.com/uploads/{upload_id}/1080p.mp4"}


def push_to_partner(upload_id: int, url: str) -> dict[str, str]:
    systems.calls.append(("push", upload_id))
    if systems.partner_answers:
        raise systems.partner_answers.pop(0)
    return {"partner_id": f"p-{upload_id}", "url": url}


def usage_report(day: str) -> dict[str, str]:
    systems.calls.append(("report", 0))
    return {"day": day, "rows": "42"}

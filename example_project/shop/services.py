"""Stand-ins for the third-party APIs a shop talks to: payments, a supplier, a courier, a CDN.

They keep their state in this project's database so that the demo can show what reached
them (one charge per order, however many times a task was retried or resumed).
"""

import logging
from decimal import Decimal

from .models import Charge

logger = logging.getLogger(__name__)


class SupplierUnavailable(ConnectionError):
    """The supplier's price API timed out (it does, now and then)."""


def create_charge(amount: Decimal, currency: str, *, idempotency_key: str) -> Charge:
    """Charge a card, Stripe-style: the same idempotency key never charges twice."""
    charge, created = Charge.objects.get_or_create(
        idempotency_key=idempotency_key, defaults={"amount": amount, "currency": currency}
    )
    if not created:
        logger.info("payment provider: replayed charge %s for key %s", charge.charge_id, idempotency_key)
    return charge


def fetch_supplier_price(sku: str, attempt: int, fail_times: int) -> Decimal:
    """The supplier's current price for ``sku``; times out on the first ``fail_times`` calls."""
    if attempt <= fail_times:
        raise SupplierUnavailable(f"supplier API timed out fetching {sku} (attempt {attempt})")
    return Decimal("17.50")


def charge_saved_card(amount: Decimal, currency: str, *, idempotency_key: str, funds_available: bool) -> Charge | None:
    """Charge a customer's saved card; ``None`` when the bank declines (insufficient funds).

    A decline is an answer, not an outage: the caller decides when to try again (days
    later, in a dunning flow), so it is returned rather than raised.
    """
    if not funds_available:
        logger.info("payment provider: card declined (insufficient funds), key %s", idempotency_key)
        return None
    return create_charge(amount, currency, idempotency_key=idempotency_key)


class EncoderBusy(ConnectionError):
    """Every GPU encoder is taken; try again in a moment."""


def cdn_url(video_id: int, name: str) -> str:
    """Where the CDN serves a file of a video."""
    return f"https://cdn.example.com/videos/{video_id}/{name}"

"""Durable tasks of the shop.

Each task body is a sequence of named steps. A step's result is checkpointed in the
database when it returns; if the task is retried, its worker crashes or the code is
redeployed, the run resumes after the last completed step instead of starting over.
"""

import functools
import logging
import os
import signal
from collections.abc import Callable
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import F

from celery_durable import NonRetriableError, durable_task, step

from . import services
from .models import Order, Product, Shipment, StepExecution, StockReservation

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


def audited(fn: Callable[P, T]) -> Callable[P, T]:
    """Record each execution of a step body (``StepExecution``), for the demo's checks."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        StepExecution.objects.create(run_id=step.run_id, step=fn.__name__, pid=os.getpid())
        return fn(*args, **kwargs)

    return wrapper


# --- checkout: reserve stock -> charge the card -> mark paid -> send the receipt ----------


@audited
def reserve_stock(order_id: int) -> dict[str, Any]:
    order = Order.objects.select_related("product").get(pk=order_id)
    taken = Product.objects.filter(pk=order.product_id, stock__gte=order.quantity).update(
        stock=F("stock") - order.quantity
    )
    if not taken:
        # Retrying will not conjure up stock: fail the run at once.
        raise NonRetriableError(f"{order.product.sku} is out of stock")
    reservation = StockReservation.objects.create(order=order, product=order.product, quantity=order.quantity)
    return {"reservation": reservation.pk, "sku": order.product.sku, "quantity": order.quantity}


@audited
def charge_card(order_id: int, idempotency_key: str) -> dict[str, str]:
    order = Order.objects.select_related("product").get(pk=order_id)
    charge = services.create_charge(order.total, "EUR", idempotency_key=idempotency_key)
    return {"charge_id": charge.charge_id, "amount": str(charge.amount), "currency": charge.currency}


@audited
def mark_paid(order_id: int, charge_id: str) -> str:
    Order.objects.filter(pk=order_id).update(status=Order.Status.PAID, charge_id=charge_id)
    return Order.Status.PAID


@audited
def send_receipt(order_id: int, charge: dict[str, str]) -> dict[str, str]:
    order = Order.objects.select_related("product").get(pk=order_id)
    subject = f"Your receipt for order #{order.pk}"
    send_mail(
        subject,
        f"{order.quantity} x {order.product.name}: {charge['amount']} {charge['currency']} ({charge['charge_id']})",
        settings.DEFAULT_FROM_EMAIL,
        [order.email],
    )
    return {"to": order.email, "subject": subject}


@durable_task(name="shop.checkout", retries=3, retry_backoff=False, default_retry_delay=1)
def checkout(order_id: int) -> dict[str, Any]:
    """Take an order from "new" to "paid" and e-mail the receipt."""
    # Atomic: the stock update, the reservation row and the step's checkpoint commit
    # together, so stock is taken exactly once per order.
    reservation = step.run("reserve_stock", reserve_stock, order_id, atomic=True)
    # Not atomic (it talks to another system): at-least-once, made safe by the key the
    # payment provider deduplicates on. The key is the same in every retry of this run.
    charge = step.run("charge_card", charge_card, order_id, step.idempotency_key("charge_card"))
    step.run("mark_paid", mark_paid, order_id, charge["charge_id"], atomic=True)
    receipt = step.run("send_receipt", send_receipt, order_id, charge)
    return {
        "order": order_id,
        "status": "paid",
        "charge": charge["charge_id"],
        "reserved": reservation["quantity"],
        "receipt_to": receipt["to"],
    }


# --- a flaky dependency: the step retries, earlier steps do not run again --------------


@audited
def load_product(sku: str) -> dict[str, str]:
    product = Product.objects.get(sku=sku)
    return {"sku": product.sku, "price": str(product.price)}


@audited
def fetch_price(sku: str, fail_times: int) -> str:
    return str(services.fetch_supplier_price(sku, step.attempt, fail_times))


@audited
def update_price(sku: str, price: str) -> dict[str, str]:
    Product.objects.filter(sku=sku).update(price=Decimal(price))
    return {"sku": sku, "price": price}


@durable_task(name="shop.sync_supplier_price", retries=4, retry_backoff=False, default_retry_delay=1)
def sync_supplier_price(sku: str, fail_times: int = 0) -> dict[str, str]:
    """Refresh a product's price from the supplier, whose API times out now and then."""
    before = step.run("load_product", load_product, sku)
    # Raises SupplierUnavailable on the first ``fail_times`` attempts: the step is retried
    # (retries=4, one second apart) while "load_product" is replayed from its checkpoint.
    price = step.run("fetch_price", fetch_price, sku, fail_times)
    after = step.run("update_price", update_price, sku, price, atomic=True)
    return {"sku": sku, "old_price": before["price"], "new_price": after["price"]}


# --- fulfilment, with a worker that dies in the middle ---------------------------------


@audited
def pick_items(order_id: int) -> dict[str, Any]:
    order = Order.objects.select_related("product").get(pk=order_id)
    return {"sku": order.product.sku, "quantity": order.quantity, "bin": f"A-{order.product_id:02d}"}


@audited
def pack_parcel(order_id: int, crash_once: bool) -> dict[str, int]:
    if crash_once and _first_time(f"{step.run_id}.pack_parcel"):
        # The crash demo: the worker dies mid-step, as in an OOM kill or a lost host. This
        # step's checkpoint was never written, so it runs again when the run resumes;
        # "pick_items" before it was checkpointed and does not.
        logger.warning("crash demo: SIGKILL to this worker process (pid %d) in the middle of a step", os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)
    order = Order.objects.get(pk=order_id)
    return {"weight_grams": 250 * order.quantity}


@audited
def book_courier(order_id: int, parcel: dict[str, int]) -> dict[str, str]:
    tracking_number = f"TRK{order_id:06d}-{step.run_id[:8].upper()}"
    order = Order.objects.get(pk=order_id)
    Shipment.objects.create(order=order, tracking_number=tracking_number, parcel_weight_grams=parcel["weight_grams"])
    Order.objects.filter(pk=order_id).update(status=Order.Status.SHIPPED, tracking_number=tracking_number)
    return {"tracking_number": tracking_number}


@durable_task(name="shop.fulfil_order")
def fulfil_order(order_id: int, crash_once: bool = False) -> dict[str, Any]:
    """Pick, pack and ship an order. With ``crash_once=True`` it kills its worker once."""
    picked = step.run("pick_items", pick_items, order_id)
    parcel = step.run("pack_parcel", pack_parcel, order_id, crash_once)
    shipment = step.run("book_courier", book_courier, order_id, parcel, atomic=True)
    return {"order": order_id, "items": picked["quantity"], **shipment}


def _first_time(name: str) -> bool:
    """True the first time it is called with ``name`` (a marker file remembers, across processes)."""
    marker_dir = settings.SHOP_CRASH_MARKER_DIR
    marker_dir.mkdir(parents=True, exist_ok=True)
    try:
        with open(marker_dir / name, "x") as marker:
            marker.write(str(os.getpid()))
    except FileExistsError:
        return False
    return True

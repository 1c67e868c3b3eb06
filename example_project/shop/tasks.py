"""Durable tasks of the shop.

Each task body is a sequence of named steps. A step's result is checkpointed in the
database when it returns; if the task is retried, its worker crashes or the code is
redeployed, the run resumes after the last completed step instead of starting over.

The second half shows runs that **suspend**: a dunning flow that sleeps until the billing
date and between charge attempts (``step.sleep_until``, ``step.sleep``), an onboarding flow
that waits for an event (``step.wait_for_event``), and a video pipeline that fans out to
child runs and joins them (``step.gather``). A suspended run holds no worker and no broker
message: its state is in the database until its time, event or children come.

The last part shows flow control: ``transcode_video`` runs one upload per user at a time,
across all workers, and a paid plan's upload goes ahead of the user's free ones.
"""

import functools
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar

from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db.models import F
from django.utils import timezone

from celery_durable import Concurrency, Event, NonRetriableError, durable_task, step

from . import services
from .models import Account, Invoice, Order, Product, Shipment, StepExecution, StockReservation, Video

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


def audited(fn: Callable[P, T]) -> Callable[P, T]:
    """Record each execution of a step body (``StepExecution``), for the demo's checks.

    The steps of this module are named after their functions, so inside the body
    ``step.idempotency_key(fn.__name__)`` is ``"<run id>:<stored step id>"``, occurrence
    suffix included (``charge_invoice#2`` in a loop).
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        step_id = step.idempotency_key(fn.__name__).split(":", 1)[1]
        StepExecution.objects.create(run_id=step.run_id, step=step_id, pid=os.getpid())
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


# --- dunning: charge on the billing date, retry the charge over days, send the receipt ---


@audited
def load_invoice(invoice_id: int) -> dict[str, Any]:
    invoice = Invoice.objects.get(pk=invoice_id)
    return {
        "number": invoice.number,
        "amount": str(invoice.amount),
        "currency": invoice.currency,
        "due_at": invoice.due_at,
    }


@audited
def charge_invoice(invoice_id: int, attempt: int, declines: int, idempotency_key: str) -> dict[str, str]:
    invoice = Invoice.objects.get(pk=invoice_id)
    charge = services.charge_saved_card(
        invoice.amount, invoice.currency, idempotency_key=idempotency_key, funds_available=attempt > declines
    )
    if charge is None:
        return {"status": "declined", "reason": "insufficient_funds"}
    return {"status": "succeeded", "charge_id": charge.charge_id}


@audited
def mark_invoice_paid(invoice_id: int, charge_id: str) -> str:
    Invoice.objects.filter(pk=invoice_id).update(
        status=Invoice.Status.PAID, charge_id=charge_id, paid_at=timezone.now()
    )
    return Invoice.Status.PAID


@audited
def mark_invoice_uncollectible(invoice_id: int) -> str:
    Invoice.objects.filter(pk=invoice_id).update(status=Invoice.Status.UNCOLLECTIBLE)
    return Invoice.Status.UNCOLLECTIBLE


@audited
def send_invoice_receipt(invoice_id: int, charge_id: str) -> dict[str, str]:
    invoice = Invoice.objects.get(pk=invoice_id)
    subject = f"Receipt for invoice {invoice.number}"
    body = f"We charged {invoice.amount} {invoice.currency} to your card ({charge_id}). Thank you!"
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [invoice.email])
    return {"to": invoice.email, "subject": subject}


MAX_CHARGE_ATTEMPTS = 4


@durable_task(name="shop.collect_invoice")
def collect_invoice(
    invoice_id: int, declines: int = 0, retry_every_seconds: float = timedelta(days=2).total_seconds()
) -> dict[str, Any]:
    """Charge an invoice on its billing date; if the card is declined, retry every two days.

    The run sleeps in the database (status ``sleeping``) until the billing date and between
    attempts: no worker, no broker message and no cron job holds it meanwhile. ``declines``
    makes the fake bank decline the first attempts; the demo passes a retry interval of
    seconds instead of days.
    """
    invoice = step.run("load_invoice", load_invoice, invoice_id)
    step.sleep_until("billing-date", invoice["due_at"])
    for attempt in range(1, MAX_CHARGE_ATTEMPTS + 1):
        # One step per attempt ("charge_invoice", "charge_invoice#2", ...), each with its own
        # idempotency key: a retried attempt never charges twice, a new attempt may charge.
        charge = step.run(
            "charge_invoice", charge_invoice, invoice_id, attempt, declines, step.idempotency_key("charge_invoice")
        )
        if charge["status"] == "succeeded":
            step.run("mark_invoice_paid", mark_invoice_paid, invoice_id, charge["charge_id"], atomic=True)
            step.run("send_invoice_receipt", send_invoice_receipt, invoice_id, charge["charge_id"])
            # Exactly once per run, however often this run is replayed: starts notify_accounting.
            step.send_event(
                "announce-payment", "invoice.paid", {"invoice": invoice["number"], "amount": invoice["amount"]}
            )
            return {"invoice": invoice["number"], "status": "paid", "charge": charge["charge_id"], "attempts": attempt}
        if attempt < MAX_CHARGE_ATTEMPTS:
            step.sleep("retry-wait", retry_every_seconds)
    step.run("mark_invoice_uncollectible", mark_invoice_uncollectible, invoice_id, atomic=True)
    return {"invoice": invoice["number"], "status": "uncollectible", "attempts": MAX_CHARGE_ATTEMPTS}


@audited
def email_accounting(number: str, amount: str, received_at: datetime) -> dict[str, str]:
    subject = f"Invoice {number} paid: {amount}"
    body = f"Payment recorded at {received_at.isoformat()}."
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, ["accounting@example.com"])
    return {"to": "accounting@example.com", "subject": subject}


@durable_task(name="shop.notify_accounting", on_event="invoice.paid")
def notify_accounting(event: Event) -> dict[str, str]:
    """Started by every ``invoice.paid`` event (``on_event``), with the event as argument."""
    return step.run(
        "email_accounting", email_accounting, event.data["invoice"], event.data["amount"], event.received_at
    )


# --- onboarding: wait (days) for the user to confirm the e-mail address ----------------


@audited
def send_confirmation_email(account_id: int) -> dict[str, str]:
    account = Account.objects.get(pk=account_id)
    subject = "Confirm your e-mail address"
    body = f"Click https://shop.example.com/confirm/{account.pk}/ within three days."
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [account.email])
    return {"to": account.email, "subject": subject}


@audited
def activate_account(account_id: int, confirmed_at: datetime) -> str:
    Account.objects.filter(pk=account_id).update(status=Account.Status.ACTIVE, confirmed_at=confirmed_at)
    return Account.Status.ACTIVE


@audited
def send_welcome_email(account_id: int) -> dict[str, str]:
    account = Account.objects.get(pk=account_id)
    subject = "Welcome to the shop!"
    send_mail(subject, "Your account is active.", settings.DEFAULT_FROM_EMAIL, [account.email])
    return {"to": account.email, "subject": subject}


@audited
def expire_signup(account_id: int) -> str:
    Account.objects.filter(pk=account_id).update(status=Account.Status.EXPIRED)
    return Account.Status.EXPIRED


@durable_task(name="shop.onboard_user")
def onboard_user(account_id: int, confirm_within_seconds: float = timedelta(days=3).total_seconds()) -> dict[str, Any]:
    """Send the confirmation e-mail, wait for ``user.confirmed`` (up to three days), activate.

    While it waits the run is ``waiting``: it holds no worker. ``send_event("user.confirmed",
    {"account_id": ...})`` from the web view that handles the link resumes it; an event
    sent before the run reached the wait is not lost.
    """
    step.run("send_confirmation_email", send_confirmation_email, account_id)
    event = step.wait_for_event(
        "confirmation", "user.confirmed", match={"account_id": account_id}, timeout=confirm_within_seconds
    )
    if event is None:  # nobody clicked the link in time
        status = step.run("expire_signup", expire_signup, account_id, atomic=True)
        return {"account": account_id, "status": status}
    step.run("activate_account", activate_account, account_id, event.received_at, atomic=True)
    step.run("send_welcome_email", send_welcome_email, account_id)
    return {"account": account_id, "status": "active", "event": event.id}


# --- a video pipeline: fan out to transcoders (durable and plain tasks), fan in --------


@audited
def probe_video(video_id: int) -> dict[str, Any]:
    video = Video.objects.get(pk=video_id)
    return {"title": video.title, "duration_seconds": video.duration_seconds}


@audited
def encode(video_id: int, resolution: str, encoder_busy_once: bool) -> dict[str, Any]:
    if encoder_busy_once and _first_time(f"{step.run_id}.encode"):
        # A transient error: the step is retried (default_retry_delay=1 s) while the other
        # children finish; the parent still gets the results in the order it asked for.
        raise services.EncoderBusy(f"no free encoder for {resolution}")
    time.sleep(0.1)  # encoding...
    height = int(resolution.rstrip("p"))
    return {"resolution": resolution, "url": services.cdn_url(video_id, f"{resolution}.mp4"), "kbps": height * 4}


@durable_task(name="shop.transcode", retries=3, retry_backoff=False, default_retry_delay=1)
def transcode(video_id: int, resolution: str, encoder_busy_once: bool = False) -> dict[str, Any]:
    """A durable child of ``publish_video``: one rendition."""
    return step.run("encode", encode, video_id, resolution, encoder_busy_once)


@shared_task(name="shop.make_thumbnail")
def make_thumbnail(video_id: int, at_second: int) -> dict[str, str]:
    """A plain Celery task (not durable), gathered as a child all the same."""
    return {"thumbnail": services.cdn_url(video_id, f"thumb-{at_second}s.jpg")}


@audited
def publish_renditions(video_id: int, renditions: list[dict[str, Any]], thumbnail: str) -> str:
    Video.objects.filter(pk=video_id).update(
        status=Video.Status.PUBLISHED, renditions=renditions, thumbnail_url=thumbnail
    )
    return Video.Status.PUBLISHED


RESOLUTIONS = ("1080p", "720p", "480p")


@durable_task(name="shop.publish_video")
def publish_video(video_id: int, encoder_busy_once: bool = False) -> dict[str, Any]:
    """Transcode a video in parallel (one child run per rendition, plus a thumbnail), then publish.

    The parent is ``waiting`` while its children run; it resumes once, when the last one
    finishes, and ``step.gather`` returns the results in the order of the signatures.
    """
    info = step.run("probe_video", probe_video, video_id)
    children = [
        transcode.s(video_id, resolution, encoder_busy_once=encoder_busy_once and resolution == RESOLUTIONS[0])
        for resolution in RESOLUTIONS
    ]
    *renditions, thumbnail = step.gather("transcode", [*children, make_thumbnail.s(video_id, 5)])
    step.run("publish_renditions", publish_renditions, video_id, renditions, thumbnail["thumbnail"], atomic=True)
    return {"title": info["title"], "renditions": [r["resolution"] for r in renditions], **thumbnail}


# --- per-user concurrency, paid plans first: one transcode per user at a time -----------

# How long the demo's fake encoder takes per upload.
ENCODE_SECONDS = 0.5


@audited
def encode_upload(video_id: int) -> dict[str, Any]:
    time.sleep(ENCODE_SECONDS)  # encoding...
    return {"resolution": "1080p", "url": services.cdn_url(video_id, "1080p.mp4")}


@audited
def publish_upload(video_id: int, rendition: dict[str, Any]) -> str:
    Video.objects.filter(pk=video_id).update(status=Video.Status.PUBLISHED, renditions=[rendition])
    return Video.Status.PUBLISHED


def paid_first(video_id: int, user_id: int, plan: str) -> int:
    """Priority of a transcode: a paid plan stands 600 s ahead in its user's backlog."""
    return 600 if plan != "free" else 0


@durable_task(
    name="shop.transcode_video",
    # At most one transcode per user at a time, across every worker: a user who uploads
    # ten videos does not take ten encoders from everybody else. The other uploads wait
    # in the database (status "pending"), not in the broker and not on a worker.
    concurrency=Concurrency(limit=1, key="user_id"),
    # Called with the task's arguments; a paid upload goes ahead of the user's free ones.
    priority=paid_first,
)
def transcode_video(video_id: int, user_id: int, plan: str = "free") -> dict[str, Any]:
    """Transcode a user's upload and publish it."""
    rendition = step.run("encode_upload", encode_upload, video_id)
    status = step.run("publish_upload", publish_upload, video_id, rendition, atomic=True)
    return {"video": video_id, "user": user_id, "plan": plan, "status": status}


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

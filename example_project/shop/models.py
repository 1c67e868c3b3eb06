"""A tiny shop: products, orders, and what the checkout and fulfilment tasks write."""

from decimal import Decimal

from django.db import models


class Product(models.Model):
    sku = models.CharField(max_length=32, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=10, decimal_places=2)
    stock = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.sku} {self.name}"


class Order(models.Model):
    class Status(models.TextChoices):
        NEW = "new"
        PAID = "paid"
        SHIPPED = "shipped"

    email = models.EmailField()
    product = models.ForeignKey(Product, on_delete=models.PROTECT, related_name="orders")
    quantity = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NEW)
    charge_id = models.CharField(max_length=64, blank=True)
    tracking_number = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    @property
    def total(self) -> Decimal:
        return self.product.price * self.quantity

    def __str__(self) -> str:
        return f"order #{self.pk} ({self.status})"


class StockReservation(models.Model):
    """Written by the atomic ``reserve_stock`` step, together with its checkpoint."""

    order = models.OneToOneField(Order, on_delete=models.CASCADE, related_name="reservation")
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)


class Charge(models.Model):
    """The fake payment provider's ledger (think Stripe's side of the API)."""

    idempotency_key = models.CharField(max_length=255, unique=True)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    created_at = models.DateTimeField(auto_now_add=True)

    @property
    def charge_id(self) -> str:
        return f"ch_{self.pk:06d}"


class Shipment(models.Model):
    """Written by the atomic ``book_courier`` step of the fulfilment task."""

    order = models.OneToOneField(Order, on_delete=models.CASCADE, related_name="shipment")
    tracking_number = models.CharField(max_length=64, unique=True)
    parcel_weight_grams = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)


class StepExecution(models.Model):
    """One row per execution of a step body: the demo's ground truth for "ran only once".

    Written by the ``@audited`` step functions of ``shop.tasks``; a real project would
    not need it (the run's Step rows already show attempts), but it lets the demo prove
    from the database that a completed step never ran again after a crash.
    """

    run_id = models.CharField(max_length=255, db_index=True)
    step = models.CharField(max_length=200)
    pid = models.IntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.run_id}/{self.step} in pid {self.pid}"


# --- suspension: a dunning flow, an onboarding flow and a video pipeline ----------------


class Invoice(models.Model):
    """A subscription invoice, charged on its billing date by the ``collect_invoice`` flow."""

    class Status(models.TextChoices):
        OPEN = "open"
        PAID = "paid"
        UNCOLLECTIBLE = "uncollectible"

    number = models.CharField(max_length=32, unique=True)
    email = models.EmailField()
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    due_at = models.DateTimeField(help_text="the billing date: the card is charged then, not before")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    charge_id = models.CharField(max_length=64, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"invoice {self.number} ({self.status})"


class Account(models.Model):
    """A sign-up that the ``onboard_user`` flow activates once the e-mail address is confirmed."""

    class Status(models.TextChoices):
        PENDING = "pending"
        ACTIVE = "active"
        EXPIRED = "expired"

    email = models.EmailField(unique=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.email} ({self.status})"


class Video(models.Model):
    """An uploaded video that the ``publish_video`` pipeline transcodes and publishes."""

    class Status(models.TextChoices):
        UPLOADED = "uploaded"
        PUBLISHED = "published"

    title = models.CharField(max_length=200)
    duration_seconds = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.UPLOADED)
    renditions = models.JSONField(default=list, blank=True)
    thumbnail_url = models.URLField(blank=True)

    def __str__(self) -> str:
        return f"{self.title} ({self.status})"

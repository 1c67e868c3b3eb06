from django.contrib import admin

from .models import Account, Charge, Invoice, Order, Product, Shipment, StepExecution, StockReservation, Video


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("sku", "name", "price", "stock")


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "email", "product", "quantity", "status", "charge_id", "tracking_number", "created_at")
    list_filter = ("status",)


@admin.register(Charge)
class ChargeAdmin(admin.ModelAdmin):
    list_display = ("id", "idempotency_key", "amount", "currency", "created_at")


admin.site.register(StockReservation)
admin.site.register(Shipment)


@admin.register(StepExecution)
class StepExecutionAdmin(admin.ModelAdmin):
    list_display = ("run_id", "step", "pid", "created_at")
    search_fields = ("=run_id",)


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = ("number", "email", "amount", "currency", "due_at", "status", "charge_id", "paid_at")
    list_filter = ("status",)


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    list_display = ("email", "status", "confirmed_at")
    list_filter = ("status",)


@admin.register(Video)
class VideoAdmin(admin.ModelAdmin):
    list_display = ("title", "duration_seconds", "status", "thumbnail_url")
    list_filter = ("status",)

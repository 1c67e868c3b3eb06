from django.contrib import admin
from django.urls import path

# Durable runs and their step timelines: http://127.0.0.1:8000/admin/celery_durable/run/
urlpatterns = [path("admin/", admin.site.urls)]

"""The engine: executing runs and admitting calls, with Django transactions and no Celery.

It is handed a task registry (:mod:`celery_durable.engine.registry`) instead of importing
the Celery task class, and returns what must be published instead of publishing.
"""

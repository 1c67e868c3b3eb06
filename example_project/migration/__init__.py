"""The migration guide's worked example: plain Celery code (``before``) and the same tasks as durable ones (``after``).

See docs/howto/migrate.md. No models: the "before" code keeps its state in Redis, as such
code usually does; the "after" code keeps it in celery-durable's checkpoints.
"""

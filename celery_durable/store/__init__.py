"""The store: every row write of runs, steps, slots, events and flow state.

One function per transition, each a conditional UPDATE or INSERT (or one transaction of
them) that returns what happened: the messages to publish, the runs to wake. Nothing here
publishes or knows Celery; the engine decides, the integration publishes.
"""

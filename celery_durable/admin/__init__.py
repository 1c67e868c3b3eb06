"""The Django admin as the control plane of durable runs.

:class:`~celery_durable.admin.runs.RunAdmin` registers the runs changelist, the run page
(arguments, result or error, the step timeline, parent and child runs), the dashboard and
the cancel/replay actions.
"""

from __future__ import annotations

from .runs import RunAdmin

__all__ = ["RunAdmin"]

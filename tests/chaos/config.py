"""Timing of the chaos workers (imported before Django is set up, so no Django imports here).

Short leases make recoveries quick; a heartbeat every second keeps live leases at least
``LEASE - HEARTBEAT`` seconds ahead, the margin that waker clock jumps stay below.
"""

LEASE, HEARTBEAT, WAKER, REPUBLISH = 5.0, 1.0, 0.5, 3.0
DURABLE = {"LEASE_SECONDS": LEASE, "HEARTBEAT_SECONDS": HEARTBEAT, "WAKER_INTERVAL": WAKER,
           "REPUBLISH_AFTER_SECONDS": REPUBLISH}  # fmt: skip

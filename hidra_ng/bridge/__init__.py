"""The facility bridge (SPEC §13): durable frames into RabbitMQ streams, exactly once.

``hidra-ng bridge`` runs :class:`Bridge`; names.py maps stream names, messages.py
defines the broker message (documented there and in examples/facility/README.md).
"""

from hidra_ng.bridge.daemon import Bridge
from hidra_ng.bridge.names import broker_name, hidra_name

__all__ = ["Bridge", "broker_name", "hidra_name"]

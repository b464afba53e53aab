"""hidra_ng: lossless, fast transfer of detector frames to the data center.

The public API (SPEC §4)::

    Producer                      spool + send + resend until acknowledged
    Consumer, Subscriber          read stored frames; follow live frames
    Frame, StreamInfo             what consumers get
    HidraError and its subclasses every error a user can meet
"""

from hidra_ng.client import Consumer
from hidra_ng.errors import (
    AuthenticationError,
    ConfigError,
    Gone,
    HidraError,
    InvalidFrame,
    InvalidInput,
    InvalidStreamName,
    MessageTooLarge,
    NotYetAvailable,
    ProtocolError,
    ReceiverUnavailable,
    SpoolFull,
    StorageError,
    StreamFinished,
    Unavailable,
    UnsupportedVersion,
)
from hidra_ng.frames import Frame
from hidra_ng.producer import Producer
from hidra_ng.protocol import StreamInfo
from hidra_ng.subscriber import Subscriber

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "Consumer",
    "Frame",
    "Gone",
    "HidraError",
    "InvalidFrame",
    "InvalidInput",
    "InvalidStreamName",
    "MessageTooLarge",
    "NotYetAvailable",
    "Producer",
    "ProtocolError",
    "ReceiverUnavailable",
    "SpoolFull",
    "StorageError",
    "StreamFinished",
    "StreamInfo",
    "Subscriber",
    "Unavailable",
    "UnsupportedVersion",
]

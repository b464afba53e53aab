"""hidra_ng: lossless, fast transfer of detector frames to the data center.

The public API (SPEC §4)::

    Producer                      spool + send + resend until acknowledged
    Consumer, Subscriber          read stored frames; follow live frames
    Frame, StreamInfo             what consumers get
    export_hdf5                   a stream as a NeXus-style HDF5 file
    HidraError and its subclasses every error a user can meet
"""

from hidra_ng.client.consumer import Consumer
from hidra_ng.client.subscriber import Subscriber
from hidra_ng.errors import (
    AnnounceError,
    AuthenticationError,
    BrokerError,
    ConfigError,
    DiskFull,
    FieldError,
    Gone,
    HidraError,
    InvalidArgument,
    InvalidArgumentType,
    InvalidFrame,
    InvalidInput,
    InvalidStreamName,
    LeaseHeld,
    MessageTooLarge,
    NoShardForStream,
    NotAnImage,
    NotYetAvailable,
    ProtocolError,
    PushRefused,
    QueryError,
    ReceiverUnavailable,
    SpoolFull,
    StorageError,
    StreamFinished,
    StreamV1Error,
    StreamV2Error,
    Unavailable,
    UnsupportedVersion,
    WriteRefused,
)
from hidra_ng.sender.producer import Producer
from hidra_ng.wire.frames import Frame
from hidra_ng.wire.protocol import StreamInfo


def __getattr__(name: str):
    # export_hdf5 imports h5py; load it only when asked for
    if name == "export_hdf5":
        from hidra_ng.client.export import export_hdf5

        return export_hdf5
    raise AttributeError(f"module 'hidra_ng' has no attribute {name!r}")


__all__ = [
    "AnnounceError",
    "AuthenticationError",
    "BrokerError",
    "ConfigError",
    "Consumer",
    "DiskFull",
    "FieldError",
    "Frame",
    "Gone",
    "HidraError",
    "InvalidArgument",
    "InvalidArgumentType",
    "InvalidFrame",
    "InvalidInput",
    "InvalidStreamName",
    "LeaseHeld",
    "MessageTooLarge",
    "NoShardForStream",
    "NotAnImage",
    "NotYetAvailable",
    "Producer",
    "ProtocolError",
    "PushRefused",
    "QueryError",
    "ReceiverUnavailable",
    "SpoolFull",
    "StorageError",
    "StreamFinished",
    "StreamInfo",
    "StreamV1Error",
    "StreamV2Error",
    "Subscriber",
    "Unavailable",
    "UnsupportedVersion",
    "WriteRefused",
    "export_hdf5",
]

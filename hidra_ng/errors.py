"""The whole exception tree of hidra_ng.

Every error a user can meet derives from :class:`HidraError`. The branches are
sorted by what the user has to do about it::

    HidraError
    ├── ConfigError              fix the configuration or the command line
    │   ├── FieldError           one setting: names its key, value and what is expected
    │   └── LeaseHeld            another bridge holds the broker lease (one per prefix)
    ├── InvalidInput             fix what you pass in (a named value is wrong)
    │   ├── InvalidArgument      a bad argument to a method (also a ValueError)
    │   │   └── InvalidArgumentType   of the wrong type (also a TypeError)
    │   ├── InvalidStreamName
    │   ├── NoShardForStream     a stream that no [[shard]] of the shard map matches
    │   ├── InvalidFrame         dtype / shape / payload do not fit together
    │   ├── MessageTooLarge
    │   ├── QueryError           a metadata query that does not parse (names the position)
    │   ├── StreamV2Error        a DECTRIS Stream V2 message that cannot be used (also a
    │   │                        ValueError)
    │   ├── StreamV1Error        a DECTRIS Stream V1 message that cannot be used (also a
    │   │                        ValueError)
    │   ├── PushRefused          a message pushed to a zmq: source breaks its header
    │   │                        format (also a ValueError; ``reason`` is its counter label)
    │   ├── WriteRefused         frames the writer's format cannot write (``reason``)
    │   └── NotAnImage           the view cannot show this frame as an image
    ├── ProtocolError            a peer sent bytes that are not hidra_ng messages
    │   └── UnsupportedVersion
    ├── Unavailable              wait or retry later
    │   ├── ReceiverUnavailable
    │   ├── NotYetAvailable      the index is not written yet
    │   ├── SpoolFull            the local spool is at its limit
    │   ├── BrokerError          the bridge's broker refused a request or is gone
    │   └── AnnounceError        the writer's broker did not take an announcement
    ├── Gone                     retention removed the index; it will not come back
    ├── StreamFinished           the stream is finished and read to its end
    ├── AuthenticationError      keys are missing, unreadable or refused
    └── StorageError             LMDB failed (disk full, corrupt, permissions)
        └── DiskFull             no space left: a commit failed, or the writer's disk

Every exception class of hidra_ng is defined here (a test checks it); a module
that raises one imports it from here.

Library errors (zmq, lmdb) are wrapped at the boundary into these, with the
original as ``__cause__``.

Errors raised by the receiver travel to clients by class name (see
:data:`REMOTE_ERRORS`) and are raised there as the same class.
"""

from __future__ import annotations


class HidraError(Exception):
    """Base of every hidra_ng error."""


class ConfigError(HidraError):
    """A setting, a config file or a command-line value is wrong."""


class InvalidInput(HidraError):
    """A value passed in is not acceptable; the message names it."""


class InvalidArgument(InvalidInput, ValueError):
    """A bad argument to a method; a ValueError too, for callers that catch that."""


class InvalidArgumentType(InvalidArgument, TypeError):
    """An argument of the wrong type; a TypeError too, for callers that catch that."""


class QueryError(InvalidInput):
    """A query that cannot be parsed; the message names the position."""


class StreamV2Error(InvalidInput, ValueError):
    """A Stream V2 message that cannot be used; the message says why."""


class StreamV1Error(InvalidInput, ValueError):
    """A Stream V1 message that cannot be used; the message says why."""


class PushRefused(InvalidInput, ValueError):
    """A pushed message that breaks the header format; ``reason`` is its counter label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class WriteRefused(InvalidInput):
    """Frames this format cannot write (no start message, a changed shape, ...).

    The stream's writer stops at that index; the frames stay in the receiver.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotAnImage(InvalidInput):
    """The frame holds no array (bytes or metadata only), or one a format cannot hold."""


class InvalidStreamName(InvalidInput):
    """A stream name breaks the naming rule of SPEC §2."""


class NoShardForStream(InvalidInput):
    """No ``[[shard]]`` of the shard map matches the stream (SPEC §14); the message names both."""


class InvalidFrame(InvalidInput):
    """A frame's dtype, shape, compression or payload do not fit together."""


class MessageTooLarge(InvalidInput):
    """Data or metadata exceed the configured maximum."""


class FieldError(ConfigError):
    """One setting is wrong; the message names key, value and expectation."""

    def __init__(
        self, section: str, key: str, value: object, expected: str, clashes_with: str = ""
    ) -> None:
        self.section, self.key, self.value, self.expected = section, key, value, expected
        self.clashes_with = clashes_with  # another key that must differ from this one
        super().__init__(f"{section}.{key} = {_show(value)}: expected {expected}")


def _show(value: object) -> str:
    """A value as the user wrote it (TOML-ish)."""
    import json

    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


class ProtocolError(HidraError):
    """Bytes received are not a well-formed hidra_ng message."""


class UnsupportedVersion(ProtocolError):
    """A message carries a protocol version this build does not speak."""


class Unavailable(HidraError):
    """Something is not available now but may be later."""


class ReceiverUnavailable(Unavailable):
    """The receiver did not answer in time."""


class NotYetAvailable(Unavailable):
    """The requested index or stream has not been written yet."""


class SpoolFull(Unavailable):
    """The sender's spool stayed at its limit for the whole send timeout."""


class BrokerError(Unavailable):
    """The broker refused a request or the connection is gone."""


class AnnounceError(Unavailable):
    """The broker did not take an announcement."""


class Gone(HidraError):
    """The requested index was removed by retention."""


class StreamFinished(HidraError):
    """The stream is finished and there is nothing more to read."""


class AuthenticationError(HidraError):
    """CurveZMQ keys are missing, unreadable or not accepted."""


class StorageError(HidraError):
    """The LMDB store or spool failed."""


class DiskFull(StorageError):
    """No space left: an LMDB commit failed (ENOSPC or a map that cannot grow), or the
    writer's output filesystem is full (it waits and retries)."""


class LeaseHeld(ConfigError):
    """Another live bridge holds the broker lease; ``holder`` is its claim, the message
    describes it."""

    def __init__(self, message: str, holder: dict) -> None:
        super().__init__(message)
        self.holder = holder


def reason(err: BaseException) -> str:
    """The bounded label a refused message is counted under (``rejected_total{reason}``)."""
    for cls, label in (
        (UnsupportedVersion, "version"),
        (ProtocolError, "malformed"),
        (InvalidStreamName, "stream_name"),
        (MessageTooLarge, "too_large"),
        (InvalidInput, "invalid"),
        (AuthenticationError, "auth"),
    ):
        if isinstance(err, cls):
            return label
    return "other"


#: Errors a receiver may report to a client, by the name sent on the wire.
REMOTE_ERRORS: dict[str, type[HidraError]] = {
    cls.__name__: cls
    for cls in (
        HidraError,
        InvalidInput,
        InvalidStreamName,
        InvalidFrame,
        MessageTooLarge,
        ProtocolError,
        UnsupportedVersion,
        NotYetAvailable,
        Gone,
        StreamFinished,
        StorageError,
    )
}

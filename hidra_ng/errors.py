"""The whole exception tree of hidra_ng.

Every error a user can meet derives from :class:`HidraError`. The branches are
sorted by what the user has to do about it::

    HidraError
    ├── ConfigError              fix the configuration or the command line
    ├── InvalidInput             fix what you pass in (a named value is wrong)
    │   ├── InvalidStreamName
    │   ├── InvalidFrame         dtype / shape / payload do not fit together
    │   └── MessageTooLarge
    ├── ProtocolError            a peer sent bytes that are not hidra_ng messages
    │   └── UnsupportedVersion
    ├── Unavailable              wait or retry later
    │   ├── ReceiverUnavailable
    │   ├── NotYetAvailable      the index is not written yet
    │   └── SpoolFull            the local spool is at its limit
    ├── Gone                     retention removed the index; it will not come back
    ├── StreamFinished           the stream is finished and read to its end
    ├── AuthenticationError      keys are missing, unreadable or refused
    └── StorageError             LMDB failed (disk full, corrupt, permissions)

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


class InvalidStreamName(InvalidInput):
    """A stream name breaks the naming rule of SPEC §2."""


class InvalidFrame(InvalidInput):
    """A frame's dtype, shape, compression or payload do not fit together."""


class MessageTooLarge(InvalidInput):
    """Data or metadata exceed the configured maximum."""


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


class Gone(HidraError):
    """The requested index was removed by retention."""


class StreamFinished(HidraError):
    """The stream is finished and there is nothing more to read."""


class AuthenticationError(HidraError):
    """CurveZMQ keys are missing, unreadable or not accepted."""


class StorageError(HidraError):
    """The LMDB store or spool failed."""


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

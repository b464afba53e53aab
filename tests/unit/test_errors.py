"""One error tree: every class in hidra_ng.errors is drawn in its docstring; client
methods raise HidraError subclasses for bad arguments; zmq errors are wrapped."""

from __future__ import annotations

import importlib
import pkgutil
import re

import pytest
import zmq

from hidra_ng import (
    ConfigError,
    Consumer,
    HidraError,
    InvalidArgument,
    InvalidArgumentType,
    Subscriber,
    errors,
)


def test_every_error_class_is_in_the_drawn_tree() -> None:
    drawn = set(re.findall(r"[├└]── (\w+)", errors.__doc__ or ""))
    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.HidraError)
    }
    assert classes - {"HidraError"} == drawn


def test_errors_that_lived_elsewhere_are_in_the_tree() -> None:
    from hidra_ng.lmdbenv import DiskFull
    from hidra_ng.receiver.query import QueryError
    from hidra_ng.sender.sources.dectris import StreamV2Error

    assert issubclass(DiskFull, errors.StorageError)
    assert issubclass(QueryError, errors.InvalidInput)
    assert issubclass(StreamV2Error, errors.InvalidInput) and issubclass(StreamV2Error, ValueError)
    assert issubclass(errors.FieldError, errors.ConfigError)


def every_module() -> list[str]:
    """Every module of hidra_ng but ``__main__`` (which runs the command line)."""
    import hidra_ng

    found = ["hidra_ng"]
    for info in pkgutil.walk_packages(hidra_ng.__path__, "hidra_ng."):
        if not info.name.endswith(".__main__"):
            found.append(info.name)
    return found


def test_every_exception_class_is_defined_in_errors() -> None:
    """Modules import their errors from hidra_ng.errors; private ones (``_Name``, never
    raised to a user) are the only exceptions."""
    elsewhere = []
    for name in every_module():
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == name
                and name != "hidra_ng.errors"
                and not attr.startswith("_")
            ):
                elsewhere.append(f"{name}.{attr}")
    assert not elsewhere, f"define these in hidra_ng/errors.py: {elsewhere}"


def test_errors_of_the_sources_bridge_and_writer_are_in_the_tree() -> None:
    from hidra_ng.bridge.broker import BrokerError
    from hidra_ng.bridge.lease import LeaseHeld
    from hidra_ng.sender.sources.dectris1 import StreamV1Error
    from hidra_ng.sender.sources.zmq_push import PushRefused
    from hidra_ng.writer.announce import AnnounceError
    from hidra_ng.writer.files import DiskFull
    from hidra_ng.writer.formats import WriteRefused

    assert issubclass(StreamV1Error, errors.InvalidInput) and issubclass(StreamV1Error, ValueError)
    assert issubclass(PushRefused, errors.InvalidInput) and issubclass(PushRefused, ValueError)
    assert PushRefused("size", "too big").reason == "size"
    assert WriteRefused("no start", "no_start").reason == "no_start"
    assert issubclass(WriteRefused, errors.InvalidInput)
    assert issubclass(BrokerError, errors.Unavailable)
    assert issubclass(AnnounceError, errors.Unavailable)
    assert DiskFull is errors.DiskFull  # one class for a full disk, the writer's too
    held = LeaseHeld("pid 7 on host h", {"pid": 7})
    assert isinstance(held, errors.ConfigError) and held.holder == {"pid": 7}


def test_bad_arguments_to_the_views_encoder_raise_hidra_errors() -> None:
    import numpy as np

    from hidra_ng.view import images
    from hidra_ng.wire.frames import Frame

    frame = Frame(
        stream="s", index=0, data=np.zeros((2, 2), np.uint8), meta={}, sender="x", seq=0,
        created=0.0, stored=0.0,
    )  # fmt: skip
    with pytest.raises(InvalidArgument, match="format 'gif' is unknown; expected one of"):
        images.encode(frame, "gif")


def test_bad_arguments_to_client_methods_raise_hidra_errors() -> None:
    # connecting needs no receiver: nothing is sent before the arguments are checked
    with Consumer("tcp://127.0.0.1:9", request_timeout=0.1) as c:
        with pytest.raises(InvalidArgument, match="replay range start=-1") as bad:
            c.replay("s", start=-1)
        assert isinstance(bad.value, HidraError) and isinstance(bad.value, ValueError)
        with pytest.raises(InvalidArgument, match="window_frames=0"):
            c.replay("s", window_frames=0)
        with pytest.raises(InvalidArgumentType, match="index '3' is not an int") as typed:
            c.get("s", "3")  # type: ignore[arg-type]
        assert isinstance(typed.value, TypeError)
        with pytest.raises(InvalidArgument, match="max_count 0 is not valid"):
            c.next_many("s", "g", max_count=0)
    with pytest.raises(InvalidArgument, match="buffer_frames 0 is not valid"):
        Subscriber("tcp://127.0.0.1:9", ["s"], buffer_frames=0)


@pytest.mark.parametrize("endpoint", ["bogus://x", "tcp://"])
def test_zmq_errors_are_wrapped_at_the_client_boundary(endpoint: str) -> None:
    with pytest.raises(ConfigError, match="cannot connect to the receiver api") as bad:
        Consumer(endpoint)
    assert isinstance(bad.value.__cause__, zmq.ZMQError)
    with pytest.raises(ConfigError, match="cannot connect to the publish endpoint") as bad:
        Subscriber(endpoint, ["s"])
    assert isinstance(bad.value.__cause__, zmq.ZMQError)

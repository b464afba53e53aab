"""One error tree: every class in hidra_ng.errors is drawn in its docstring; client
methods raise HidraError subclasses for bad arguments; zmq errors are wrapped."""

from __future__ import annotations

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

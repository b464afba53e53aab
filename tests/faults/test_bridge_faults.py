"""Faults of the facility bridge (SPEC §13): kill -9 of the bridge and of the broker,
a second bridge. Everything is read back from the broker with rstream and counted
by index and payload hash: lost = duplicated = unexpected = 0."""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hidra_ng.bridge import broker_name
from tests.bridge_helpers import BridgeProcess, InProcessBridge, bridge_config, read_rstream
from tests.conftest import wait_for
from tests.ops_helpers import try_scrape

KiB, MiB = 1 << 10, 1 << 20


def payload(k: int) -> bytes:
    """Frame ``k`` of the workload: 1 KiB .. 64 KiB, and 8 MiB every 250th (12 in 3,000)."""
    rng = np.random.default_rng(k)
    size = 8 * MiB if k % 250 == 125 else int(rng.integers(1 * KiB, 64 * KiB))
    return rng.bytes(size)


def send(producer, stream: str, count: int, errors: list) -> None:
    try:
        for first in range(0, count, 20):
            ks = range(first, min(first + 20, count))
            producer.send_many(stream, [(payload(k), {"k": k}) for k in ks])
        producer.finish(stream)
        producer.flush(timeout=300)
    except BaseException as err:
        errors.append(err)


def verdict(uri: str, stream: str, count: int) -> tuple[list, dict, list]:
    """(lost, duplicated, unexpected) of the broker stream against the workload."""
    got = read_rstream(uri, broker_name(stream), timeout=60)
    assert got and got[-1].finished, "the end message is missing"
    assert got[-1].props["hidra_index"] == count
    frames = got[:-1]
    expected = {hashlib.sha256(payload(k)).hexdigest(): k for k in range(count)}
    times: Counter[int] = Counter()
    unexpected = []
    for m in frames:
        k = expected.get(m.digest)
        if k is None or k != m.index:
            unexpected.append(m.index)
        else:
            times[k] += 1
    lost = [k for k in range(count) if times[k] == 0]
    duplicated = {k: n for k, n in times.items() if n > 1}
    return lost, duplicated, unexpected


def published(port: int) -> float:
    samples = try_scrape(port) or {}
    return sum(v for (name, _), v in samples.items() if name == "hidra_ng_bridge_published_total")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_bridge_killed_three_times_publishes_each_frame_once(
    rabbitmq, receiver, make_producer, tmp_path: Path
) -> None:
    count, stream = 3000, "faults/bridge-kill"
    errors: list = []
    producer = make_producer("kill-bridge")
    sender = threading.Thread(target=send, args=(producer, stream, count, errors))
    sender.start()
    api = receiver.endpoints["api"]
    done_before = 0
    for share in (0.15, 0.4, 0.65):
        bridge = BridgeProcess(api, rabbitmq.stream_uri, tmp_path / "state")
        since = len(bridge.read_log())

        def finished(b=bridge, e=since) -> bool:
            return "finished; all" in b.read_log()[e:]

        bridge.start()
        try:
            # the count misses frames a killed bridge had put in the broker without its
            # confirm yet: the next bridge finds them there, and may find every frame there
            wait_for(
                lambda b=bridge, s=share, d=done_before, f=finished: (
                    d + published(b.metrics_port) >= s * count or f()
                ),
                timeout=300,
                what=f"{share:.0%} published",
            )
            done_before += published(bridge.metrics_port)
            all_in_broker = finished()
        except AssertionError as err:
            raise AssertionError(f"{err}; bridge log:\n{bridge.read_log()[-4000:]}") from None
        finally:
            bridge.kill()  # kill -9, with publishes and confirms in flight
        if all_in_broker:
            break  # nothing left to kill a bridge in the middle of
    sender.join(300)
    assert not errors, errors
    bridge = BridgeProcess(api, rabbitmq.stream_uri, tmp_path / "state")
    earlier = len(bridge.read_log())  # the killed bridges' lines: the last may say finished too
    bridge.start()
    try:
        try:
            wait_for(
                lambda: "finished; all" in bridge.read_log()[earlier:],
                timeout=300,
                what="the end confirmed by the last bridge",
            )
        except AssertionError as err:
            raise AssertionError(f"{err}; bridge log:\n{bridge.read_log()[-4000:]}") from None
        assert bridge.terminate() == 0, bridge.read_log()[-4000:]
    finally:
        bridge.kill()
    lost, duplicated, unexpected = verdict(rabbitmq.stream_uri, stream, count)
    assert (len(lost), len(duplicated), len(unexpected)) == (0, 0, 0), (
        lost[:10],
        duplicated,
        unexpected[:10],
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_broker_killed_and_restarted_mid_stream(
    private_rabbitmq, receiver, make_producer, tmp_path: Path
) -> None:
    count, stream = 1000, "faults/broker-kill"
    errors: list = []
    producer = make_producer("kill-broker")
    sender = threading.Thread(target=send, args=(producer, stream, count, errors))
    sender.start()
    config = bridge_config(receiver.endpoints["api"], private_rabbitmq.stream_uri, tmp_path / "b")
    with InProcessBridge(config) as bridge:
        total = bridge.metrics.published.labels(stream)
        wait_for(lambda: total._value.get() >= 300, timeout=300, what="300 published")
        private_rabbitmq.kill()
        wait_for(lambda: not bridge._broker_up, timeout=60, what="broker_up 0")
        private_rabbitmq.start()
        wait_for(lambda: stream in bridge._finished, timeout=300, what="the end confirmed")
    sender.join(300)
    assert not errors, errors
    lost, duplicated, unexpected = verdict(private_rabbitmq.stream_uri, stream, count)
    assert (len(lost), len(duplicated), len(unexpected)) == (0, 0, 0), (
        lost[:10],
        duplicated,
        unexpected[:10],
    )


def test_a_second_bridge_exits_2_naming_the_first(rabbitmq, receiver, tmp_path: Path) -> None:
    api = receiver.endpoints["api"]
    first = BridgeProcess(api, rabbitmq.stream_uri, tmp_path / "state").start()
    try:
        wait_for(lambda: try_scrape(first.metrics_port), timeout=60, what="the first bridge up")
        second = BridgeProcess(
            api, rabbitmq.stream_uri, tmp_path / "state", metrics=False, name="second"
        )
        second.start()
        assert second.proc.wait(60) == 2
        err = second.read_log().strip().splitlines()
        assert len(err) == 1, err
        assert f"pid {first.proc.pid}" in err[0] and "another bridge" in err[0], err
        assert first.proc.poll() is None, "the first bridge must go on"
    finally:
        first.kill()


def test_a_second_bridge_elsewhere_exits_2_naming_the_first(
    rabbitmq, receiver, tmp_path: Path
) -> None:
    """Another state directory (as on another machine): the broker lease stops it."""
    api = receiver.endpoints["api"]
    first = BridgeProcess(api, rabbitmq.stream_uri, tmp_path / "one", "--prefix", "t-lease")
    first.start()
    try:
        wait_for(lambda: "holding the broker lease" in first.read_log(), timeout=60, what="lease")
        second = BridgeProcess(
            api, rabbitmq.stream_uri, tmp_path / "two", "--prefix", "t-lease", metrics=False
        ).start()
        assert second.proc.wait(90) == 2, second.read_log()
        err = [line for line in second.read_log().splitlines() if "hidra-ng:" in line]
        assert len(err) == 1, second.read_log()
        assert f"pid {first.proc.pid} on host" in err[0] and "broker lease" in err[0], err
        assert first.proc.poll() is None, "the first bridge must go on"
        assert first.terminate() == 0
        # stopped cleanly, it released the lease: the next one starts at once
        third = BridgeProcess(
            api, rabbitmq.stream_uri, tmp_path / "two", "--prefix", "t-lease", name="third"
        ).start()
        try:
            wait_for(
                lambda: "holding the broker lease" in third.read_log(), timeout=60, what="lease"
            )
            assert "waiting" not in third.read_log()
        finally:
            third.kill()
    finally:
        first.kill()

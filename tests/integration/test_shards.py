"""Several receivers behind one shard map (SPEC §14), in-process receivers on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hidra_ng import Consumer, NotYetAvailable, Producer, StreamFinished, Subscriber
from hidra_ng.shards import load_shard_map, part_name
from tests.helpers import wait_for
from tests.ops_helpers import DaemonProcess, clean_env, scrape
from tests.shard_helpers import in_process_receivers, write_shard_map

NAMES = ("r0", "r1", "r2")


@pytest.fixture
def three(tmp_path: Path):
    with in_process_receivers(tmp_path, NAMES) as rxs:
        yield rxs


def payload(stream: str, k: int) -> bytes:
    return f"{stream}#{k}".encode() * 32


def test_each_stream_goes_to_and_is_read_from_its_receiver(tmp_path: Path, three) -> None:
    shards = write_shard_map(tmp_path / "shards.toml", three, [["a/**"], ["b/**"], ["**"]])
    streams = [f"{p}/s{i}" for p in "abc" for i in range(4)]
    with Producer(shards=shards, spool_dir=tmp_path / "spool", sender_id="det") as producer:
        for stream in streams:
            producer.send_many(stream, [(payload(stream, k), {"k": k}) for k in range(5)])
            producer.finish(stream)
        producer.flush(30)
        assert producer.spool_messages == 0 or wait_for(lambda: producer.spool_messages == 0)
    held = {}
    for name, rx in three.items():
        with Consumer(rx.endpoints["api"]) as c:
            held[name] = sorted(info.name for info in c.streams())
    assert held == {
        "r0": [s for s in streams if s.startswith("a/")],
        "r1": [s for s in streams if s.startswith("b/")],
        "r2": [s for s in streams if s.startswith("c/")],
    }
    with Consumer(shards=shards) as c:
        assert sorted(info.name for info in c.streams()) == sorted(streams)
        assert {n for n, _ in c.streams_by_receiver()} == set(NAMES)
        for stream in streams:
            assert c.info(stream).count == 5
            assert c.get(stream, 3).data == payload(stream, 3)
            assert [f.meta["k"] for f in c.replay(stream)] == list(range(5))
            with pytest.raises(StreamFinished):
                c.get(stream, 5, timeout=1)
        c.ping()


def test_streams_cli_lists_every_receiver_with_a_receiver_column(tmp_path: Path, three) -> None:
    shards = write_shard_map(tmp_path / "shards.toml", three, [["a/**"], ["b/**"], ["**"]])
    with Producer(shards=shards, spool_dir=tmp_path / "spool", sender_id="det") as producer:
        for stream in ("a/x", "b/y", "c/z"):
            producer.send(stream, b"1234")
        producer.flush(30)

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "hidra_ng", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
        )

    out = cli("streams", "--shards", str(shards))
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert rows[0][:2] == ["receiver", "stream"]
    assert [row[:2] for row in rows[1:]] == [["r0", "a/x"], ["r1", "b/y"], ["r2", "c/z"]]
    got = cli("get", "b/y", "0", "--shards", str(shards))
    assert got.returncode == 0, got.stderr
    assert "b/y #0: 4 bytes" in got.stdout
    info = cli("info", "c/z", "--shards", str(shards))
    assert info.returncode == 0 and info.stdout.splitlines()[1].split()[:2] == ["r2", "c/z"]
    three.pop("r1").stop()  # a receiver down: the others are listed, the missing one named
    down = subprocess.run(
        [sys.executable, "-m", "hidra_ng", "streams", "--shards", str(shards)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert down.returncode == 1
    assert "a/x" in down.stdout and "c/z" in down.stdout and "b/y" not in down.stdout
    assert "receiver r1 did not answer" in down.stderr


def test_subscriber_follows_live_frames_of_streams_on_two_receivers(tmp_path: Path, three) -> None:
    shards = write_shard_map(tmp_path / "shards.toml", three, [["a/**"], ["b/**"], ["**"]])
    with (
        Subscriber(streams=["a/live", "b/live"], shards=shards) as sub,
        Producer(shards=shards, spool_dir=tmp_path / "spool", sender_id="det") as producer,
    ):
        seen: set[str] = set()

        def both() -> bool:
            producer.send("a/live", b"x")
            producer.send("b/live", b"y")
            frame = sub.receive(timeout=0.2)
            if frame is not None:
                seen.add(frame.stream)
            return seen == {"a/live", "b/live"}

        wait_for(both, timeout=30, what="live frames from r0 and r1")
        assert sub.latest(stream="b/live").stream == "b/live"


def test_split_series_is_read_back_merged_in_image_order(tmp_path: Path, three) -> None:
    shards = write_shard_map(tmp_path / "shards.toml", three, [["**"], ["**"], ["**"]])
    series = "p21/run_0001"
    images = [np.full((4, 4), k, dtype=np.uint32) for k in range(300)]
    with Producer(
        shards=shards,
        spool_dir=tmp_path / "spool",
        sender_id="det",
        split_parts=3,
        split_block_images=10,
        split_streams=["p21/**"],
    ) as producer:
        for first in range(0, 300, 25):  # batches that cross block boundaries
            producer.send_many(
                series, [(im, {"k": int(im[0, 0])}) for im in images[first : first + 25]]
            )
        producer.send("other/unsplit", b"x")  # split_streams: p21/** only
        producer.finish(series)
        producer.flush(30)
    m = load_shard_map(shards)
    homes = {m.place(part_name(series, p)).name for p in range(3)}
    assert homes == set(NAMES)  # the three parts on three receivers
    with Consumer(shards=shards) as c:
        for p in range(3):
            info = c.info(part_name(series, p))
            assert (info.count, info.finished) == (100, True)
        assert c.info("other/unsplit").count == 1
        merged = list(c.replay_merged(series, follow=True, window_frames=8))
        assert [int(f.data[0, 0]) for f in merged] == list(range(300))
        assert [f.meta["hidra_split"] for f in merged[:2]] == [[0, 3, 10], [1, 3, 10]]
        assert [f.meta["k"] for f in merged] == list(range(300))
        part = [int(f.data[0, 0]) for f in c.replay_merged(series, 95, 131)]
        assert part == list(range(95, 131))
        assert list(c.replay_merged("p21/none")) == []


def count(c: Consumer, stream: str) -> int:
    """Messages stored in ``stream``; -1 before the first."""
    try:
        return c.info(stream).count
    except NotYetAvailable:
        return -1


def test_sender_daemon_with_shards_reports_each_receiver_up(tmp_path: Path, three) -> None:
    shards = write_shard_map(tmp_path / "shards.toml", three, [["a/**"], ["b/**"], ["**"]])
    ready = tmp_path / "sender-ready.json"
    args = [
        "sender", "--shards", str(shards), "--spool-dir", str(tmp_path / "spool"),
        "--sender-id", "daemon", "--metrics-port", "-1", "--ready-file", str(ready),
        "--split-parts", "3", "--split-block-images", "4", "--split-streams", "c/**",
        "--source", "simulate:?shape=8x8&dtype=uint16&rate=0&count=20&stream=a/sim",
        "--source", "simulate:?shape=8x8&dtype=uint16&rate=0&count=20&stream=c/sim",
    ]  # fmt: skip
    with DaemonProcess(args, tmp_path / "sender.log") as daemon:
        port = daemon.ready(ready)["metrics_port"]

        def up(samples: dict, name: str) -> float | None:
            return samples.get(("hidra_ng_sender_receiver_up", (("receiver", name),)))

        wait_for(lambda: all(up(scrape(port), n) == 1 for n in NAMES), timeout=30)
        with Consumer(shards=shards) as c:
            # c/** is split into 3 parts by blocks of 4; the group of '**' is r2 alone
            parts = [part_name("c/sim", p) for p in range(3)]
            wait_for(lambda: [count(c, p) for p in parts] == [8, 8, 4], timeout=30)
            wait_for(lambda: count(c, "a/sim") == 20, timeout=30, what="a/sim on r0")
            merged = list(c.replay_merged("c/sim"))
        assert [f.meta["frame"] for f in merged] == list(range(20))
        assert [f.meta["hidra_split"][0] for f in merged] == list(range(20))
        three.pop("r1").stop()
        wait_for(lambda: up(scrape(port), "r1") == 0, timeout=30, what="r1 down")
        assert up(scrape(port), "r0") == 1 and up(scrape(port), "r2") == 1
        assert daemon.terminate() == 0, daemon.read_log()


def test_dectris_series_split_over_three_receivers(tmp_path: Path, three) -> None:
    """The split is the Producer's: a DECTRIS Stream V2 source is split like any other."""
    from source_helpers import Running
    from stream_v2_emitter import Emitter

    from hidra_ng.sender.sources import parse

    shards = write_shard_map(tmp_path / "shards.toml", three, [["**"], ["**"], ["**"]])
    stream = "p11/eiger/threshold_1"
    with (
        Producer(
            shards=shards,
            spool_dir=tmp_path / "spool",
            sender_id="eiger",
            split_parts=3,
            split_block_images=2,
            split_streams=[stream],
        ) as producer,
        Emitter() as det,
        Consumer(shards=shards) as c,
    ):
        running = Running(parse(f"dectris:{det.endpoint}?stream=p11/eiger"), producer)
        det.start(3, "series-3", ["threshold_1"])
        for image_id in range(12):
            image = np.full((8, 6), image_id, dtype="<u2")
            det.image(3, "series-3", image_id, {"threshold_1": image}, "none")
        det.end(3, "series-3")
        parts = [part_name(stream, p) for p in range(3)]
        # start, 12 images, end: 14 messages in blocks of 2 -> 6, 4, 4
        wait_for(lambda: [count(c, p) for p in parts] == [6, 4, 4], timeout=60)
        running.close()
        merged = list(c.replay_merged(stream))
    assert [f.meta["type"] for f in (merged[0], merged[-1])] == ["start", "end"]
    assert [f.meta["image_id"] for f in merged[1:-1]] == list(range(12))
    assert [int(f.data[0, 0]) for f in merged[1:-1]] == list(range(12))
    assert set(three) == {load_shard_map(shards).place(p).name for p in parts}


def test_a_restarted_producer_numbers_on_and_finds_its_newest_checkpoint(
    tmp_path: Path, three
) -> None:
    """The image count of a split series and a source's checkpoint live in the spools."""
    shards = write_shard_map(tmp_path / "shards.toml", three, [["a/**"], ["b/**"], ["**"]])
    options = {
        "shards": shards,
        "spool_dir": tmp_path / "spool",
        "sender_id": "det",
        "split_parts": 3,
        "split_block_images": 4,
        "split_streams": ["c/**"],
    }
    with Producer(**options) as producer:
        producer.send_many("c/run", [(b"%d" % i, None) for i in range(25)])
        producer.send_many("a/x", [(b"1", None)], checkpoint=("src", b"first"))
        producer.send_many("b/y", [(b"2", None)], checkpoint=("src", b"second"))
        assert producer.checkpoint("src") == b"second"
        producer.flush(30)
    with Producer(**options) as producer:
        assert producer.checkpoint("src") == b"second"  # newest, though a/x's spool has one
        producer.send_many("a/x", [(b"3", None)], checkpoint=("src", b"third"))
        assert producer.checkpoint("src") == b"third"
        producer.send_many("c/run", [(b"%d" % i, None) for i in range(25, 30)])
        producer.finish("c/run")
        producer.flush(30)
        assert set(producer.acked_seqs) == set(NAMES)
        with pytest.raises(Exception, match="split over several receivers"):
            producer.acked_seq_of("c/run")
    with Consumer(shards=shards) as c:
        merged = list(c.replay_merged("c/run", follow=True))
    assert [bytes(f.data) for f in merged] == [b"%d" % i for i in range(30)]
    assert [f.meta["hidra_split"][0] for f in merged] == list(range(30))

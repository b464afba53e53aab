"""The reading commands with a shard map (SPEC §14): ``hidra-ng query --shards``, one
``hidra-ng write`` and one ``hidra-ng view`` for the streams of two receivers on loopback."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from hidra_ng import Consumer, Producer
from hidra_ng.cli import main
from hidra_ng.config import ViewConfig, WriterConfig
from hidra_ng.testing import reserve_port
from hidra_ng.view import ViewServer
from hidra_ng.writer.daemon import WriterDaemon
from tests.helpers import wait_for
from tests.shard_helpers import in_process_receivers, write_shard_map
from tests.view_helpers import error_of, http

NAMES = ("r0", "r1")


@pytest.fixture
def two(tmp_path: Path):
    with in_process_receivers(tmp_path, NAMES) as rxs:
        yield rxs


@pytest.fixture
def shards(tmp_path: Path, two) -> Path:
    """r0 holds a/**, r1 everything else."""
    return write_shard_map(tmp_path / "shards.toml", two, [["a/**"], ["**"]])


def frame(stream: str, k: int) -> np.ndarray:
    """A small image whose pixels say which stream and frame it is."""
    a = np.full((8, 6), k, np.uint16)
    a[0, 0] = sum(stream.encode()) % 65_000
    return a


def send(shards: Path, tmp_path: Path, counts: dict[str, int], finish: bool = True) -> None:
    with Producer(shards=shards, spool_dir=tmp_path / "spool", sender_id="det") as producer:
        for stream, n in counts.items():
            producer.send_many(stream, [(frame(stream, k), {"k": k}) for k in range(n)])
            if finish:
                producer.finish(stream)
        producer.flush(30)
        wait_for(lambda: producer.spool_messages == 0, what="the spool emptied")


def held_by(two, name: str) -> list[str]:
    with Consumer(two[name].endpoints["api"]) as c:
        return sorted(info.name for info in c.streams())


def test_query_with_shards_finds_the_matches_on_the_second_receiver(
    tmp_path: Path, two, shards: Path, capsys
) -> None:
    send(shards, tmp_path, {"a/x": 5, "b/y": 12})
    assert held_by(two, "r1") == ["b/y"]  # the stream queried lives on the second receiver
    assert main(["query", "b/y", "meta.k >= 9", "--shards", str(shards)]) == 0
    out, err = capsys.readouterr()
    assert [int(line.split()[0]) for line in out.splitlines()] == [9, 10, 11]
    assert "3 matches" in err
    # and in pages of a few records examined each: the same matches
    assert main(["query", "b/y", "meta.k >= 9", "--shards", str(shards), "--scan-limit", "4"]) == 0
    out, _ = capsys.readouterr()
    assert [int(line.split()[0]) for line in out.splitlines()] == [9, 10, 11]
    assert main(["query", "a/x", "meta.k == 2", "--shards", str(shards)]) == 0
    out, _ = capsys.readouterr()
    assert [int(line.split()[0]) for line in out.splitlines()] == [2]


def test_query_with_shards_and_api_is_refused_naming_both(shards: Path, capsys) -> None:
    code = main(["query", "b/y", "meta.k > 1", "--shards", str(shards), "--api", "tcp://h:1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--shards" in err and "--api tcp://h:1" in err and len(err.strip().splitlines()) == 1


def test_query_with_a_missing_shard_map_is_refused_naming_it(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere.toml"
    assert main(["query", "b/y", "meta.k > 1", "--shards", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err and "Traceback" not in err


def read_hdf5(directory: Path) -> list[tuple[int, int]]:
    """(index, k of meta) of every frame in the HDF5 files of one stream; checks the pixels."""
    found = []
    for path in sorted(directory.glob("*.h5")):
        with h5py.File(path, "r") as h5:
            data = h5["/entry/data/data"][()]
            indices = h5["/entry/data/index"][()]
            metas = [json.loads(m) for m in h5["/entry/data/meta"][()]]
        for image, index, meta in zip(data, indices, metas, strict=True):
            assert int(image[1, 1]) == meta["k"]
            found.append((int(index), meta["k"]))
    return found


def test_one_writer_with_shards_writes_the_streams_of_both_receivers(
    tmp_path: Path, two, shards: Path
) -> None:
    counts = {"a/x": 7, "a/z": 4, "b/y": 9, "c/w": 5}
    send(shards, tmp_path, counts)
    assert held_by(two, "r0") == ["a/x", "a/z"] and held_by(two, "r1") == ["b/y", "c/w"]
    out = tmp_path / "out"
    settings = WriterConfig(
        shards=str(shards), dir=str(out), metrics_port=0, format="hdf5", frames_per_file=3
    )
    daemon = WriterDaemon(settings)
    daemon.start()
    try:
        wait_for(
            lambda: all(
                daemon.writers.get(s) is not None and daemon.writers[s].finished for s in counts
            ),
            timeout=60,
            what="every stream of both receivers written",
        )
        up = {
            name: daemon.metrics.registry.get_sample_value(
                "hidra_ng_writer_receiver_up", {"receiver": name}
            )
            for name in NAMES
        }
        assert up == {"r0": 1.0, "r1": 1.0}
    finally:
        daemon.stop()
    for stream, n in counts.items():
        found = [k for _, k in read_hdf5(out.joinpath(*stream.split("/")))]
        seen = set(found)
        tally = {
            "lost": len(set(range(n)) - seen),
            "duplicated": len(found) - len(seen),
            "unexpected": len(seen - set(range(n))),
        }
        assert tally == {"lost": 0, "duplicated": 0, "unexpected": 0}, stream


def test_writer_and_view_refuse_shards_beside_an_endpoint_and_a_missing_map(
    tmp_path: Path, shards: Path, capsys
) -> None:
    out = tmp_path / "out"
    cases = [
        (["write", "--shards", str(shards), "--api", "tcp://h:1", "--dir", str(out)], "--api"),
        (["view", "--shards", str(shards), "--api", "tcp://h:1", "--port", "0"], "--api"),
        (["view", "--shards", str(shards), "--publish", "tcp://h:2", "--port", "0"], "--publish"),
    ]
    for argv, other in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "--shards" in err and other in err and len(err.splitlines()) == 1, err
    missing = tmp_path / "nowhere.toml"
    for argv in (
        ["write", "--shards", str(missing), "--dir", str(out), "--metrics-port", "0"],
        ["view", "--shards", str(missing), "--port", "0"],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert str(missing) in err and "does not exist" in err, err
    assert not out.exists()  # refused before anything was created


def test_one_view_with_shards_lists_and_shows_the_streams_of_both_receivers(
    tmp_path: Path, two, shards: Path
) -> None:
    send(shards, tmp_path, {"a/x": 3, "b/y": 4}, finish=False)
    server = ViewServer(ViewConfig(shards=str(shards), port=0, wait_seconds=0.5)).start()
    try:
        status, _, body = http(server, "/api/streams")
        assert status == 200, body
        rows = {r["name"]: r for r in json.loads(body)}
        assert {n: (r["receiver"], r["count"]) for n, r in rows.items()} == {
            "a/x": ("r0", 3),
            "b/y": ("r1", 4),
        }
        status, _, body = http(server, "/api/status")
        state = json.loads(body)
        assert status == 200 and state["up"] is True
        assert two["r1"].endpoints["api"] in state["api"]
        # stored frames and the newest one come from the stream's own receiver
        status, _, body = http(server, "/api/streams/b/y/2.npy")
        assert status == 200
        np.testing.assert_array_equal(np.load(io.BytesIO(body)), frame("b/y", 2))
        status, _, body = http(server, "/api/streams/b/y/latest.json")
        assert status == 200 and json.loads(body)["index"] == 3, body
        status, _, body = http(server, "/api/streams/a/x/info")
        assert status == 200 and json.loads(body)["count"] == 3
        status, _, body = http(server, "/api/streams/a/nothing/info")
        assert status == 404 and "(shard r0)" in error_of(body), body
        # the live feed of a stream on the second receiver, as a browser's page gets it (a
        # frame published before the subscription arrived comes from the last-value cache)
        feed = server.link.feed("b/y")
        try:
            with Producer(shards=shards, spool_dir=tmp_path / "spool2", sender_id="det2") as p:
                p.send_many("b/y", [(frame("b/y", k), {"k": k}) for k in (4, 5)])
                p.flush(30)
            wait_for(
                lambda: feed.latest is not None and feed.latest.meta.get("k") == 5,
                what="the newest live frame of b/y from its receiver",
            )
            np.testing.assert_array_equal(feed.latest.data, frame("b/y", 5))
        finally:
            server.link.release(feed)
    finally:
        server.stop()


def test_bridge_has_no_shards_option_one_bridge_runs_per_receiver(shards: Path, capsys) -> None:
    """SPEC §13/§14: a bridge runs beside its receiver (its lock, its prefix), never over a map."""
    assert main(["bridge", "--shards", str(shards)]) == 2
    assert "No such option: --shards" in capsys.readouterr().err


def test_writer_with_shards_goes_on_with_the_receivers_that_answer(
    tmp_path: Path, two, shards: Path
) -> None:
    """A receiver that does not answer (nothing listens at its api) delays only its streams."""
    send(shards, tmp_path, {"b/y": 6, "c/w": 4})
    nobody = reserve_port()  # held, never listening: connections to it are refused
    text = shards.read_text().replace(two["r0"].endpoints["api"], nobody.endpoint)
    away = tmp_path / "r0-away.toml"
    away.write_text(text)
    out = tmp_path / "out"
    settings = WriterConfig(shards=str(away), dir=str(out), metrics_port=0, format="hdf5")
    daemon = WriterDaemon(settings)
    daemon.start()

    def up(name: str) -> float | None:
        return daemon.metrics.registry.get_sample_value(
            "hidra_ng_writer_receiver_up", {"receiver": name}
        )

    try:
        wait_for(
            lambda: all(
                daemon.writers.get(s) is not None and daemon.writers[s].finished
                for s in ("b/y", "c/w")
            ),
            timeout=60,
            what="the streams of the receiver that answers written",
        )
        wait_for(lambda: up("r0") == 0.0 and up("r1") == 1.0, what="receiver_up per receiver")
    finally:
        daemon.stop()
        nobody.release()
    for stream, n in {"b/y": 6, "c/w": 4}.items():
        assert sorted(k for _, k in read_hdf5(out.joinpath(*stream.split("/")))) == list(range(n))

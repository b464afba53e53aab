"""The shard map (SPEC §14): validation, the placement rule, the split layout. No network."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from hidra_ng import ConfigError, NoShardForStream
from hidra_ng import config as cfg
from hidra_ng.shards import (
    SplitLayout,
    load_shard_map,
    part_name,
    shard_map_from_dict,
    split_name,
    to_toml,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "shards.toml"


def shard(name: str, streams: list[str], port: int) -> dict:
    return {
        "name": name,
        "streams": streams,
        "ingest": f"tcp://dc:{port}",
        "api": f"tcp://dc:{port + 1}",
        "publish": f"tcp://dc:{port + 2}",
    }


def three_way() -> dict:
    return {
        "shard": [
            shard("a", ["p11/**"], 50100),
            shard("b", ["**"], 50200),
            shard("c", ["**"], 50300),
            shard("d", ["**"], 50400),
        ]
    }


# ------------------------------------------------------------------ placement


def test_first_matching_shard_holds_the_stream() -> None:
    m = shard_map_from_dict(three_way())
    assert m.place("p11/scan_0001").name == "a"
    assert m.place("p11/eiger/threshold_1").name == "a"
    assert m.place("p12/scan_0001").name in {"b", "c", "d"}


def test_the_hash_is_rendezvous_over_blake2b_of_name_and_stream() -> None:
    """Stable across processes and Python versions: computed here from its definition."""
    m = shard_map_from_dict(three_way())
    for stream in (f"p21/run_{i}" for i in range(50)):

        def weight(receiver: str, stream: str = stream) -> bytes:
            return hashlib.blake2b(f"{receiver}\0{stream}".encode(), digest_size=8).digest()

        assert m.place(stream).name == max("bcd", key=weight)


def test_placement_is_the_same_in_another_process() -> None:
    code = (
        "from hidra_ng.shards import shard_map_from_dict;"
        "from tests.unit.test_shards import three_way;"
        "m = shard_map_from_dict(three_way());"
        "print(' '.join(m.place(f'x/s{i}').name for i in range(40)))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    m = shard_map_from_dict(three_way())
    assert out == [m.place(f"x/s{i}").name for i in range(40)]


def test_a_group_shares_its_streams_among_all_its_receivers() -> None:
    m = shard_map_from_dict(three_way())
    counts = Counter(m.place(f"p21/scan_{i:04d}").name for i in range(600))
    assert set(counts) == {"b", "c", "d"}
    assert min(counts.values()) > 100  # 200 each on average; no receiver left out


def test_adding_a_receiver_moves_only_the_streams_it_wins() -> None:
    before = shard_map_from_dict(three_way())
    more = three_way()
    more["shard"].append(shard("e", ["**"], 50500))
    after = shard_map_from_dict(more)
    names = [f"p21/scan_{i:04d}" for i in range(400)]
    moved = [n for n in names if before.place(n).name != after.place(n).name]
    assert moved and all(after.place(n).name == "e" for n in moved)


def test_parts_of_a_split_series_lie_on_different_receivers_of_its_group() -> None:
    m = shard_map_from_dict(three_way())
    for series in ("p21/run_1", "p21/run_2", "other"):
        homes = [m.place(part_name(series, p)).name for p in range(3)]
        assert sorted(homes) == ["b", "c", "d"]
        assert homes[0] == m.place(series).name
        assert m.place(part_name(series, 3)).name == homes[0]  # K > receivers: wraps
    assert m.place("p11/run/part-1").name == "a"  # a group of one: all parts there


def test_a_stream_no_shard_matches_is_refused_naming_it() -> None:
    m = shard_map_from_dict({"shard": [shard("a", ["p11/*"], 50100)]}, "map.toml")
    with pytest.raises(NoShardForStream, match=r"stream 'p12/x' matches no shard of map\.toml"):
        m.place("p12/x")
    with pytest.raises(NoShardForStream, match="'p11/a/b'"):
        m.place("p11/a/b")  # `*` stays within one segment


def test_part_names() -> None:
    assert part_name("p11/scan", 2) == "p11/scan/part-2"
    assert split_name("p11/scan/part-2") == ("p11/scan", 2)
    assert split_name("p11/scan") == ("p11/scan", None)
    assert split_name("p11/part-02") == ("p11/part-02", None)
    assert split_name("part-1") == ("part-1", None)


# ------------------------------------------------------------------ the layout


@pytest.mark.parametrize(("parts", "block"), [(1, 1), (3, 1), (3, 10), (2, 7), (4, 3)])
def test_split_layout_places_every_image_once(parts: int, block: int) -> None:
    layout = SplitLayout(parts, block)
    images = 5 * parts * block + 3
    seen = {}
    for i in range(images):
        where = (layout.part(i), layout.index(i))
        assert where not in seen
        seen[where] = i
        assert layout.image(*where) == i
    for p in range(parts):  # each part's indices are consecutive from 0
        indices = sorted(idx for part, idx in seen if part == p)
        assert indices == list(range(len(indices)))
    for start in range(images):
        for p in range(parts):
            later = [idx for (part, idx), i in seen.items() if part == p and i >= start]
            expected = (
                min(later)
                if later
                else max([idx + 1 for (part, idx) in seen if part == p], default=0)
            )
            if later:
                assert layout.first_index(p, start) == expected


def test_split_layout_refuses_nonsense() -> None:
    with pytest.raises(Exception, match="0 parts"):
        SplitLayout(0, 1)


# ------------------------------------------------------------------ refusals


def refused(raw: dict) -> str:
    with pytest.raises(ConfigError) as err:
        shard_map_from_dict(raw, "shards.toml")
    message = str(err.value)
    assert "\n" not in message
    return message


def test_overlapping_catch_alls_are_refused() -> None:
    raw = {"shard": [shard("a", ["**"], 50100), shard("b", ["**", "p11/*"], 50200)]}
    message = refused(raw)
    assert "shard[1].streams" in message and "'**'" in message
    assert "overlapping catch-alls" in message


def test_a_shard_after_a_catch_all_is_refused() -> None:
    raw = {"shard": [shard("a", ["**"], 50100), shard("b", ["p11/*"], 50200)]}
    message = refused(raw)
    assert "shard[1]" in message and "can never hold a stream" in message and "'**'" in message


def test_a_shard_that_joins_an_earlier_group_after_a_catch_all_is_fine() -> None:
    raw = {
        "shard": [
            shard("a", ["p11/*"], 50100),
            shard("b", ["**"], 50200),
            shard("c", ["p11/*"], 50300),
        ]
    }
    m = shard_map_from_dict(raw)
    assert {m.place(f"p11/s{i}").name for i in range(50)} == {"a", "c"}


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("ingest", "dc1:50100", 'shard[0].ingest = "dc1:50100" in shards.toml: expected'),
        ("api", "tcp://dc1", 'shard[0].api = "tcp://dc1" in shards.toml: expected'),
        ("publish", "tcp://*:50102", "not *"),
        ("api", 50101, "shard[0].api = 50101"),
        ("streams", [], "shard[0].streams = []"),
        ("streams", ["p11/a b"], 'shard[0].streams = "p11/a b"'),
        ("name", "a b", 'shard[0].name = "a b"'),
        ("ingset", "tcp://dc:1", "did you mean ingest?"),
    ],
)
def test_a_bad_value_is_refused_naming_key_and_value(key: str, value: object, says: str) -> None:
    entry = shard("a", ["**"], 50100)
    entry[key] = value
    message = refused({"shard": [entry]})
    assert says in message and "shards.toml" in message


def test_a_missing_key_a_duplicate_endpoint_and_name_are_refused() -> None:
    entry = shard("a", ["**"], 50100)
    del entry["publish"]
    assert "shard[0] has no publish in shards.toml: expected" in refused({"shard": [entry]})
    same = shard("b", ["**"], 50200)
    same["api"] = "tcp://dc:50101"
    assert "shard[1].api = 'tcp://dc:50101'" in refused(
        {"shard": [shard("a", ["**"], 50100), same]}
    )
    assert "also the name of shard[0]" in refused(
        {"shard": [shard("a", ["**"], 50100), shard("a", ["**"], 50200)]}
    )
    assert "no [[shard]] table" in refused({})
    assert "top level" in refused({"receiver": {}, "shard": [shard("a", ["**"], 50100)]})


def test_files_that_are_no_shard_map(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_shard_map(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[shard]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_shard_map(bad)


# ------------------------------------------------------------- the example file


def test_the_example_map_is_valid_and_prints_back_as_itself(tmp_path: Path) -> None:
    m = load_shard_map(EXAMPLE)
    assert [s.name for s in m.shards] == ["dc1", "dc2", "dc3", "dc4", "dc5"]
    assert m.place("p11/scan_0001").name == "dc1"
    assert {m.place(part_name("p21/run_1", p)).name for p in range(3)} == {"dc2", "dc3", "dc4"}
    again = tmp_path / "again.toml"
    again.write_text(to_toml(m))
    assert [s for s in load_shard_map(again).shards] == list(m.shards)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hidra_ng", *args], capture_output=True, text=True, timeout=60
    )


def test_check_config_accepts_the_example_and_refuses_a_bad_map(tmp_path: Path) -> None:
    ok = run_cli("check-config", str(EXAMPLE))
    assert ok.returncode == 0, ok.stderr
    assert "valid shard map of 5 receivers" in ok.stdout and 'name = "dc3"' in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[shard]]\nstreams = ["**"]\ningest = "nowhere"\napi = "tcp://a:1"\n'
                   'publish = "tcp://a:2"\n')  # fmt: skip
    out = run_cli("check-config", str(bad))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert 'shard[0].ingest = "nowhere"' in out.stderr and str(bad) in out.stderr


def test_sender_config_split_needs_a_shard_map() -> None:
    with pytest.raises(ConfigError, match="--split-parts 3: expected 1 without a shard map"):
        cfg.load("sender", flags={"split_parts": 3, "sender_id": "x"}, environ={})
    config = cfg.load(
        "sender", flags={"split_parts": 3, "shards": str(EXAMPLE), "sender_id": "x"}, environ={}
    )
    assert (config.split_parts, config.split_block_images, config.split_streams) == (3, 1, ["**"])


def test_check_config_of_a_sender_checks_its_shard_map(tmp_path: Path) -> None:
    good = tmp_path / "sender.toml"
    good.write_text(f'[sender]\nsender_id = "x"\nshards = "{EXAMPLE}"\nsplit_parts = 3\n')
    ok = run_cli("check-config", str(good))
    assert ok.returncode == 0, ok.stderr
    assert "split_parts = 3" in ok.stdout
    bad = tmp_path / "bad-sender.toml"
    bad.write_text(f'[sender]\nsender_id = "x"\nshards = "{tmp_path / "none.toml"}"\n')
    out = run_cli("check-config", str(bad))
    assert out.returncode == 2 and "none.toml does not exist" in out.stderr

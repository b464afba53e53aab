"""The view's stream table over a shard map (SPEC §14): a receiver column, and a receiver
that does not answer named while the others' streams are still listed."""

from __future__ import annotations

import asyncio

import pytest

from hidra_ng import ReceiverUnavailable, StreamInfo
from hidra_ng.shards import shard_map_from_dict
from hidra_ng.view import link as view_link

MAP = shard_map_from_dict(
    {
        "shard": [
            {
                "name": n,
                "streams": [p],
                "ingest": f"tcp://{n}:1",
                "api": f"tcp://{n}:2",
                "publish": f"tcp://{n}:3",
            }
            for n, p in (("r0", "a/**"), ("r1", "**"))
        ]
    }
)


def info(name: str, last: int) -> StreamInfo:
    return StreamInfo(name=name, first=0, last=last, count=last + 1, bytes=10, finished=False)


class FakeShardedLink:
    """Answers ``streams_answered`` as a sharded Consumer would, with receivers down."""

    api = ", ".join(s.api for s in MAP.shards)
    shards = MAP

    def __init__(self) -> None:
        self.down: set[str] = set()

    def feeds(self) -> dict:
        return {}

    async def call(self, method: str, *args):
        assert method == "streams_answered"
        held = {"r0": [info("a/x", 4)], "r1": [info("b/y", 2), info("c/z", 0)]}
        answered = [(n, i) for n, infos in held.items() if n not in self.down for i in infos]
        down = {
            n: ReceiverUnavailable(f"receiver at tcp://{n}:2 did not answer 'streams'")
            for n in sorted(self.down)
        }
        return answered, down


def test_rows_name_their_receiver_and_a_receiver_down_is_named() -> None:
    fake = FakeShardedLink()
    table = view_link.StreamTable(fake, max_age=0.0)  # type: ignore[arg-type]
    rows = asyncio.run(table.rows())
    assert [(r["name"], r["receiver"]) for r in rows] == [
        ("a/x", "r0"),
        ("b/y", "r1"),
        ("c/z", "r1"),
    ]
    assert table.up is True and table.error == ""
    fake.down = {"r0"}
    rows = asyncio.run(table.rows())
    assert [(r["name"], r["receiver"]) for r in rows] == [("b/y", "r1"), ("c/z", "r1")]
    assert table.up is False and "receiver r0 did not answer" in table.error
    fake.down = {"r0", "r1"}
    with pytest.raises(ReceiverUnavailable, match=r"receiver r0 did not answer.*receiver r1"):
        asyncio.run(table.rows())
    fake.down = set()
    assert len(asyncio.run(table.rows())) == 3 and table.up is True

"""The view's stream table: rates from index advances, one request for many browsers, down/up."""

from __future__ import annotations

import asyncio

import pytest

from hidra_ng import ReceiverUnavailable, StreamInfo
from hidra_ng.view import link as view_link


class FakeLink:
    """Answers ``streams`` from a list the test sets; counts the requests."""

    api = "tcp://receiver:50101"
    shards = None  # one receiver, no shard map

    def __init__(self) -> None:
        self.infos: list[StreamInfo] | None = []
        self.calls = 0
        self.watched: dict[str, FakeFeed] = {}
        self.lasts: list[str] = []

    def feeds(self) -> dict[str, FakeFeed]:
        return dict(self.watched)

    async def call(self, method: str, *args):
        if method == "last":
            self.lasts.append(args[0])
            return FakeFrame(args[0], next(i.last for i in self.infos if i.name == args[0]))
        assert method == "streams"
        self.calls += 1
        await asyncio.sleep(0)  # let concurrent callers join this request
        if self.infos is None:
            raise ReceiverUnavailable(f"receiver at {self.api} did not answer 'streams'")
        return self.infos


class FakeFrame:
    def __init__(self, stream: str, index: int) -> None:
        self.stream, self.index = stream, index


class FakeFeed:
    """The parts of a LiveFeed the catch-up uses: the newest frame, when it came, offer()."""

    def __init__(self, latest: FakeFrame | None, updated: float) -> None:
        self.latest, self.updated = latest, updated

    def offer(self, frame: FakeFrame, *, replace: bool = False) -> None:
        if replace or self.latest is None or frame.index > self.latest.index:
            self.latest = frame


def test_a_feed_behind_the_store_and_idle_catches_up(monkeypatch):
    """Live frames missed while the Subscriber reconnected: the newest stored one is offered,
    but only to a feed that is behind and got nothing for CATCH_UP_SECONDS. A feed still ahead
    of the store after that long showed a provisional frame lost in a receiver crash (G6):
    the newest stored one replaces it."""
    now = [1000.0]
    monkeypatch.setattr(view_link.time, "monotonic", lambda: now[0])
    fake = FakeLink()
    fake.infos = [info("behind", 7), info("busy", 9), info("current", 4), info("ahead", 5)]
    fake.watched = {
        "behind": FakeFeed(FakeFrame("behind", 3), updated=now[0] - 5),
        "busy": FakeFeed(FakeFrame("busy", 8), updated=now[0] - 0.2),  # frames flowing
        "current": FakeFeed(FakeFrame("current", 4), updated=now[0] - 5),
        "ahead": FakeFeed(FakeFrame("ahead", 6), updated=now[0] - 5),
    }
    table = view_link.StreamTable(fake, max_age=0.5)
    asyncio.run(table.rows())
    assert fake.lasts == ["behind", "ahead"]
    assert fake.watched["behind"].latest.index == 7
    assert fake.watched["ahead"].latest.index == 5
    assert (fake.watched["busy"].latest.index, fake.watched["current"].latest.index) == (8, 4)


def info(name: str, last: int) -> StreamInfo:
    return StreamInfo(name, 0, last, last + 1, 100 * (last + 1), False)


def test_rates_sharing_and_receiver_down(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(view_link.time, "monotonic", lambda: now[0])
    fake = FakeLink()
    table = view_link.StreamTable(fake, max_age=0.5)

    async def scenario():
        fake.infos = [info("a", 9)]
        (row,) = await table.rows()
        assert (row["name"], row["count"], row["rate_hz"]) == ("a", 10, 0.0)
        # many browsers at once: one request to the receiver
        results = await asyncio.gather(*(table.rows() for _ in range(5)))
        assert fake.calls == 1 and all(r == [row] for r in results)
        # 2 s later 50 more frames: 25 Hz; a new stream starts at 0 Hz
        now[0] += 2.0
        fake.infos = [info("a", 59), info("b", 0)]
        rows = {r["name"]: r for r in await table.rows()}
        assert (rows["a"]["rate_hz"], rows["b"]["rate_hz"]) == (25.0, 0.0)
        assert fake.calls == 2 and table.up
        # the receiver stops answering: the error names it, and it is back later
        now[0] += 1.0
        fake.infos = None
        with pytest.raises(ReceiverUnavailable, match="tcp://receiver:50101"):
            await table.rows()
        assert table.up is False and "did not answer" in table.error
        fake.infos = [info("a", 59)]
        assert [r["name"] for r in await table.rows()] == ["a"]
        assert table.up is True and table.error == ""

    asyncio.run(scenario())

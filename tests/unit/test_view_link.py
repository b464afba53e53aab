"""The view's stream table: rates from index advances, one request for many browsers, down/up."""

from __future__ import annotations

import asyncio

import pytest

from hidra_ng import ReceiverUnavailable, StreamInfo
from hidra_ng.view import link as view_link


class FakeLink:
    """Answers ``streams`` from a list the test sets; counts the requests."""

    api = "tcp://receiver:50101"

    def __init__(self) -> None:
        self.infos: list[StreamInfo] | None = []
        self.calls = 0

    async def call(self, method: str):
        assert method == "streams"
        self.calls += 1
        await asyncio.sleep(0)  # let concurrent callers join this request
        if self.infos is None:
            raise ReceiverUnavailable(f"receiver at {self.api} did not answer 'streams'")
        return self.infos


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

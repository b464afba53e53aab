"""Metadata queries in pages (SPEC §4): a query's reply covers a bounded slice.

The receiver examines at most ``scan_limit`` records per request and says where
it stopped; :func:`query_pages` asks page after page.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import msgspec

from hidra_ng.errors import InvalidArgument
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.frames import Frame, frame_from_record

_query_decoder = msgspec.msgpack.Decoder(proto.QueryResult)
_record_decoder = msgspec.msgpack.Decoder(proto.Record)


@dataclass(frozen=True)
class QueryPage:
    """One reply to a query: its matches, and where a query goes on (:meth:`Consumer.query_page`).

    ``next`` is the first index the receiver did not examine; ``more`` is True when a
    bound (``limit`` or ``scan_limit``) stopped it before the last record stored when
    the query began: a query with ``start=next`` continues it.
    """

    frames: list[Frame]
    next: int
    more: bool


def check_page_bounds(**bounds: int) -> None:
    """Each bound of a query request an integer >= 0, or InvalidArgument naming it."""
    for name, value in bounds.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise InvalidArgument(f"query {name} {value!r} is not valid; expected an integer >= 0")


def page_of(body: memoryview) -> QueryPage:
    """The :class:`QueryPage` of a query reply's body."""
    result = _query_decoder.decode(body)
    frames = [
        frame_from_record(r.stream, r.index, _record_decoder.decode(r.record), None)
        for r in result.frames
    ]
    return QueryPage(frames, result.next, result.more)


def query_pages(
    query_page: Callable[..., QueryPage],
    stream: str,
    expr: str,
    limit: int,
    start: int,
    scan_limit: int,
) -> Iterator[Frame]:
    """The matches of a query, asking ``query_page`` page after page: at most ``limit``
    in all, 0 for no limit."""
    left = limit
    while True:
        page = query_page(
            stream,
            expr,
            start=start,
            limit=min(left, proto.MAX_QUERY_LIMIT) if limit else 0,
            scan_limit=scan_limit,
        )
        yield from page.frames
        left -= len(page.frames)
        if not page.more or (limit and left <= 0):
            return
        start = page.next

"""Spooled payloads lent to zmq as views of the map (hidra_ng/sender/lending.py)."""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

from hidra_ng.sender.lending import Lender
from hidra_ng.sender.spool import Spool
from hidra_ng.wire import protocol as proto
from tests.helpers import wait_for

SIZE = 256 << 10


def _header(stream: str = "s") -> proto.Header:
    return proto.Header(stream, 0, proto.Payload.BYTES, "", (), "none", b"{}", time.time())


def _fill(spool: Spool, first: int, count: int) -> list[bytes]:
    payloads = [bytes([(first + i) % 256]) * SIZE for i in range(count)]
    spool.append([(_header(), p) for p in payloads])
    return payloads


def test_a_lent_view_keeps_its_bytes_while_the_spool_is_rewritten(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "det", sync="batch")
    try:
        sent = _fill(spool, 1, 4)
        lender = Lender(spool.env)
        loan = lender.open()
        assert loan is not None
        batch = spool.read_views(loan.txn, 0, 10, 1 << 30)
        assert [bytes(out.payload) for out in batch] == sent
        lent = [loan.lend(out.payload) for out in batch]  # type: ignore[arg-type]
        loan.end()  # the send call returned; zmq still holds the views
        del batch
        # acknowledged and freed, then the spool is written on: the freed pages must not be
        # reused while zmq may still read them
        spool.release(3)
        for round_ in range(8):
            _fill(spool, 100 + 4 * round_, 4)
            spool.release(spool.next_seq - 1)
        assert [bytes(view) for view in lent] == sent
        assert lender.open_loans == 1
        del lent  # zmq let go: the read transaction ends
        gc.collect()
        assert lender.open_loans == 0
    finally:
        spool.close()


def test_the_map_grows_only_once_the_lent_views_are_given_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "det", sync="batch")
    try:
        sent = _fill(spool, 7, 1)
        lender = Lender(spool.env)
        loan = lender.open()
        assert loan is not None
        view = loan.lend(spool.read_views(loan.txn, 0, 1, 1 << 30)[0].payload)  # type: ignore[arg-type]
        loan.end()
        before = spool.env.map_bytes
        grower = threading.Thread(target=spool.env._grow)
        grower.start()
        try:
            wait_for(lambda: spool.env._gate._resizing, 10, "the grow waiting for readers")
            assert spool.env.map_bytes == before  # not remapped under the lent view
            assert bytes(view) == sent[0]
        finally:
            del view
            grower.join(10)
        assert not grower.is_alive()
        assert spool.env.map_bytes == 2 * before
        assert lender.open_loans == 0
    finally:
        spool.close()


def test_no_more_loans_than_the_limit_are_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "det", sync="batch")
    try:
        lender = Lender(spool.env, limit=2)
        first, second = lender.open(), lender.open()
        assert first is not None and second is not None
        assert lender.open() is None  # the caller reads copies instead
        first.end()
        third = lender.open()
        assert third is not None
        second.end()
        third.end()
        assert lender.open_loans == 0 and lender.loans == 3
    finally:
        spool.close()


def test_a_loan_dropped_without_end_still_ends(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "det", sync="batch")
    try:
        lender = Lender(spool.env)
        loan = lender.open()
        assert loan is not None and lender.open_loans == 1
        del loan  # an exception between the read and the send's end(), say
        gc.collect()
        assert lender.open_loans == 0
    finally:
        spool.close()


def test_end_all_ends_the_loans_zmq_never_gave_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "det", sync="batch")
    try:
        _fill(spool, 1, 2)
        lender = Lender(spool.env)
        loans = [lender.open(), lender.open(), lender.open()]
        assert all(loan is not None for loan in loans)
        views = []
        for loan in loans[:2]:
            assert loan is not None
            views.append(loan.lend(spool.read_views(loan.txn, 0, 1, 1 << 30)[0].payload))  # type: ignore[arg-type]
            loan.end()
        assert lender.open_loans == 3
        assert lender.end_all() == 3  # the third's reader had not even ended
        assert lender.open_loans == 0
        assert lender.end_all() == 0
        loans[2].end()  # type: ignore[union-attr]
        del views, loans
        gc.collect()
        assert lender.open_loans == 0  # no share comes back twice
        grown = spool.env.map_bytes * 2
        spool.env._grow()  # no reader left: the map grows at once
        assert spool.env.map_bytes == grown
    finally:
        spool.close()

"""What the receiver's api thread spends per message of group_1kib, in-process, no network.

    .venv/bin/python perf/steps_group.py [--messages 32000] [--batch 16] [--rounds 3] [--at REV]

A Store holding ``messages`` 1 KiB messages (appended 1000 per commit, so packed in
blocks as the receiver stores them) and its Groups; the api's request handlers and
replies (receiver/requests.py, replies.py) serve ``next`` requests of ``batch``
messages, each carrying the acks of the batch before, as a group_1kib member's
requests do, through a ROUTER stand-in that only counts. Per message, the Python
time of: decoding and handling the request (``decode+handle``), handing the turn's
changes to the group writer (``release_held``) and sending the replies it made
durable (``on_written``); the writer's commit is waited for, not counted. Rounds
are independent (a new store); the minimum is the figure least disturbed by other
jobs. What it showed is in perf/NOTES.md ("group_1kib: round trips ...").
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from harness import rerun_at

from hidra_ng.metrics import ReceiverMetrics
from hidra_ng.receiver.groups import Groups
from hidra_ng.receiver.replay import Replays
from hidra_ng.receiver.replies import Replies
from hidra_ng.receiver.requests import Requests
from hidra_ng.receiver.scans import Scans
from hidra_ng.receiver.store import Incoming, Store
from hidra_ng.wire import protocol as proto

STREAM = "perf/steps_group"
WAIT = 60.0  # a bound for the group writer


class _Router:
    """Counts the replies; never blocks."""

    def __init__(self) -> None:
        self.sent = 0

    def send_multipart(self, frames, flags=0, copy=True) -> None:
        self.sent += 1


def one_round(root: Path, messages: int, batch: int) -> dict[str, float]:
    store = Store(root / "store", map_bytes=1 << 30)
    payload = os.urandom(1024)
    for start in range(0, messages, 1000):
        store.append(
            [
                Incoming(
                    proto.Envelope("perf", 1, 0, 0),
                    proto.Header(STREAM, seq, proto.Payload.BYTES, "", (), "none", b"{}", 0.0),
                    payload,
                )
                for seq in range(start, min(start + 1000, messages))
            ]
        )
    groups = Groups(root / "groups", store, ack_timeout=30.0)
    router = _Router()
    replies = Replies(router, groups)  # type: ignore[arg-type]
    requests = Requests(
        store, groups, ReceiverMetrics(), replies, Replays(store, replies), Scans(store, replies)
    )
    spent = dict.fromkeys(("decode+handle", "release_held", "on_written"), 0.0)
    acks: tuple[int, ...] = ()
    try:
        for k in range(messages // batch):
            req = proto.NextRequest(
                id=k + 1, stream=STREAM, group="g", timeout=30.0, max_count=batch, indices=acks
            )
            frame = proto.encode(proto.Kind.REQUEST, req)
            t0 = time.perf_counter()
            decoded = proto.decode(proto.Kind.REQUEST, proto.Request, frame)
            proto.check_request(decoded)  # type: ignore[arg-type]
            requests.handle(b"member", decoded)  # type: ignore[arg-type]
            t1 = time.perf_counter()
            replies.release_held()
            t2 = time.perf_counter()
            groups.writer.wait(WAIT)
            t3 = time.perf_counter()
            replies.on_written()
            t4 = time.perf_counter()
            spent["decode+handle"] += t1 - t0
            spent["release_held"] += t2 - t1
            spent["on_written"] += t4 - t3
            acks = tuple(range(k * batch, (k + 1) * batch))
        if router.sent != messages // batch:
            raise RuntimeError(f"{router.sent} replies for {messages // batch} requests")
    finally:
        groups.close()
        store.close()
    n = messages // batch * batch
    return {name: 1e6 * seconds / n for name, seconds in spent.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=32_000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--at", metavar="REV", help="measure hidra_ng as committed at REV")
    args = ap.parse_args(argv)
    if args.at:
        return rerun_at(args.at, Path(__file__), argv if argv is not None else sys.argv[1:])
    rounds = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="hidra-steps-group-") as tmp:
            rounds.append(one_round(Path(tmp), args.messages, args.batch))
    print(f"us of api-thread Python per message, next of {args.batch} with acks (min of rounds):")
    for name in rounds[0]:
        values = sorted(r[name] for r in rounds)
        print(f"  {name:14s} {values[0]:6.2f}  (rounds: {', '.join(f'{v:.2f}' for v in values)})")
    total = sorted(sum(r.values()) for r in rounds)
    print(f"  {'total':14s} {total[0]:6.2f}  load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

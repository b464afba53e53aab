"""One member of a consumer group, run as its own process by test_groups_kill.py.

Loop: ``next`` -> write ``P index sha256 deliveries t`` to the output file (flushed,
so a kill -9 keeps it) -> ``ack`` (retried until the receiver answers) -> ``A index t``.
Exits 0 after ``StreamFinished``, with a last line ``F``.

``--hold-after N``: after N processed messages, take one more, write
``H index sha256 deliveries t`` and sleep without acking, to be killed while it
holds the message. ``t`` is ``time.monotonic()``, comparable across processes.

``--batch N`` (N > 1): ``next_many(max_count=N)``, a ``P`` line per frame, then
one ``ack_many`` of the batch and an ``A`` line per frame. With ``--piggyback``
the batch is acked by the next ``next_many(ack=...)`` instead, and its ``A``
lines follow that call.

A plain script: it must not import pytest or the tests' conftest.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time

from hidra_ng import Consumer, NotYetAvailable, ReceiverUnavailable, StreamFinished


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--ack-timeout", type=float, default=2.0)
    parser.add_argument("--hold-after", type=int, default=-1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--piggyback", action="store_true")
    args = parser.parse_args()

    processed = 0
    unacked: list = []  # --piggyback: the last batch, acked by the next request

    def acked(frames) -> None:
        for frame in frames:
            out.write(f"A {frame.index} {time.monotonic()}\n")

    with open(args.out, "a", buffering=1) as out, Consumer(args.api, request_timeout=1.0) as c:
        while True:
            try:
                if args.batch > 1:
                    frames = c.next_many(
                        args.stream, args.group, args.batch, 1.0,
                        ack=unacked, ack_timeout=args.ack_timeout,
                    )  # fmt: skip
                else:
                    frames = [c.next(args.stream, args.group, 1.0, ack_timeout=args.ack_timeout)]
            except StreamFinished:
                acked(unacked)
                out.write("F\n")
                return 0
            except NotYetAvailable:
                acked(unacked)  # the acks held even though nothing came
                unacked = []
                continue
            except ReceiverUnavailable:
                continue  # the receiver restarts; the acks go again with the next request
            acked(unacked)
            unacked = []
            for frame in frames:
                data = frame.data if isinstance(frame.data, bytes) else b""
                line = f"{frame.index} {hashlib.sha256(data).hexdigest()} {frame.deliveries}"
                if processed == args.hold_after:
                    out.write(f"H {line} {time.monotonic()}\n")
                    out.flush()
                    while True:
                        time.sleep(60)  # hold it, unacked, until killed
                out.write(f"P {line} {time.monotonic()}\n")
                out.flush()
                processed += 1
            if args.piggyback:
                unacked = frames
                continue
            while True:
                try:
                    c.ack_many(frames)
                    break
                except ReceiverUnavailable:
                    continue  # the receiver restarts: ack again (acks are idempotent)
            acked(frames)


if __name__ == "__main__":
    sys.exit(main())

"""The far end of the raw pyzmq baselines: a separate process, as a receiver would be.

    python perf/zmq_peer.py sink|latency DATA_ENDPOINT BACK_ENDPOINT COUNT HWM
    python perf/zmq_peer.py relay DATA_ENDPOINT BACK_ENDPOINT COUNT HWM PUB_ENDPOINT

It connects a PULL socket to DATA_ENDPOINT and a PUSH socket to BACK_ENDPOINT,
answers a first b"hello" with b"ready" (so the measuring side knows both pipes are
up before its clock starts), then:

* ``sink``: receives COUNT messages without copying them and answers with a JSON
  summary (messages, bytes) once the last one is in;
* ``latency``: receives COUNT two-frame messages [send time (monotonic ns, 8 bytes),
  payload], notes the one-way latency of each against the same machine's
  monotonic clock, answers each with b"k" (so the next is sent only then: no
  queueing), and finally sends the latencies as JSON;
* ``relay``: connects a PUB socket to PUB_ENDPOINT and republishes every message
  it receives on it, without copying, until a message ``b"end"``; then answers
  with a JSON summary (messages relayed). The middle of the two hops a live
  frame takes (producer -> receiver -> subscriber), with nothing else done.

Only pyzmq is imported here, so the process starts in a fraction of a second.
"""

from __future__ import annotations

import json
import struct
import sys
import time

import zmq

_NS = struct.Struct("<q")


def main(argv: list[str]) -> int:
    role, data_ep, back_ep, count_arg, hwm_arg, *extra = argv
    count, hwm = int(count_arg), int(hwm_arg)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, hwm)
    back = ctx.socket(zmq.PUSH)
    try:
        pull.connect(data_ep)
        back.connect(back_ep)
        if pull.recv() != b"hello":
            raise SystemExit("expected hello first")
        back.send(b"ready")
        if role == "sink":
            nbytes = 0
            for _ in range(count):
                nbytes += len(pull.recv(copy=False))
            back.send_json({"messages": count, "bytes": nbytes})
        elif role == "latency":
            latencies = []
            for _ in range(count):
                stamp, payload = pull.recv_multipart(copy=False)
                arrived = time.monotonic_ns()
                latencies.append(arrived - _NS.unpack(stamp.buffer)[0])
                del payload
                back.send(b"k")
            back.send(json.dumps({"latencies_ns": latencies}).encode())
        elif role == "relay":
            back.send_json({"messages": _relay(ctx, pull, extra[0], hwm)})
        else:
            raise SystemExit(f"unknown role {role!r}; expected sink, latency or relay")
    finally:
        pull.close(linger=0)
        back.close(linger=1000)
        ctx.term()
    return 0


def _relay(ctx: zmq.Context, pull: zmq.Socket, pub_ep: str, hwm: int) -> int:
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, hwm)
    try:
        pub.connect(pub_ep)
        relayed = 0
        while True:
            message = pull.recv(copy=False)
            if len(message) == 3 and message.bytes == b"end":
                return relayed
            pub.send(message, copy=False)
            relayed += 1
    finally:
        pub.close(linger=0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

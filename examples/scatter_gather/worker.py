"""A worker: analyse images of the frames stream in group "spots", send one result each.

    python worker.py --id 1 --ingest tcp://dc:50100 --api tcp://dc:50101

Run as many as you like, on as many machines: the group hands each image to one
of them. Per image the result is a metadata-only message ``{"image": k, "count": n}``
in the results stream. The order is what makes it lossless: the results are durable
in this worker's spool (``send_many`` returned) before the images are acked, so a
worker killed at any moment loses nothing; its unacked images go to another worker
after the ack timeout, which may then send a second result for an image (the
aggregator dedupes).
"""

from __future__ import annotations

import argparse
import contextlib

from common import FRAMES, RESULTS, WORKER_GROUP, count_spots, threshold

import hidra_ng


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--id", required=True, help="this worker's name, unique")
    parser.add_argument("--ingest", default="tcp://localhost:50100")
    parser.add_argument("--api", default="tcp://localhost:50101")
    parser.add_argument("--spool-dir", help="default: spool-worker-ID")
    parser.add_argument("--frames", default=FRAMES)
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--group", default=WORKER_GROUP)
    parser.add_argument("--lam", type=float, default=4.0, help="as given to the producer")
    parser.add_argument("--batch", type=int, default=64, help="images per result commit")
    parser.add_argument("--ack-timeout", type=float, default=30.0)
    args = parser.parse_args()

    above = threshold(args.lam)
    done = 0
    spool = args.spool_dir or f"spool-worker-{args.id}"
    with (
        hidra_ng.Consumer(args.api) as consumer,
        hidra_ng.Producer(args.ingest, args.api, spool, f"sg-worker-{args.id}") as producer,
    ):
        finished = False
        while not finished:
            frames = []
            try:
                # wait for one image, then take what is there, up to a batch, in one round
                # trip (each reply waits for the receiver's fsync of the group state)
                frames = consumer.next_many(args.frames, args.group, max_count=args.batch,
                                            timeout=2.0, ack_timeout=args.ack_timeout)  # fmt: skip
            except hidra_ng.StreamFinished:
                finished = True  # every image is analysed and acked by some worker
            except (hidra_ng.NotYetAvailable, hidra_ng.ReceiverUnavailable):
                pass
            if not frames:
                continue
            results = [
                (None, {"image": f.meta["image"], "count": count_spots(f.data, above)})
                for f in frames
            ]
            producer.send_many(args.results, results)  # durable in the spool: now ack
            # if the ack is lost, the images come back after the ack timeout and their
            # results are sent again: the aggregator dedupes
            with contextlib.suppress(hidra_ng.ReceiverUnavailable):
                consumer.ack_many(frames)
            done += len(frames)
        producer.flush(timeout=600)
    print(f"worker {args.id}: {done} images", flush=True)


if __name__ == "__main__":
    main()

"""Send N Poisson images to the frames stream, then finish the stream.

python producer.py --ingest tcp://dc:50100 --api tcp://dc:50101 --count 1000
"""

from __future__ import annotations

import argparse
import time

from common import FRAMES, image, parse_shape

import hidra_ng


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", default="tcp://localhost:50100")
    parser.add_argument("--api", default="tcp://localhost:50101")
    parser.add_argument("--spool-dir", default="spool-producer")
    parser.add_argument("--sender-id", default="sg-producer")
    parser.add_argument("--stream", default=FRAMES)
    parser.add_argument("--count", type=int, default=1000, help="images to send")
    parser.add_argument("--shape", default="64x64", help="ROWSxCOLS of each image")
    parser.add_argument("--lam", type=float, default=4.0, help="mean counts per pixel")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=500, help="images per spool commit")
    args = parser.parse_args()

    shape = parse_shape(args.shape)
    started = time.monotonic()
    with hidra_ng.Producer(args.ingest, args.api, args.spool_dir, args.sender_id) as producer:
        for first in range(0, args.count, args.batch):
            ks = range(first, min(first + args.batch, args.count))
            producer.send_many(
                args.stream, [(image(args.seed, k, shape, args.lam), {"image": k}) for k in ks]
            )
        producer.finish(args.stream)
        producer.flush(timeout=600)
    print(f"producer: {args.count} images sent in {time.monotonic() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()

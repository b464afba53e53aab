"""A producer process sending small messages in send_many batches (ADR 0004), then finish.

Usage: packed_job.py INGEST API SPOOL_DIR SENDER_ID STREAM SEED COUNT BATCH

Each batch of BATCH messages is one spool value (plus the large ones alone),
spooled with a checkpoint of how many messages are spooled, in one commit, so
a run killed at any point and started again resumes exactly after the last
spooled batch. Prints ``resuming at K`` when it starts, exits 0 once all is
acknowledged.
"""

from __future__ import annotations

import sys

from packed_workload import small_message

from hidra_ng import Producer

CHECKPOINT = "packed_job"


def main(argv: list[str]) -> int:
    ingest, api, spool_dir, sender_id, stream, seed, count, batch = argv
    seed_value, total, size = int(seed), int(count), int(batch)
    with Producer(ingest, api, spool_dir, sender_id) as producer:
        saved = producer.checkpoint(CHECKPOINT)
        start = 0 if saved is None else int(saved)
        print(f"resuming at {start}", flush=True)
        for first in range(start, total, size):
            ks = range(first, min(first + size, total))
            items = [small_message(seed_value, k) for k in ks]
            producer.send_many(stream, items, checkpoint=(CHECKPOINT, b"%d" % ks.stop))
        producer.finish(stream)
        producer.flush(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

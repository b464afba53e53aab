"""A producer process for the fault tests: send messages 0..COUNT-1 of a workload, then finish.

Usage: producer_job.py INGEST API SPOOL_DIR SENDER_ID STREAM SEED COUNT SPOOL_SYNC

Each message is spooled together with a checkpoint saying how many messages are
spooled, in one commit (``send_many(..., checkpoint=...)``), so a run killed at
any point and started again on the same spool resumes exactly after the last
spooled message: nothing is sent twice and nothing is skipped. The process
keeps no record of its own; the test derives every payload from SEED and the
message number (see workload.py). It prints one line when it starts sending,
``resuming at K``, and exits 0 once everything is acknowledged.
"""

from __future__ import annotations

import sys

from workload import message

from hidra_ng import Producer

CHECKPOINT = "producer_job"


def main(argv: list[str]) -> int:
    ingest, api, spool_dir, sender_id, stream, seed, count, spool_sync = argv
    seed_value, total = int(seed), int(count)
    with Producer(ingest, api, spool_dir, sender_id, spool_sync=spool_sync) as producer:
        saved = producer.checkpoint(CHECKPOINT)
        start = 0 if saved is None else int(saved)
        print(f"resuming at {start}", flush=True)
        for k in range(start, total):
            data, meta = message(seed_value, k)
            producer.send_many(stream, [(data, meta)], checkpoint=(CHECKPOINT, b"%d" % (k + 1)))
        producer.finish(stream)  # again if the killed run had finished: that is harmless
        producer.flush(timeout=120)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

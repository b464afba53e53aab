"""A sender of a split series that kills itself (SIGKILL) right after its N-th block commit.

Usage::

    split_crash.py KILL_AFTER job SHARDS SPOOL_DIR COUNT BATCH
    split_crash.py KILL_AFTER cli HIDRA_NG_ARGS...

``job``: a Producer sends items 0..COUNT-1 of split_workload.py, BATCH per
``send_many``, each call with a checkpoint saying how many are spooled, then
finishes the series and waits for the acks; a restarted job resumes at its
checkpoint, sending again the call a kill interrupted. ``cli``: ``hidra-ng ARGS``
(the sender daemon). ``KILL_AFTER`` > 0: the process kills itself with SIGKILL
once its ``KILL_AFTER``-th spool commit of a part stream is durable, so the kill
falls between two commits of one call (a call of several blocks); 0: no
self-kill. Logs go to stderr at INFO.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from split_workload import BLOCK, CHECKPOINT, PARTS, SENDER, SERIES, item

from hidra_ng import Producer
from hidra_ng.cli import main as cli_main
from hidra_ng.sender.producer import Producer as PlainProducer


def kill_after(commits: int) -> None:
    """SIGKILL this process right after its ``commits``-th spool commit of a part stream."""
    if commits <= 0:
        return
    original = PlainProducer._spool_commit
    done = [0]

    def commit(self, prepared, finish=(), checkpoint=None):
        seqs = original(self, prepared, finish=finish, checkpoint=checkpoint)
        if prepared and "/part-" in prepared[0][0].stream and not finish:
            done[0] += 1
            if done[0] == commits:
                os.kill(os.getpid(), signal.SIGKILL)
        return seqs

    PlainProducer._spool_commit = commit  # type: ignore[method-assign]


def job(shards: str, spool_dir: str, count: int, batch: int) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = {"split_parts": PARTS, "split_block_images": BLOCK}
    with Producer(shards=shards, spool_dir=spool_dir, sender_id=SENDER, **options) as p:
        saved = p.checkpoint(CHECKPOINT)
        start = 0 if saved is None else int(saved)
        print(f"resuming at {start}", flush=True)
        for first in range(start, count, batch):
            end = min(count, first + batch)
            items = [item(k) for k in range(first, end)]
            p.send_many(SERIES, items, checkpoint=(CHECKPOINT, b"%d" % end))
        p.finish(SERIES)
        p.flush(timeout=120)
    return 0


def main(argv: list[str]) -> int:
    kill_after(int(argv[0]))
    if argv[1] == "job":
        shards, spool_dir, count, batch = argv[2:]
        return job(shards, spool_dir, int(count), int(batch))
    return cli_main(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The writer's publisher (hidra_ng/writer/publisher.py): complete ``.part`` files are
renamed and their checkpoints committed strictly in order, never a checkpoint before
its files; the first error stops it and reaches the writer; what is queued after it
stays ``.part``."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hidra_ng.writer.files import part_name
from hidra_ng.writer.formats import Published
from hidra_ng.writer.publisher import Job, Publisher, publish_parts
from tests.helpers import wait_for


def staged(directory: Path, name: str, body: bytes = b"x") -> Path:
    """A complete file as a format leaves it: ``NAME.part``; returns NAME."""
    final = directory / name
    part_name(final).write_bytes(body)
    return final


def job(next_index: int, *files: Path) -> Job:
    return Job(next_index, {"next": next_index}, Published(list(files), len(files), 1))


class Recorder:
    """A commit that checks every file of its jobs is under its final name."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.committed: list[int] = []
        self.batches = 0
        self.gate = gate
        self.entered = threading.Event()  # a commit waits at the gate

    def __call__(self, jobs: list[Job]) -> None:
        if self.gate is not None:
            self.entered.set()
            self.gate.wait()
        self.batches += 1
        for j in jobs:
            for f in j.done.files if j.done else []:
                assert f.exists() and not part_name(f).exists(), f
            self.committed.append(j.next_index)


def test_files_are_published_and_checkpoints_committed_in_order(tmp_path):
    rec = Recorder()
    p = Publisher("s", rec)
    for k in range(1, 8):
        p.submit(job(k * 10, staged(tmp_path, f"f{k}.h5")))
        if k % 3 == 0:
            p.submit(Job(k * 10 + 1, {}, None))  # a checkpoint without a file
    assert p.close() is None
    assert rec.committed == [10, 20, 30, 31, 40, 50, 60, 61, 70]
    assert sorted(f.name for f in tmp_path.iterdir()) == [f"f{k}.h5" for k in range(1, 8)]


def test_jobs_queued_together_are_one_batch(tmp_path):
    gate = threading.Event()
    rec = Recorder(gate)
    p = Publisher("s", rec, depth=10)
    p.submit(job(1, staged(tmp_path, "a.h5")))  # taken at once, its commit waits at the gate
    assert rec.entered.wait(10), "the first commit did not start"
    for k in range(2, 6):
        p.submit(job(k, staged(tmp_path, f"{k}.h5")))
    gate.set()
    assert p.close() is None
    assert rec.committed == [1, 2, 3, 4, 5]
    assert rec.batches == 2


def test_an_error_stops_publishing_and_reaches_the_writer(tmp_path):
    gate = threading.Event()
    rec = Recorder(gate)
    p = Publisher("s", rec, depth=10)
    p.submit(job(1, staged(tmp_path, "a.h5")))
    assert rec.entered.wait(10), "the first commit did not start"
    p.submit(job(2, tmp_path / "missing.h5"))  # its .part is not there: fsync fails
    later = staged(tmp_path, "c.h5")
    p.submit(job(3, later))
    gate.set()
    wait_for(lambda: p._error is not None, what="the error")
    with pytest.raises(FileNotFoundError):
        p.check()
    with pytest.raises(FileNotFoundError):
        p.submit(job(4, staged(tmp_path, "d.h5")))
    assert isinstance(p.close(), FileNotFoundError)
    assert rec.committed == [1]  # nothing after the failed file is committed
    assert part_name(later).exists() and not later.exists()  # stays .part: written again


def test_close_without_drain_leaves_the_queue_as_part_files(tmp_path):
    gate = threading.Event()
    rec = Recorder(gate)
    p = Publisher("s", rec, depth=10)
    p.submit(job(1, staged(tmp_path, "a.h5")))
    assert rec.entered.wait(10), "the first commit did not start"
    queued = staged(tmp_path, "b.h5")
    p.submit(job(2, queued))
    closing = threading.Thread(target=p.close, kwargs={"drain": False})
    closing.start()
    wait_for(lambda: not p._jobs, what="the queue dropped")
    gate.set()
    closing.join()
    assert rec.committed == [1]
    assert part_name(queued).exists() and not queued.exists()


def test_publish_parts_renames_every_file(tmp_path):
    (tmp_path / "d").mkdir()
    finals = [staged(tmp_path, "a.h5", b"1"), staged(tmp_path / "d", "b.h5", b"22")]
    publish_parts(finals)
    assert [f.read_bytes() for f in finals] == [b"1", b"22"]
    assert not list(tmp_path.rglob("*.part"))

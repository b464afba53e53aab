"""Helpers of the shard tests (SPEC §14): receivers on loopback and the shard map naming them.

Import them as ``from tests.shard_helpers import ...``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from hidra_ng.config import ReceiverConfig
from hidra_ng.receiver.daemon import Receiver
from hidra_ng.testing import ReceiverProcess


def endpoints_of(receiver: ReceiverProcess | Receiver) -> dict[str, str]:
    if isinstance(receiver, Receiver):
        return dict(receiver.endpoints)
    return {"ingest": receiver.ingest, "api": receiver.api, "publish": receiver.publish}


def write_shard_map(
    path: Path,
    receivers: Mapping[str, ReceiverProcess | Receiver],
    streams: Sequence[Sequence[str]],
) -> Path:
    """A shard map of ``receivers`` (name -> running receiver), the i-th with ``streams[i]``."""
    blocks = []
    for (name, receiver), patterns in zip(receivers.items(), streams, strict=True):
        listed = ", ".join(f'"{p}"' for p in patterns)
        ep = endpoints_of(receiver)
        blocks.append(
            f'[[shard]]\nname = "{name}"\nstreams = [{listed}]\ningest = "{ep["ingest"]}"\n'
            f'api = "{ep["api"]}"\npublish = "{ep["publish"]}"\n'
        )
    path.write_text("\n".join(blocks))
    return path


@contextlib.contextmanager
def receivers(tmp_path: Path, names: Sequence[str]) -> Iterator[dict[str, ReceiverProcess]]:
    """Receivers started on ``tcp://127.0.0.1:*`` (ports read back), killed at the end."""
    started: dict[str, ReceiverProcess] = {}
    try:
        for name in names:
            started[name] = ReceiverProcess(tmp_path / f"store-{name}").start()
        yield started
    finally:
        for receiver in started.values():
            receiver.kill()


@contextlib.contextmanager
def in_process_receivers(tmp_path: Path, names: Sequence[str]) -> Iterator[dict[str, Receiver]]:
    """In-process receivers (threads) on ``tcp://127.0.0.1:*``, stopped at the end."""
    started: dict[str, Receiver] = {}
    try:
        for name in names:
            rx = Receiver(
                ReceiverConfig(
                    data_dir=str(tmp_path / f"store-{name}"),
                    ingest="tcp://127.0.0.1:*",
                    api="tcp://127.0.0.1:*",
                    publish="tcp://127.0.0.1:*",
                    metrics_port=0,
                    initial_map_bytes=64 << 20,
                )
            )
            rx.start()
            started[name] = rx
        yield started
    finally:
        for rx in started.values():
            rx.stop()

"""Consumer groups: hand each message to one member at a time, redeliver what is not acked.

State of a group (stream, name), kept in its own LMDB environment::

    groups    stream \\0 name          -> GroupMeta (id, position, ack timeout, max deliveries)
    entries   group id | index (BE)    -> Entry (deliveries, due time, parked)

``position`` is the next index never handed out. Every index below it that has
no entry is acknowledged; an entry is a message handed out and not yet acked
(in flight until ``due``, then due for redelivery), nacked (due after its
delay) or parked (delivered ``max_deliveries`` times without an ack; listed, no
longer handed out). Messages due for redelivery go out before new ones.

Durability: operations change the state in memory; at the end of each api
turn the changes are handed to the :class:`~hidra_ng.receiver.groupsync.GroupWriter`,
which commits them durably in its own thread (pages, then the meta page, flushed),
and the replies that confirm them (a hand-out, an
ack, a nack) are sent only once it reports them durable. So a confirmed change
survives a machine crash (SPEC G8), one commit serves every request of a turn,
and under load one commit serves every turn that queued while the last one
flushed. Changes no reply confirms (a parking, a group created by a request
that waits) go the same way.
"""

from __future__ import annotations

import heapq
import logging
import math
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from hidra_ng.errors import InvalidInput, NotYetAvailable, StreamFinished
from hidra_ng.lmdbenv import Env
from hidra_ng.receiver.groupsync import Changes, GroupWriter, commit
from hidra_ng.receiver.store import Store
from hidra_ng.wire.protocol import check_stream_name

log = logging.getLogger(__name__)

_KEY = struct.Struct(">IQ")
MAX_GROUP_NAME = 100
#: longest ack timeout and nack delay: a week; beyond it a due time is no time at all
#: (and an infinite or NaN one would break the api thread's poll timeout)
MAX_SECONDS = 7 * 24 * 3600.0
MAX_DELIVERIES = 1_000_000


class GroupMeta(msgspec.Struct, array_like=True):
    id: int
    position: int
    ack_timeout: float
    max_deliveries: int


class Entry(msgspec.Struct, array_like=True):
    deliveries: int
    due: float  # wall clock: when it may be handed out (again)
    parked: bool = False


@dataclass
class Group:
    stream: str
    name: str
    meta: GroupMeta
    entries: dict[int, Entry] = field(default_factory=dict)  # unacked
    #: at most the earliest due time of an entry not parked: before it, none is due
    earliest_due: float = -math.inf

    def pending(self, next_index: int) -> int:
        """Messages not acked and not parked (handed out or not yet)."""
        live = sum(1 for e in self.entries.values() if not e.parked)
        return live + max(0, next_index - self.meta.position)

    def settled(self, next_index: int) -> bool:
        """Everything handed out and acked (or parked)."""
        return self.meta.position >= next_index and all(e.parked for e in self.entries.values())


@dataclass
class Handout:
    """What next() gives a member: an index to send, or why not."""

    index: int | None
    redelivery: bool = False


class Groups:
    """All consumer groups of a receiver; used from the api thread only."""

    def __init__(
        self,
        path: Path,
        store: Store,
        *,
        ack_timeout: float = 30.0,
        max_deliveries: int = 5,
    ) -> None:
        self.store = store
        self.ack_timeout = check_seconds("receiver ack_timeout", ack_timeout, positive=True)
        self.max_deliveries = max_deliveries
        # metasync=False: hidra_ng/receiver/groupsync.py flushes the meta page
        self.env = Env(
            Path(path), ("groups", "entries"), sync=True, metasync=False, map_bytes=64 << 20
        )
        self.writer = GroupWriter(self.env)
        self._groups: dict[tuple[str, str], Group] = {}
        self._dirty_meta: set[tuple[str, str]] = set()
        self._dirty_entries: dict[tuple[int, int], Entry | None] = {}
        #: (due, stream, group, first index, count): entries due then, unless acked meanwhile
        self._timers: list[tuple[float, str, str, int, int]] = []
        self.redelivered: list[tuple[str, str]] = []  # for metrics, drained by the caller
        self.parked_now: list[tuple[str, str]] = []
        self._load()

    def _load(self) -> None:
        meta_dec = msgspec.msgpack.Decoder(GroupMeta)
        entry_dec = msgspec.msgpack.Decoder(Entry)
        by_id: dict[int, Group] = {}
        with self.env.read() as txn:
            for key, value in txn.cursor(db=self.env.dbs["groups"]):
                stream, name = bytes(key).decode().split("\0", 1)
                group = Group(stream, name, meta_dec.decode(value))
                self._groups[(stream, name)] = group
                by_id[group.meta.id] = group
            for key, value in txn.cursor(db=self.env.dbs["entries"]):
                gid, index = _KEY.unpack(key)
                entry = entry_dec.decode(value)
                owner = by_id.get(gid)
                if owner is not None:
                    owner.entries[index] = entry
                    if not entry.parked:
                        self._arm(entry.due, owner, index)
        self._next_id = max(by_id, default=-1) + 1
        if self._groups:
            log.info("consumer groups loaded: %d", len(self._groups))

    # ------------------------------------------------------------ operations

    def group(
        self,
        stream: str,
        name: str,
        ack_timeout: float | None = None,
        max_deliveries: int | None = None,
    ) -> Group:
        """The group, created at the start of the stream if new; settings updated if given."""
        key = (stream, name)
        group = self._groups.get(key)
        if group is not None and ack_timeout is None and max_deliveries is None:
            return group  # the usual request: its names were checked when it was made
        check_stream_name(stream)
        check_group_name(name)
        # checked before anything changes: a bad request must not break the group
        if ack_timeout is not None:
            check_seconds(f"group {name!r}: ack_timeout", ack_timeout, positive=True)
        if max_deliveries is not None and not (
            isinstance(max_deliveries, int) and 1 <= max_deliveries <= MAX_DELIVERIES
        ):
            raise InvalidInput(
                f"group {name!r}: max_deliveries {max_deliveries!r} is not valid; expected"
                f" 1 to {MAX_DELIVERIES}"
            )
        if group is None:
            first = self.store.info(stream).first if self.store.next_index(stream) else 0
            meta = GroupMeta(
                self._next_id,
                first,
                self.ack_timeout if ack_timeout is None else ack_timeout,
                self.max_deliveries if max_deliveries is None else max_deliveries,
            )
            self._next_id += 1
            group = self._groups[key] = Group(stream, name, meta)
            self._dirty_meta.add(key)
        else:
            if ack_timeout is not None and ack_timeout != group.meta.ack_timeout:
                group.meta.ack_timeout = ack_timeout
                self._dirty_meta.add(key)
            if max_deliveries is not None and max_deliveries != group.meta.max_deliveries:
                group.meta.max_deliveries = max_deliveries
                self._dirty_meta.add(key)
        return group

    def hand_out(self, group: Group, now: float | None = None, visible: int | None = None) -> int:
        """The index to give a member now; raises NotYetAvailable / StreamFinished if none.

        ``visible``: the stream's next index as the caller's read transaction sees
        it (``store.next_index`` read before the transaction began). The store's
        meta moves once a commit is done, so a transaction begun earlier may not
        hold the newest indices; they wait for a later request (the commit's
        notice wakes it), never handed out as missing.
        """
        now = time.time() if now is None else now
        # redeliveries first: the lowest index that is due
        for index in self._due(group, now):
            entry = group.entries[index]
            if entry.deliveries >= group.meta.max_deliveries:
                entry.parked = True
                self._set_entry(group, index, entry)
                self.parked_now.append((group.stream, group.name))
                log.warning(
                    "group %s of %s: index %d parked after %d deliveries",
                    group.name, group.stream, index, entry.deliveries,
                )  # fmt: skip
                continue
            if index < self.store.info(group.stream).first:
                self._set_entry(group, index, None)  # removed by retention meanwhile
                continue
            self._deliver(group, index, entry.deliveries + 1, now)
            self.redelivered.append((group.stream, group.name))
            return index
        next_index = self.store.next_index(group.stream)
        if group.meta.position < (next_index if visible is None else min(next_index, visible)):
            first = self.store.info(group.stream).first
            if group.meta.position < first:
                log.warning(
                    "group %s of %s: indices %d..%d were removed by retention before delivery",
                    group.name, group.stream, group.meta.position, first - 1,
                )  # fmt: skip
                group.meta.position = first
            index = group.meta.position
            group.meta.position += 1
            self._dirty_meta.add((group.stream, group.name))
            self._deliver(group, index, 1, now)
            return index
        if self.store.is_finished(group.stream) and group.settled(next_index):
            raise StreamFinished(
                f"stream {group.stream!r} is finished and every message is acknowledged in"
                f" group {group.name!r}"
            )
        raise NotYetAvailable(f"no message for group {group.name!r} of stream {group.stream!r} yet")

    def hand_out_more(
        self, group: Group, count: int, now: float, visible: int | None = None
    ) -> int:
        """Up to ``count`` more new messages, the indices right after the new one that
        :meth:`hand_out` just gave at ``now``, below ``visible`` (as there); how many.

        One request of a member takes them in a row: nothing is due for redelivery at
        ``now`` (``hand_out`` would have given that first), so they are the next indices.
        """
        start = group.meta.position
        stop = self.store.next_index(group.stream)
        n = max(0, min(count, (stop if visible is None else min(stop, visible)) - start))
        if not n:
            return 0
        meta = group.meta
        due = now + meta.ack_timeout
        entries, dirty, gid = group.entries, self._dirty_entries, meta.id
        for index in range(start, start + n):
            entries[index] = dirty[(gid, index)] = Entry(1, due)
        meta.position = start + n
        group.earliest_due = min(group.earliest_due, due)
        self._dirty_meta.add((group.stream, group.name))
        self._arm(due, group, start, n)
        return n

    @staticmethod
    def _due(group: Group, now: float) -> list[int]:
        """Indices due for redelivery, lowest first; one scan, and none while nothing can be."""
        if now < group.earliest_due:
            return []
        due = []
        earliest = math.inf
        for index, entry in group.entries.items():
            if not entry.parked:
                if entry.due <= now:
                    due.append(index)
                earliest = min(earliest, entry.due)
        group.earliest_due = earliest
        return sorted(due)

    def _deliver(self, group: Group, index: int, deliveries: int, now: float) -> None:
        entry = Entry(deliveries, now + group.meta.ack_timeout)
        self._set_entry(group, index, entry)
        self._arm(entry.due, group, index)

    def ack(self, stream: str, name: str, index: int) -> bool:
        """Acknowledge; False if it was not outstanding (acked before, or never handed out)."""
        group = self._existing(stream, name)
        entry = group.entries.get(index)
        if entry is None:
            return False
        self._set_entry(group, index, None)
        return True

    def ack_many(self, stream: str, name: str, indices: Iterable[int]) -> None:
        """Acknowledge each of ``indices`` that is outstanding (see :meth:`ack`)."""
        group = self._existing(stream, name)
        entries, dirty, gid = group.entries, self._dirty_entries, group.meta.id
        for index in indices:
            if entries.pop(index, None) is not None:
                dirty[(gid, index)] = None

    def nack(self, stream: str, name: str, index: int, delay: float, now: float | None = None):
        """Return a message to the group after ``delay`` seconds."""
        delay = max(0.0, check_seconds("nack delay", delay, positive=False))
        group = self._existing(stream, name)
        entry = group.entries.get(index)
        if entry is None or entry.parked:
            return False
        entry.due = (time.time() if now is None else now) + delay
        self._set_entry(group, index, entry)
        self._arm(entry.due, group, index)
        return True

    def parked(self, stream: str, name: str) -> list[int]:
        group = self._existing(stream, name)
        return sorted(i for i, e in group.entries.items() if e.parked)

    def pending(self) -> dict[tuple[str, str], int]:
        return {key: g.pending(self.store.next_index(g.stream)) for key, g in self._groups.items()}

    def _existing(self, stream: str, name: str) -> Group:
        group = self._groups.get((stream, name))
        if group is None:
            raise NotYetAvailable(f"stream {stream!r} has no group {name!r}")
        return group

    # -------------------------------------------------------- timers, commit

    def _arm(self, due: float, group: Group, index: int, count: int = 1) -> None:
        """A timer at ``due`` for the entries ``index`` .. ``index + count - 1``."""
        heapq.heappush(self._timers, (due, group.stream, group.name, index, count))

    def next_due(self) -> float | None:
        """Wall-clock time of the next possible redelivery, if any."""
        while self._timers:
            due, stream, name, index, count = self._timers[0]
            group = self._groups.get((stream, name))
            if group is None or not _armed(group.entries, due, index, count):
                heapq.heappop(self._timers)  # stale timer: acked, parked or due at another time
                continue
            return due
        return None

    def due_groups(self, now: float | None = None) -> set[tuple[str, str]]:
        """Groups with a message due for redelivery now (their timers are consumed)."""
        now = time.time() if now is None else now
        found = set()
        while (due := self.next_due()) is not None and due <= now:
            _, stream, name, _, _ = heapq.heappop(self._timers)
            found.add((stream, name))
        return found

    def _set_entry(self, group: Group, index: int, entry: Entry | None) -> None:
        if entry is None:
            group.entries.pop(index, None)
        else:
            group.entries[index] = entry
            group.earliest_due = min(group.earliest_due, entry.due)
        self._dirty_entries[(group.meta.id, index)] = entry

    def take_changes(self) -> Changes | None:
        """The changes made since the last call, encoded for a commit; None if none."""
        if not (self._dirty_meta or self._dirty_entries):
            return None
        changes = Changes()
        for stream, name in self._dirty_meta:
            key = f"{stream}\0{name}".encode()
            changes.groups[key] = msgspec.msgpack.encode(self._groups[(stream, name)].meta)
        encoded: dict[tuple, bytes] = {}  # the entries of a run are alike: encoded once
        pack, entries, astuple = _KEY.pack, changes.entries, msgspec.structs.astuple
        for (gid, index), entry in self._dirty_entries.items():
            if entry is None:
                entries[pack(gid, index)] = None
                continue
            state = astuple(entry)
            value = encoded.get(state)
            if value is None:
                value = encoded[state] = msgspec.msgpack.encode(entry)
            entries[pack(gid, index)] = value
        self._dirty_meta = set()
        self._dirty_entries = {}
        return changes

    def write(self) -> None:
        """Commit the changes made so far in this thread, durably (without the writer:
        tests, and :meth:`close` once the writer stopped)."""
        changes = self.take_changes()
        if changes is not None and commit(self.env, changes):
            self.env.sync()

    def close(self) -> None:
        self.writer.stop()  # commits what it was handed
        self.write()  # and what was not handed over yet
        self.env.close()


def _armed(entries: dict[int, Entry], due: float, index: int, count: int) -> bool:
    """Whether a timer at ``due`` for ``index`` .. ``index + count - 1`` still has an entry
    to redeliver then (one not acked, parked or given another due time)."""
    for i in range(index, index + count):
        entry = entries.get(i)
        if entry is not None and not entry.parked and entry.due == due:
            return True
    return False


def check_seconds(what: str, value: object, *, positive: bool) -> float:
    """A duration a request sets: finite, at most MAX_SECONDS (and > 0 if ``positive``)."""
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or not math.isfinite(value)
        or value > MAX_SECONDS
        or (positive and value <= 0)
    ):
        low = "above 0" if positive else "0"
        raise InvalidInput(
            f"{what} {value!r} is not valid; expected seconds from {low} to {MAX_SECONDS:.0f}"
        )
    return float(value)


def check_group_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= MAX_GROUP_NAME
        or not all(c.isalnum() or c in "._-" for c in name)
        or not name.isascii()
    ):
        raise InvalidInput(
            f"group name {name!r} is not valid; use 1 to {MAX_GROUP_NAME} letters, digits,"
            " '.', '_' and '-'"
        )
    return name

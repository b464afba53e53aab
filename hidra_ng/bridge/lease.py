"""One bridge per prefix in a broker: a lease in the stream ``PREFIX.-lock``.

The state-directory lock (lock.py) stops a second bridge on the same machine
and directory. Two bridges on different machines (or directories) publishing
one receiver's streams under one prefix would be caught by nothing there, so
the bridge also holds a lease in the broker, built from what the stream
protocol offers:

* a *claim* is a small message (the holder's token, host, pid, state dir,
  receiver) published on the lock stream by the publisher
  ``hidra-ng-bridge-lock`` with publishing id = the broker's last id + 1. Two
  claims racing for the same id are deduplicated by the broker: exactly one is
  stored, and each claimant reads the last message back to learn who won;
* the holder *renews* every ``RENEW_SECONDS`` (the next id) and checks that the
  last message is still its own; a bridge that finds a foreign holder whose
  sequence advances within ``STALE_SECONDS`` exits 2 naming it, one whose
  sequence stands still is taken over (it crashed or lost the broker);
* a restart after ``kill -9`` on the same host and state directory takes over
  at once: holding that directory's flock proves the old holder is gone.

``-l`` is no code of names.py, so no hidra_ng stream maps to the lock stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid

from hidra_ng.bridge.broker import BrokerLink
from hidra_ng.bridge.uri import BrokerAddress
from hidra_ng.errors import BrokerError, LeaseHeld

log = logging.getLogger(__name__)

REFERENCE = "hidra-ng-bridge-lock"
RENEW_SECONDS = 5.0
STALE_SECONDS = 15.0
# the lock stream keeps little: a claim or renewal is ~300 bytes
LOCK_STREAM_ARGUMENTS = {"max-length-bytes": 8 << 20, "stream-max-segment-size-bytes": 1 << 20}


def describe(holder: dict) -> str:
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (state dir"
        f" {holder.get('state_dir', '?')}, receiver {holder.get('api', '?')})"
    )


def lock_stream(prefix: str) -> str:
    return f"{prefix}.-lock"


class Lease:
    def __init__(self, address: BrokerAddress, prefix: str, state_dir: str, api: str) -> None:
        self.address = address
        self.stream = lock_stream(prefix)
        self.me = {
            "token": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "state_dir": os.path.abspath(state_dir),
            "api": api,
        }
        self.pid: int | None = None  # publisher id on the current connection
        self.last_id = 0
        self._confirmed: dict[int, asyncio.Event] = {}
        self.renewed = 0.0

    def on_confirm(self, ids) -> None:
        for publishing_id in ids:
            event = self._confirmed.pop(publishing_id, None)
            if event is not None:
                event.set()

    async def acquire(self, link: BrokerLink) -> None:
        """Hold the lease on ``link`` or raise LeaseHeld."""
        await link.ensure_stream(self.stream, LOCK_STREAM_ARGUMENTS)
        seq = await link.last_publishing_id(self.stream, REFERENCE)
        if seq:
            holder = await self._last_holder()
            if holder and holder.get("token") != self.me["token"] and not self._dead(holder):
                await self._wait_stale(link, seq, holder)
        self.pid = await link.declare_publisher(self.stream, REFERENCE)
        seq = await link.last_publishing_id(self.stream, REFERENCE)
        await self._publish(link, seq + 1, "claim", wait=True)
        holder = await self._last_holder()
        if holder is None:  # not read back in time (a busy broker): try again later
            raise BrokerError(f"broker {self.address} did not let the lease claim be read back")
        if holder.get("token") != self.me["token"]:
            raise LeaseHeld(describe(holder), holder)
        log.info("bridge: holding the broker lease %s", self.stream)

    async def renew(self, link: BrokerLink) -> None:
        """Renew; raise LeaseHeld if another bridge took the lease meanwhile."""
        if time.monotonic() - self.renewed < RENEW_SECONDS:
            return
        seq = await link.last_publishing_id(self.stream, REFERENCE)
        # read back every time: a claim that raced a renewal for one id may have won it
        holder = await self._last_holder()
        if holder is not None and holder.get("token") != self.me["token"]:
            raise LeaseHeld(describe(holder), holder)
        # None: not read in time (a busy broker); renew anyway, check again next time
        await self._publish(link, seq + 1, "renew", wait=False)

    async def release(self, link: BrokerLink) -> None:
        """On a clean stop: a release message, so that the next bridge need not wait."""
        if self.pid is None:
            return
        seq = await link.last_publishing_id(self.stream, REFERENCE)
        if seq == self.last_id:
            await self._publish(link, seq + 1, "release", wait=True)

    def detach(self) -> None:
        self.pid = None
        self._confirmed.clear()

    def _dead(self, holder: dict) -> bool:
        if holder.get("kind") == "release":
            return True
        if holder.get("host") != self.me["host"]:
            return False
        if holder.get("state_dir") == self.me["state_dir"]:
            return True  # this process holds that directory's flock: the holder is gone
        try:
            os.kill(int(holder.get("pid", 0)), 0)
        except (ProcessLookupError, ValueError):
            return True
        except PermissionError:
            return False
        return False

    async def _wait_stale(self, link: BrokerLink, seq: int, holder: dict) -> None:
        log.info(
            "bridge: the broker lease %s was last held by %s; waiting %.0f s for it to renew",
            self.stream,
            describe(holder),
            STALE_SECONDS,
        )
        deadline = time.monotonic() + STALE_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            if await link.last_publishing_id(self.stream, REFERENCE) != seq:
                raise LeaseHeld(describe(holder), holder)
        log.warning("bridge: %s did not renew the broker lease; taking it over", describe(holder))

    async def _publish(self, link: BrokerLink, publishing_id: int, kind: str, wait: bool) -> None:
        assert self.pid is not None
        body = json.dumps({**self.me, "kind": kind, "time": time.time()}).encode()
        event = self._confirmed[publishing_id] = asyncio.Event()
        await link.publish(self.pid, [(publishing_id, body)])
        self.last_id = publishing_id
        self.renewed = time.monotonic()
        if wait:
            try:
                await asyncio.wait_for(event.wait(), 10)
            except TimeoutError:
                raise BrokerError(f"broker {self.address} did not confirm the lease") from None

    async def _last_holder(self) -> dict | None:
        """The last claim or renewal on the lock stream (None: none, or unreadable)."""
        from rstream import Consumer, ConsumerOffsetSpecification, OffsetType

        a = self.address
        found: dict[int, bytes] = {}
        arrived = asyncio.Event()

        def on_message(msg: bytes, context) -> None:
            found[context.offset] = msg
            arrived.set()

        consumer = Consumer(
            a.host, a.port, vhost=a.vhost, username=a.username, password=a.password,
            connection_name="hidra-ng-bridge-lease",
        )  # fmt: skip
        try:
            await asyncio.wait_for(consumer.start(), 10)
            await consumer.subscribe(
                self.stream,
                on_message,
                offset_specification=ConsumerOffsetSpecification(OffsetType.LAST),
            )
            try:
                await asyncio.wait_for(arrived.wait(), 10)
                await asyncio.sleep(0.2)  # the rest of the last chunk
            except TimeoutError:
                return None
        except Exception as err:
            raise BrokerError(f"broker {a} did not let the lease be read: {err!r}") from err
        finally:
            try:
                await asyncio.wait_for(consumer.close(), 10)
            except Exception as err:
                log.debug("closing the lease reader: %r", err)
        try:
            return json.loads(found[max(found)])
        except ValueError:
            return None

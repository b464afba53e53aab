"""CurveZMQ keys and the receiver's authenticator (SPEC §9).

Keys are ZeroMQ certificate files as ``hidra-ng keygen DIR`` writes them: a
public ``NAME.key`` and a secret ``NAME.key_secret`` (readable by the owner
only). A daemon's ``keys_dir`` holds its own pair; the receiver's
``authorized_keys_dir`` holds the public keys it accepts; a client's
``server_key_dir`` holds the receiver's public key.

The authenticator is a ZAP handler (ZeroMQ RFC 27) in the receiver's context:
every CURVE handshake on every receiver socket asks it, and it accepts a peer
only if its public key is in the allow list (reloaded when the directory
changes) and, if an IP allow list is set, its address is in it. A refused
peer gets nothing; it is counted and logged once per peer per minute.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from hidra_ng.errors import AuthenticationError

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = "hidra-ng"
KEY_NAME = "hidra-ng"


@dataclass(frozen=True)
class KeyPair:
    public: bytes  # Z85
    secret: bytes  # Z85


def keygen(directory: str | os.PathLike[str], name: str = KEY_NAME) -> tuple[Path, Path]:
    """Write a new key pair into ``directory``; returns (public file, secret file)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    public, secret = path / f"{name}.key", path / f"{name}.key_secret"
    for existing in (public, secret):
        if existing.exists():
            raise AuthenticationError(f"{existing} exists already; refusing to overwrite a key")
    old = os.umask(0o077)
    try:
        zmq.auth.create_certificates(str(path), name)
    finally:
        os.umask(old)
    secret.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return public, secret


def load_keypair(directory: str | os.PathLike[str]) -> KeyPair:
    """The one key pair in ``directory`` (its ``*.key_secret`` file)."""
    file = _only_file(
        directory, "*.key_secret", "keys dir", "secret key files", "as written by 'hidra-ng keygen'"
    )
    if file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("secret key %s is readable by others; chmod 600 it", file)
    public, secret = _load(file)
    if not secret:
        raise AuthenticationError(f"{file} holds no secret key")
    return KeyPair(public, secret)


def load_public_key(directory: str | os.PathLike[str]) -> bytes:
    """The one public key (``*.key``) in ``directory``: the receiver's, for clients."""
    file = _only_file(directory, "*.key", "server key dir", "public key files", "the receiver's")
    return _load(file)[0]


def _only_file(directory, pattern: str, where: str, what: str, hint: str) -> Path:
    path = Path(directory)
    found = sorted(path.glob(pattern)) if path.is_dir() else []
    if len(found) != 1:
        raise AuthenticationError(
            f"{where} {path} holds {len(found)} {what} ({pattern}); expected exactly one, {hint}"
        )
    return found[0]


def _load(file: Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(file))
        z85.decode(public)
    except (OSError, ValueError, TypeError) as err:
        raise AuthenticationError(f"{file} is not a readable CurveZMQ key file: {err}") from err
    return public, secret


@dataclass(frozen=True)
class ClientKeys:
    """What a client needs to talk to a receiver that uses keys (all Z85)."""

    pair: KeyPair
    server_public: bytes

    @classmethod
    def load(cls, keys_dir: str | None, server_key_dir: str | None) -> ClientKeys | None:
        if not keys_dir and not server_key_dir:
            return None
        if not (keys_dir and server_key_dir):
            raise AuthenticationError(
                "give both keys_dir (this client's pair) and server_key_dir (the receiver's"
                " public key), or neither"
            )
        return cls(load_keypair(keys_dir), load_public_key(server_key_dir))

    def apply(self, sock: zmq.Socket) -> zmq.Socket:
        sock.curve_publickey = self.pair.public
        sock.curve_secretkey = self.pair.secret
        sock.curve_serverkey = self.server_public
        return sock


class Authenticator(threading.Thread):
    """ZAP handler of a receiver: CURVE keys from a directory, optional IP allow list."""

    def __init__(
        self,
        ctx: zmq.Context,
        authorized_keys_dir: str | os.PathLike[str] | None,
        *,
        allow_ips: list[str] | None = None,
        on_refused: Callable[[str], None] = lambda reason: None,
        reload_seconds: float = 1.0,
    ) -> None:
        """``authorized_keys_dir=None``: no CURVE, only the IP allow list (NULL security)."""
        super().__init__(name="hidra-ng-zap", daemon=True)
        self.curve = authorized_keys_dir is not None
        self.directory = Path(authorized_keys_dir or ".")
        if self.curve and not self.directory.is_dir():
            raise AuthenticationError(
                f"authorized keys dir {self.directory} does not exist; expected a directory of"
                " client public keys (*.key)"
            )
        self.networks = [_network(ip) for ip in allow_ips or []]
        self.on_refused = on_refused
        self.reload_seconds = reload_seconds
        self._stamp: tuple | None = None
        self._keys: frozenset[bytes] = frozenset()
        self._next_check = 0.0
        self._logged: dict[tuple[str, bytes], float] = {}
        self._stopping = threading.Event()
        self._sock = ctx.socket(zmq.REP)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(ZAP_ENDPOINT)
        self._reload()

    @property
    def authorized(self) -> frozenset[bytes]:
        return self._keys

    def _reload(self) -> None:
        """Read the allow list again if the directory changed."""
        if not self.curve:
            return
        try:
            files = sorted(self.directory.glob("*.key"))
            stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        except OSError as err:
            log.error("cannot read authorized keys dir %s: %s", self.directory, err)
            return
        if stamp == self._stamp:
            return
        keys = set()
        for file in files:
            try:
                keys.add(z85.decode(_load(file)[0]))
            except AuthenticationError as err:
                log.error("authorized key ignored: %s", err)
        self._stamp = stamp
        self._keys = frozenset(keys)
        log.info("%d authorized client keys loaded from %s", len(keys), self.directory)

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                if now >= self._next_check:
                    self._next_check = now + self.reload_seconds
                    self._reload()
                if not self._sock.poll(100):
                    continue
                request = self._sock.recv_multipart()
                self._sock.send_multipart(self._answer(request))
        finally:
            self._sock.close(linger=0)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6 or request[0] != b"1.0":
            request_id = request[1] if len(request) > 1 else b""
            return [b"1.0", request_id, b"500", b"malformed ZAP request", b"", b""]
        _version, request_id, _domain, address, _identity, mechanism = request[:6]
        credentials = request[6:]
        peer = address.decode(errors="replace")
        if self.networks and not _allowed(peer, self.networks):
            return self._refuse(request_id, "ip", peer, b"")
        if not self.curve and mechanism == b"NULL":
            return [b"1.0", request_id, b"200", b"OK", b"", b""]
        if mechanism != b"CURVE" or len(credentials) != 1:
            return self._refuse(request_id, "auth", peer, b"")
        key = credentials[0]
        if self._refresh_and_check(key):
            return [b"1.0", request_id, b"200", b"OK", z85.encode(key), b""]
        return self._refuse(request_id, "auth", peer, key)

    def _refresh_and_check(self, key: bytes) -> bool:
        if key in self._keys:
            return True
        self._reload()  # a key added a moment ago is accepted without waiting
        return key in self._keys

    def _refuse(self, request_id: bytes, reason: str, peer: str, key: bytes) -> list[bytes]:
        self.on_refused(reason)
        now = time.monotonic()
        if now - self._logged.get((peer, key), -120.0) >= 60.0:
            self._logged[(peer, key)] = now
            shown = z85.encode(key).decode() if key else "no CURVE key"
            log.warning("refused peer %s (%s): %s", peer, reason, shown)
            if len(self._logged) > 10_000:
                self._logged.clear()
        return [b"1.0", request_id, b"400", b"not authorized", b"", b""]

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as err:
        raise AuthenticationError(
            f"allowed IP {text!r} is not an address or network (e.g. 10.0.0.0/8)"
        ) from err


def _allowed(peer: str, networks) -> bool:
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in net for net in networks)


def server_socket(sock: zmq.Socket, pair: KeyPair | None) -> zmq.Socket:
    """Make ``sock`` ask the ZAP handler about every peer; a CURVE server if ``pair``."""
    if pair is not None:
        sock.curve_server = True
        sock.curve_publickey = pair.public
        sock.curve_secretkey = pair.secret
    sock.zap_domain = ZAP_DOMAIN.encode()
    return sock

"""Typed configuration of the daemons: loading, precedence and validation (SPEC §7).

One TOML file per daemon: a ``[receiver]`` table, or a ``[sender]`` table with
its sources in ``[[sender.sources]]`` (``uri = "simulate:?count=100"``).

Precedence, highest first: command-line flag > environment > file > default.
Environment variables are ``HIDRA_NG_RECEIVER_<SETTING>`` and
``HIDRA_NG_SENDER_<SETTING>`` (``HIDRA_NG_RECEIVER_DATA_DIR``, ...). Under
systemd the default of ``data_dir`` / ``spool_dir`` is the unit's
``StateDirectory`` (``$STATE_DIRECTORY``), so a config may leave it out.

Everything is checked before a socket opens or a store is touched. Each mistake
is one :class:`ConfigError` sentence naming where the value came from (file,
environment variable or flag), the key, the value and what was expected::

    receiver.metrics_port = 70000 in /etc/hidra-ng/receiver.toml: expected a
    port number from 0 (off) to 65535, or -1 (any free port)
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import socket
import tomllib
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar

import msgspec
from msgspec import Meta

from hidra_ng.errors import ConfigError, FieldError, InvalidInput
from hidra_ng.wire.protocol import MAX_DATA_BYTES, MAX_META_BYTES, check_sender_id

MiB = 1 << 20
GiB = 1 << 30
MIN_MAP_BYTES = 64 * MiB  # lmdbenv raises smaller maps to this anyway

ENV_PREFIX = "HIDRA_NG_"

# Flags whose name is not "--" + the key with dashes (cli.py).
_FLAG_NAMES = {
    "ack_timeout_seconds": "--ack-timeout",
    "max_age_seconds": "--max-age",
    "sources": "--source",
    "streams": "--streams",
}


# Field declarations: Annotated[type, Meta(description=..., constraints)] = default.
# ``D(text)`` is the description (the single source of --help); constraints are
# msgspec's ge/le/gt, with extra={"expected": ...} where the wording of the error
# is better than the one made from the numbers.
Port = Annotated[
    int, Meta(ge=0, le=65535, extra={"expected": "a port number from 0 (off) to 65535"})
]
# -1: a port the OS chooses (metrics.ANY_PORT), logged and written to --ready-file
MetricsPort = Annotated[
    int,
    Meta(
        ge=-1,
        le=65535,
        extra={"expected": "a port number from 0 (off) to 65535, or -1 (any free port)"},
    ),
]


def D(text: str, **constraints: Any) -> Meta:
    """A field's description and constraints (the help text, the checks)."""
    return Meta(description=text, **constraints)


def _note(text: str) -> dict[str, str]:
    return {"expected": text}


class _Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, dict=True):
    """Base of the daemons' configs; ``origins`` tells where each value came from."""

    section: ClassVar[str]
    state_dir_key: ClassVar[str]  # the setting whose default is systemd's StateDirectory


class ReceiverConfig(_Config):
    section: ClassVar[str] = "receiver"
    state_dir_key: ClassVar[str] = "data_dir"

    data_dir: Annotated[str, D("LMDB store directory")] = "/var/lib/hidra-ng"
    ingest: Annotated[str, D("PULL endpoint for frames")] = "tcp://*:50100"
    api: Annotated[str, D("ROUTER endpoint for acks and requests")] = "tcp://*:50101"
    publish: Annotated[str, D("PUB endpoint for live frames")] = "tcp://*:50102"
    metrics_port: Annotated[MetricsPort, D("HTTP /metrics port, 0: off, -1: any free one")] = 9610
    ack_timeout_seconds: Annotated[
        float, D("consumer-group ack timeout, s", gt=0, le=7 * 24 * 3600)  # as groups allow
    ] = 30.0
    max_store_bytes: Annotated[
        int, D("retention by size, 0: off", ge=0, extra=_note("0 (no limit) or more bytes"))
    ] = 0
    max_age_seconds: Annotated[
        float, D("retention by age in s, 0: off", ge=0, extra=_note("0 (no limit) or more seconds"))
    ] = 0.0
    max_message_bytes: Annotated[
        int, D("largest frame payload accepted", ge=1, le=MAX_DATA_BYTES)
    ] = MAX_DATA_BYTES
    max_meta_bytes: Annotated[
        int, D("largest metadata (msgpack) accepted", ge=2, le=MAX_META_BYTES)
    ] = MAX_META_BYTES
    commit_max_messages: Annotated[int, D("frames per LMDB group commit, at most", ge=1)] = 10_000
    commit_max_bytes: Annotated[int, D("bytes per LMDB group commit, at most", ge=1)] = 128 * MiB
    publish_hwm: Annotated[int, D("live frames queued per slow subscriber", ge=1)] = 8
    publish_cache_bytes: Annotated[
        int, D("newest live frame of each stream kept for late joiners, bytes at most", ge=0)
    ] = 64 * MiB
    initial_map_bytes: Annotated[int, D("initial LMDB map size (it grows)", ge=MIN_MAP_BYTES)] = (
        1 * GiB
    )
    keys_dir: Annotated[str, D("the receiver's CurveZMQ key pair")] = ""
    authorized_keys_dir: Annotated[str, D("client public keys to accept")] = ""
    allow_ips: Annotated[
        list[str],
        D(
            "accept only these addresses/networks (may be repeated, or comma-separated);"
            " none: every address"
        ),
    ] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        c = _Checker(self)
        self.allow_ips = _split_commas(self.allow_ips)
        c.path("data_dir")
        for item in self.allow_ips:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise FieldError(
                    self.section,
                    "allow_ips",
                    self.allow_ips,
                    f"IP addresses or networks like 10.0.0.0/8; {item!r} is neither",
                ) from None
        for name in ("ingest", "api", "publish"):
            c.endpoint(name, bind=True)
        c.distinct_endpoints("ingest", "api", "publish")
        c.constraints()


class SenderConfig(_Config):
    section: ClassVar[str] = "sender"
    state_dir_key: ClassVar[str] = "spool_dir"

    ingest: Annotated[str, D("receiver ingest endpoint")] = "tcp://localhost:50100"
    api: Annotated[str, D("receiver api endpoint")] = "tcp://localhost:50101"
    spool_dir: Annotated[str, D("durable spool directory")] = "/var/spool/hidra-ng"
    sender_id: Annotated[str, D("this sender's id (default: the host name)")] = ""
    spool_sync: Annotated[str, D("always: fsync each frame; batch: every spool_batch_seconds")] = (
        "always"
    )
    spool_batch_seconds: Annotated[
        float, D("fsync interval of the spool with spool_sync = batch, s", gt=0)
    ] = 0.5
    max_spool_bytes: Annotated[int, D("spool size at which send() blocks", ge=1)] = 16 * GiB
    send_timeout_seconds: Annotated[float, D("how long send() waits for spool space, s", gt=0)] = (
        30.0
    )
    compression: Annotated[str, D("none, lz4 or zstd (arrays only)")] = "none"
    metrics_port: Annotated[MetricsPort, D("HTTP /metrics port, 0: off, -1: any free one")] = 9611
    keys_dir: Annotated[str, D("this sender's CurveZMQ key pair")] = ""
    server_key_dir: Annotated[str, D("the receiver's public key")] = ""
    sources: Annotated[list[str], D("a source URI; may be repeated")] = msgspec.field(
        default_factory=list
    )
    # SPEC §14: several receivers (hidra_ng/shards.py, hidra_ng/sender/sharded.py)
    shards: Annotated[
        str, D("shard map file (TOML): send each stream to its receiver; replaces ingest/api")
    ] = ""
    split_parts: Annotated[
        int, D("split each series matching split_streams into this many STREAM/part-K", ge=1)
    ] = 1
    split_block_images: Annotated[
        int, D("images per block when splitting a series over the parts", ge=1)
    ] = 1
    split_streams: Annotated[
        list[str], D("glob pattern of the series to split; may be repeated")
    ] = msgspec.field(default_factory=lambda: ["**"])

    def __post_init__(self) -> None:
        if not self.sender_id:
            self.sender_id = re.sub(r"[^A-Za-z0-9._:@-]", "-", socket.gethostname())[:100]
        c = _Checker(self)
        c.endpoint("ingest", bind=False)
        c.endpoint("api", bind=False)
        c.path("spool_dir")
        try:
            check_sender_id(self.sender_id)
        except InvalidInput:
            c.fail(
                "sender_id",
                "1 to 100 letters, digits, '.', '_', ':', '@' and '-', e.g. 'eiger-p11'",
            )
        c.choice("spool_sync", ("always", "batch"))
        c.choice("compression", ("none", "lz4", "zstd"))
        c.constraints()
        c.patterns("split_streams")
        if self.split_parts > 1 and not self.shards:
            c.fail(
                "split_parts",
                "1 without a shard map (shards = PATH): the parts go to its receivers",
            )
        for i, uri in enumerate(self.sources):
            if not isinstance(uri, str) or ":" not in uri:
                raise FieldError(
                    self.section, f"sources[{i}]", uri, "a source URI such as 'simulate:?count=100'"
                )


class ViewConfig(_Config):
    """``hidra-ng view`` (SPEC §16): the live view in a browser; env ``HIDRA_NG_VIEW_*``."""

    section: ClassVar[str] = "view"
    state_dir_key: ClassVar[str] = ""  # the view keeps no state

    api: Annotated[str, D("receiver api endpoint (streams and stored frames)")] = (
        "tcp://localhost:50101"
    )
    publish: Annotated[str, D("receiver publish endpoint (live frames)")] = "tcp://localhost:50102"
    port: Annotated[Port, D("HTTP port, 0: any free one (printed at start)")] = 8080
    bind: Annotated[str, D("address to listen on; beyond loopback a token is required")] = (
        "127.0.0.1"
    )
    token: Annotated[str, D("access token for the page and the API, required beyond loopback")] = ""
    keys_dir: Annotated[str, D("this client's CurveZMQ key pair")] = ""
    server_key_dir: Annotated[str, D("the receiver's public key")] = ""
    wait_seconds: Annotated[
        float, D("how long a request for a future index waits before 404, s", ge=0, le=10)
    ] = 2.0
    request_timeout_seconds: Annotated[
        float, D("a receiver silent this long is reported down (503), s", gt=0)
    ] = 2.0
    max_pixels: Annotated[
        int, D("larger frames reach the browser binned (true values on hover)", ge=65_536)
    ] = 8_388_608
    # SPEC §14: several receivers (hidra_ng/shards.py); one view for all of them
    shards: Annotated[
        str, D("shard map file (TOML): every receiver's streams; replaces api/publish")
    ] = ""

    def __post_init__(self) -> None:
        c = _Checker(self)
        c.endpoint("api", bind=False)
        c.endpoint("publish", bind=False)
        c.shards_alone("api", "publish")
        c.constraints(("port",))
        if not self.bind.strip() or any(ch.isspace() for ch in self.bind):
            c.fail("bind", "an address to listen on, such as '127.0.0.1' or '0.0.0.0'")
        if self.token and (len(self.token) < 16 or any(ch.isspace() for ch in self.token)):
            c.fail("token", "at least 16 characters without spaces")
        if not self.token and not is_loopback(self.bind):
            raise FieldError(
                self.section,
                "bind",
                self.bind,
                "a loopback address (127.0.0.1, ::1, localhost) unless a token is set: a"
                " wider bind shows every frame to the network, so give --token (or"
                " HIDRA_NG_VIEW_TOKEN) of at least 16 characters",
            )
        c.constraints()


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: addresses only this machine reaches."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WriterConfig(_Config):
    """``hidra-ng write`` (SPEC §15): streams as files for legacy tools."""

    section: ClassVar[str] = "writer"
    state_dir_key: ClassVar[str] = "dir"

    api: Annotated[str, D("receiver api endpoint")] = "tcp://localhost:50101"
    streams: Annotated[list[str], D("glob pattern of streams to write; may be repeated")] = (
        msgspec.field(default_factory=lambda: ["**"])
    )
    dir: Annotated[str, D("output directory; files of STREAM go to DIR/STREAM/")] = (
        "/var/lib/hidra-ng-writer"
    )
    format: Annotated[str, D("nxmx (DECTRIS series), hdf5 (SPEC §10 layout) or tiff")] = "nxmx"
    frames_per_file: Annotated[
        int, D("images per data file (nxmx) or frames per file (hdf5)", ge=1, le=1_000_000)
    ] = 1000
    file_idle_seconds: Annotated[
        float,
        D(
            "hdf5: complete a file after this long without frames, s; 0: never",
            ge=0,
            extra=_note("0 (never) or more seconds"),
        ),
    ] = 10.0
    name_pattern: Annotated[str, D("nxmx file prefix; $id is the series id")] = "series_$id"
    instrument_name: Annotated[
        str, D("NXmx /entry/instrument/name; empty: the stream's first segment")
    ] = ""
    source_name: Annotated[str, D("NXmx /entry/source/name; empty: 'unknown'")] = ""
    amqp: Annotated[str, D("AMQP URI for announcements (amqp://user:password@host:5672/vhost)")] = (
        ""
    )
    queue: Annotated[str, D("AMQP queue for announcements")] = ""
    recipes: Annotated[list[str], D("recipes named in each announcement")] = msgspec.field(
        default_factory=lambda: ["hidra-ng-files"]
    )
    metrics_port: Annotated[MetricsPort, D("HTTP /metrics port, 0: off, -1: any free one")] = 9613
    keys_dir: Annotated[str, D("this client's CurveZMQ key pair")] = ""
    server_key_dir: Annotated[str, D("the receiver's public key")] = ""
    # SPEC §14: several receivers (hidra_ng/shards.py); one writer for all of them
    shards: Annotated[
        str, D("shard map file (TOML): write the streams of every receiver; replaces api")
    ] = ""

    def __post_init__(self) -> None:
        c = _Checker(self)
        for key in ("streams", "recipes"):
            value = getattr(self, key)
            if isinstance(value, str):  # from the environment: comma-separated
                setattr(self, key, [v.strip() for v in value.split(",") if v.strip()])
        c.endpoint("api", bind=False)
        c.shards_alone("api")
        c.path("dir")
        c.patterns("streams")
        c.choice("format", ("nxmx", "hdf5", "tiff"))
        c.constraints(("frames_per_file", "file_idle_seconds"))
        if "/" in self.name_pattern or not self.name_pattern.strip():
            c.fail("name_pattern", "a file name prefix without '/', e.g. 'series_$id'")
        if self.amqp and not self.queue:
            c.fail("amqp", "a queue given with it (queue, --queue), or no amqp")
        if self.queue and not self.amqp:
            c.fail("queue", "an amqp broker URI given with it (amqp, --amqp), or no queue")
        if self.amqp and not self.amqp.startswith(("amqp://", "amqps://")):
            c.fail("amqp", "an AMQP URI such as 'amqp://user:password@broker:5672/%2F'")
        c.constraints()


class BridgeConfig(_Config):
    """``hidra-ng bridge`` (SPEC §13): durable frames into RabbitMQ streams."""

    section: ClassVar[str] = "bridge"
    state_dir_key: ClassVar[str] = "state_dir"

    api: Annotated[str, D("receiver api endpoint")] = "tcp://localhost:50101"
    rabbitmq: Annotated[str, D("broker: rabbitmq-stream://user:password@host:5552/vhost")] = (
        "rabbitmq-stream://guest:guest@localhost:5552/%2F"
    )
    streams: Annotated[
        list[str], D("glob of stream names ('*' one segment, '**' any); may be repeated")
    ] = msgspec.field(default_factory=lambda: ["**"])
    payload: Annotated[str, D("full: body = stored payload; record: empty body")] = "full"
    prefix: Annotated[str, D("broker stream names: PREFIX.name")] = "hidra"
    state_dir: Annotated[str, D("directory of the bridge's lock")] = "/var/lib/hidra-ng-bridge"
    metrics_port: Annotated[MetricsPort, D("HTTP /metrics port, 0: off, -1: any free one")] = 9612
    keys_dir: Annotated[str, D("this client's CurveZMQ key pair")] = ""
    server_key_dir: Annotated[str, D("the receiver's public key")] = ""
    poll_seconds: Annotated[
        float, D("how often the receiver's stream list is read, s", gt=0, le=3600)
    ] = 2.0
    max_inflight_bytes: Annotated[
        int, D("payload read but not yet confirmed, all streams", ge=MiB)
    ] = 256 * MiB
    max_inflight_frames: Annotated[
        int, D("frames not yet confirmed, per stream", ge=1, le=1 << 20)
    ] = 65536

    def __post_init__(self) -> None:
        from hidra_ng.bridge.names import check_prefix
        from hidra_ng.bridge.uri import EXAMPLE, problem

        c = _Checker(self)
        c.endpoint("api", bind=False)
        why = problem(self.rabbitmq)
        if why:
            c.fail("rabbitmq", f"a RabbitMQ stream URI such as {EXAMPLE!r}; this one {why}")
        c.patterns("streams")
        c.choice("payload", ("full", "record"))
        try:
            check_prefix(self.prefix)
        except ConfigError:
            c.fail(
                "prefix",
                "1 to 40 letters, digits, '_' and '-' in dot-separated parts, not starting"
                " with 'amq', e.g. 'hidra'",
            )
        c.path("state_dir")
        c.constraints()


_SECTIONS: dict[str, type[_Config]] = {
    "receiver": ReceiverConfig,
    "sender": SenderConfig,
    "view": ViewConfig,
    "writer": WriterConfig,
    "bridge": BridgeConfig,
}


# --------------------------------------------------------------------- public


def load(
    section: str,
    path: str | os.PathLike[str] | None = None,
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Any:
    """The effective config of ``section``: flag > environment > file > default.

    ``flags`` maps setting names to values (None: not given); ``environ``
    defaults to ``os.environ``.
    """
    cls = _SECTIONS[section]
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}  # key -> "file", "env:VAR", "flag", "state"

    state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state_dir and cls.state_dir_key:
        values[cls.state_dir_key] = state_dir
        origins[cls.state_dir_key] = "state"
    if path is not None:
        for key, value in _read_file(Path(path), cls).items():
            values[key], origins[key] = value, "file"
    for key, (var, value) in _from_environ(cls, environ).items():
        values[key], origins[key] = value, f"env:{var}"
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key not in cls.__struct_fields__:
            raise ConfigError(f"{_flag(key)} is not a {section} setting")
        expected = _type_problem(cls, key, value)
        if expected:
            raise ConfigError(f"{_flag(key)} {_show(value)}: expected {expected}")
        values[key], origins[key] = value, "flag"

    try:
        config = msgspec.convert(values, cls)
    except FieldError as err:
        raise ConfigError(_locate(err, origins, path)) from None
    except msgspec.ValidationError as err:  # a Meta constraint, e.g. `$.metrics_port`
        key = str(err).rpartition("$.")[2].rstrip("`").split("[")[0]
        if key not in values:
            raise ConfigError(f"{section} config: {err}") from None
        expected = _constraint_problem(cls, key, values[key]) or str(err)
        raise ConfigError(
            _locate(FieldError(section, key, values[key], expected), origins, path)
        ) from None
    config.origins = origins  # type: ignore[attr-defined]  # every section struct has it
    return config


def check_file(
    path: str | os.PathLike[str], environ: dict[str, str] | None = None
) -> tuple[str, Any]:
    """Validate a config file of either daemon; returns (section, effective config).

    The environment applies as it would for the daemon (``HIDRA_NG_...``).
    """
    raw = _read_toml(Path(path))
    _check_tables(Path(path), raw, expected=tuple(_SECTIONS))
    section = next(iter(raw))
    return section, load(section, path, environ=environ)


def to_toml(section: str, config: _Config) -> str:
    """The effective settings as TOML that ``check-config`` accepts again.

    Settings that do not come from the file are marked with their origin.
    """
    origins: dict[str, str] = getattr(config, "origins", {})
    lines = [f"[{section}]"]
    for name in config.__struct_fields__:
        if name == "sources":
            continue
        if name == "token" and getattr(config, name):  # a secret: said, not shown
            lines.append(f"# token = (set, {_origin_note(name, origins.get(name)) or 'file'})")
            continue
        line = f"{name} = {_toml_value(getattr(config, name))}"
        note = _origin_note(name, origins.get(name))
        lines.append(f"{line}  # {note}" if note else line)
    for uri in getattr(config, "sources", []):
        note = _origin_note("sources", origins.get("sources"))
        lines += ["", f"[[{section}.sources]]" + (f"  # {note}" if note else "")]
        lines.append(f"uri = {_toml_value(uri)}")
    return "\n".join(lines) + "\n"


def env_name(section: str, key: str) -> str:
    """The environment variable of a setting, e.g. ``HIDRA_NG_RECEIVER_DATA_DIR``."""
    return f"{ENV_PREFIX}{section.upper()}_{key.upper()}"


def config_class(section: str) -> type[_Config]:
    """The config struct of ``section`` ("receiver", "sender", "view", "writer", "bridge")."""
    return _SECTIONS[section]


def field_type(section: str, key: str) -> Any:
    """The plain type of a setting: int, float, str or list[str]."""
    return _field_type(_SECTIONS[section], key)


def flag_name(key: str) -> str:
    """The command-line flag of a setting: ``--`` + the key with dashes, or its short form."""
    return _flag(key)


def settings(section: str) -> list[str]:
    """Names of the settings of ``section``, in declaration order."""
    return list(_SECTIONS[section].__struct_fields__)


# ----------------------------------------------------------------- the file


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; expected a TOML file") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory; expected a TOML file") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text: {err.reason}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {_lower_first(err)}") from None


def _check_tables(path: Path, raw: dict[str, Any], expected: tuple[str, ...]) -> None:
    """Exactly one table, and one of ``expected``."""
    wanted = " or ".join(f"[{name}]" for name in expected)
    for name, value in raw.items():
        if not isinstance(value, dict):
            raise ConfigError(
                f"{name} = {_show(value)} in {path} is outside any table; expected it under"
                f" {wanted}"
            )
        if name not in expected:
            hint = _did_you_mean(name, expected)
            raise ConfigError(f"config file {path} has an unknown table [{name}]; expected {hint}")
    if not raw:
        raise ConfigError(f"config file {path} is empty; expected a {wanted} table")
    if len(raw) > 1:
        names = " and ".join(f"[{n}]" for n in raw)
        raise ConfigError(
            f"config file {path} has both {names}; expected one daemon per file, {wanted}"
        )


def _read_file(path: Path, cls: type[_Config]) -> dict[str, Any]:
    section = cls.section
    raw = _read_toml(path)
    _check_tables(path, raw, expected=tuple(_SECTIONS))
    if section not in raw:
        raise ConfigError(
            f"config file {path} has a [{next(iter(raw))}] table; expected [{section}] for the"
            f" {section}"
        )
    table = dict(raw[section])
    for key, value in table.items():
        if key not in cls.__struct_fields__:
            raise ConfigError(
                f"{section}.{key} = {_show(value)} in {path} is not a {section} setting;"
                f" expected {_did_you_mean(key, settings(section))}"
            )
        if key == "sources":
            table[key] = _source_uris(path, value)
            continue
        if key == "allow_ips" and isinstance(value, str):  # files before the list: "a, b"
            table[key] = value = _split_commas(value)
        expected = _type_problem(cls, key, value)
        if expected:
            raise ConfigError(f"{section}.{key} = {_show(value)} in {path}: expected {expected}")
    return table


def _source_uris(path: Path, sources: Any) -> list[str]:
    example = 'expected [[sender.sources]] tables, each with uri = "simulate:?count=100"'
    if not isinstance(sources, list):
        raise ConfigError(f"sender.sources = {_show(sources)} in {path}: {example}")
    uris = []
    for i, item in enumerate(sources):
        if not isinstance(item, dict):
            raise ConfigError(f"sender.sources[{i}] = {_show(item)} in {path}: {example}")
        extra = sorted(set(item) - {"uri"})
        if extra:
            raise ConfigError(
                f"sender.sources[{i}].{extra[0]} = {_show(item[extra[0]])} in {path} is not a"
                " source setting; expected only uri, with the source's options in its query"
                ' string, e.g. uri = "simulate:?count=100&stream=sim"'
            )
        if not isinstance(item.get("uri"), str):
            raise ConfigError(
                f"sender.sources[{i}].uri = {_show(item.get('uri'))} in {path}: expected a"
                ' source URI string such as "simulate:?count=100"'
            )
        uris.append(item["uri"])
    return uris


# ---------------------------------------------------------- the environment


def _from_environ(cls: type[_Config], environ: dict[str, str]) -> dict[str, tuple[str, Any]]:
    """``HIDRA_NG_<SECTION>_<KEY>`` values of ``cls``, parsed to the key's type.

    The other daemon's variables are skipped (one environment may serve both);
    any other ``HIDRA_NG_`` name is a mistake.
    """
    section = cls.section
    own = f"{ENV_PREFIX}{section.upper()}_"
    prefixes = tuple(f"{ENV_PREFIX}{name.upper()}_" for name in _SECTIONS)
    names = [env_name(section, k) for k in cls.__struct_fields__ if k != "sources"]
    values: dict[str, tuple[str, Any]] = {}
    for var, text in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX):
            continue
        if not var.startswith(prefixes):
            raise ConfigError(
                f"environment variable {var} is not a hidra-ng setting; expected"
                f" {ENV_PREFIX}RECEIVER_<SETTING>, {ENV_PREFIX}SENDER_<SETTING> or"
                f" {ENV_PREFIX}WRITER_<SETTING>"
            )
        if not var.startswith(own):
            continue
        key = var[len(own) :].lower()
        if key == "sources":
            raise ConfigError(
                f"environment variable {var} cannot set sources; use --source or"
                " [[sender.sources]] in the config file"
            )
        if key not in cls.__struct_fields__:
            raise ConfigError(
                f"environment variable {var} is not a {section} setting; expected"
                f" {_did_you_mean(var, names)}"
            )
        values[key] = (var, _parse_env(cls, key, var, text))
    return values


def _parse_env(cls: type[_Config], key: str, var: str, text: str) -> Any:
    kind = _field_type(cls, key)
    try:
        if kind is int:
            return int(text.strip())
        if kind is float:
            value = float(text.strip())
            if math.isnan(value):
                raise ValueError(text)
            return value
        if kind is not str:  # a list: the bridge's stream patterns, comma-separated
            return [item.strip() for item in text.split(",") if item.strip()]
    except ValueError:
        raise ConfigError(
            f"environment variable {var}={text!r}: expected {_describe_type(key, kind)}"
        ) from None
    return text


# ------------------------------------------------------------------- checks


def _field_type(cls: type[_Config], key: str) -> Any:
    """The field's type without its ``Annotated`` metadata (int, float, str, list[str])."""
    kind = _field(cls, key).type
    return typing.get_args(kind)[0] if typing.get_origin(kind) is Annotated else kind


def _field(cls: type[_Config], key: str) -> msgspec.structs.FieldInfo:
    for field in msgspec.structs.fields(cls):
        if field.name == key:
            return field
    raise KeyError(key)


def _metas(cls: type[_Config], key: str) -> list[Meta]:
    kind = _field(cls, key).type
    if typing.get_origin(kind) is not Annotated:
        return []
    return [m for m in kind.__metadata__ if isinstance(m, Meta)]


def description(section: str, key: str) -> str:
    """The setting's description: the one text of its --help."""
    return " ".join(m.description for m in _metas(_SECTIONS[section], key) if m.description)


def _constraint_problem(cls: type[_Config], key: str, value: float) -> str:
    """What the field's ``Meta`` constraints expect if ``value`` breaks them, else ''."""
    metas = _metas(cls, key)
    ge = next((m.ge for m in metas if m.ge is not None), None)
    le = next((m.le for m in metas if m.le is not None), None)
    gt = next((m.gt for m in metas if m.gt is not None), None)
    note = next((m.extra["expected"] for m in metas if m.extra and "expected" in m.extra), "")
    unit = " bytes" if key.endswith("_bytes") else " seconds" if key.endswith("_seconds") else ""
    if not math.isfinite(value):
        return f"a finite number{unit and ' of' + unit}"
    if gt is not None and not value > gt:
        return note or f"more than {gt}{unit}"
    if ge is not None and le is not None and not ge <= value <= le:
        return note or f"{ge} to {le}{unit}{_mib(le)}"
    if ge is not None and value < ge:
        return note or f"{ge}{unit}{_mib(ge)} or more"
    if le is not None and value > le:
        return note or f"at most {le}{unit}{_mib(le)}"
    return ""


def _split_commas(value: list[str] | str) -> list[str]:
    """``allow_ips`` as a list: a comma-separated string (environment, older files) or
    list items that hold commas are split."""
    items = value.split(",") if isinstance(value, str) else value
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def _type_problem(cls: type[_Config], key: str, value: Any) -> str:
    """What the key's type expects if ``value`` does not fit it, else ''."""
    kind = _field_type(cls, key)
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str)
    else:  # list[str]: the sources
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    return "" if ok else _describe_type(key, kind)


def _describe_type(key: str, kind: Any) -> str:
    if kind is int:
        if key.endswith("_port"):
            return "a port number (an integer)"
        return "an integer number of bytes" if key.endswith("_bytes") else "an integer"
    if kind is float:
        return "a number of seconds" if key.endswith("_seconds") else "a number"
    if kind is str:
        return "a directory path (a string)" if key.endswith("_dir") else "a string"
    return {"sources": "a list of source URIs", "streams": "a list of glob patterns"}.get(
        key, "a list of strings"
    )


class _Checker:
    """Range and format checks of one config, raising :class:`FieldError`."""

    def __init__(self, config: _Config) -> None:
        self.config = config
        self.section = config.section

    def fail(self, key: str, expected: str) -> None:
        raise FieldError(self.section, key, getattr(self.config, key), expected)

    def constraints(self, keys: tuple[str, ...] | None = None) -> None:
        """The ``Meta`` constraints of the fields (all, or ``keys``), as ``msgspec.convert``
        checks them in :func:`load`; here too, so a config built in code is checked alike."""
        for key in keys or self.config.__struct_fields__:
            value = getattr(self.config, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                expected = _constraint_problem(type(self.config), key, value)
                if expected:
                    self.fail(key, expected)

    def patterns(self, key: str) -> None:
        """One or more glob patterns of stream names (SPEC §13's rule)."""
        from hidra_ng.patterns import compile_pattern

        patterns = getattr(self.config, key)
        if not patterns:
            self.fail(key, "one or more glob patterns such as 'p11/*' or '**'")
        for pattern in patterns:
            try:
                compile_pattern(pattern)
            except InvalidInput:
                raise FieldError(
                    self.section,
                    key,
                    pattern,
                    "a glob of stream names: segments of letters, digits, '.', '_', '-',"
                    " '*' (within a segment) and '**' (across segments) joined by '/'",
                ) from None

    def choice(self, key: str, choices: tuple[str, ...]) -> None:
        if getattr(self.config, key) not in choices:
            listed = ", ".join(repr(c) for c in choices[:-1]) + f" or {choices[-1]!r}"
            self.fail(key, f"one of {listed}")

    def path(self, key: str) -> None:
        if not getattr(self.config, key).strip():
            self.fail(key, "a directory path")

    def endpoint(self, key: str, *, bind: bool) -> None:
        value: str = getattr(self.config, key)
        problem = _endpoint_problem(value, bind)
        if problem:
            example = "'tcp://*:50100'" if bind else "'tcp://dc-receiver:50100'"
            self.fail(key, f"a ZeroMQ endpoint such as {example} ({problem})")

    def shards_alone(self, *keys: str) -> None:
        """With a shard map (``shards``), none of the single-receiver ``keys`` (endpoints)
        changed from its default: the map names every receiver's endpoints."""
        if not getattr(self.config, "shards", ""):
            return
        defaults = {f.name: f for f in msgspec.structs.fields(self.config)}
        for key in keys:
            if getattr(self.config, key) != defaults[key].default:
                self.fail(
                    "shards",
                    f"no {key} (--{key}) beside it: the shard map names every receiver's"
                    f" endpoints, so give either shards (--shards) or {key} (--{key})",
                )

    def distinct_endpoints(self, *keys: str) -> None:
        seen: dict[str, str] = {}
        for key in keys:
            value = getattr(self.config, key)
            if value.endswith(":*"):
                continue  # a random port each
            if value in seen:
                other = seen[value]
                raise FieldError(
                    self.section,
                    key,
                    value,
                    f"an endpoint other than that of {self.section}.{other}",
                    clashes_with=other,
                )
            seen[value] = key


def _endpoint_problem(value: str, bind: bool) -> str:
    """Why ``value`` is no usable ZeroMQ endpoint, or ''."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc"):
        return "tcp://, ipc:// or inproc://"
    if not rest or any(ch.isspace() for ch in rest):
        return "an address without spaces after " + scheme + "://"
    if scheme != "tcp":
        return ""
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        return "host:port"
    if host.startswith("[") != host.endswith("]"):
        return "an IPv6 address in brackets, e.g. [::1]"
    if port == "*":
        return "" if bind else "a port number, not *"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return "port from 1 to 65535" + (" or *" if bind else "")
    if not bind and host == "*":
        return "a host name or address to connect to, not *"
    return ""


# ---------------------------------------------------------------- messages


def _locate(err: FieldError, origins: dict[str, str], path: Any) -> str:
    """``err`` prefixed with where its value came from."""
    origin = origins.get(err.key.split("[")[0], "")
    if not origin and origins.get(err.clashes_with):
        # blame the value the user set, not the default it collides with
        other = err.clashes_with
        expected = f"an endpoint other than that of {err.section}.{err.key} (the default)"
        err = FieldError(err.section, other, err.value, expected)
        origin = origins[other]
    if origin == "file":
        return f"{err.section}.{err.key} = {_show(err.value)} in {path}: expected {err.expected}"
    if origin.startswith("env:"):
        text = ", ".join(err.value) if isinstance(err.value, list) else str(err.value)
        return f"environment variable {origin[4:]}={text!r}: expected {err.expected}"
    if origin == "flag":
        return f"{_flag(err.key)} {_show(err.value)}: expected {err.expected}"
    if origin == "state":
        return f"STATE_DIRECTORY={err.value!r} (from systemd): expected {err.expected}"
    return f"{err.section}.{err.key} = {_show(err.value)} (the default): expected {err.expected}"


def _flag(key: str) -> str:
    return _FLAG_NAMES.get(key, "--" + key.replace("_", "-"))


def _origin_note(key: str, origin: str | None) -> str:
    if origin is None:
        return "default"
    if origin.startswith("env:"):
        return f"from environment {origin[4:]}"
    if origin == "flag":
        return f"from {_flag(key)}"
    if origin == "state":
        return "from systemd STATE_DIRECTORY"
    return ""


def _did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    listed = ", ".join(choices)
    if close:
        return f"one of {listed} (did you mean {close[0]}?)"
    return f"one of {listed}"


def _mib(value: float) -> str:
    return f" ({value / MiB:g} MiB)" if value >= MiB and value % MiB == 0 else ""


def _show(value: Any) -> str:
    """A value as the user wrote it (TOML-ish)."""
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return _toml_value(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, list):  # stream patterns, recipes
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _lower_first(err: object) -> str:
    text = str(err)
    return text[:1].lower() + text[1:]

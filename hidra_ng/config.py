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
    port number from 0 (off) to 65535
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
from pathlib import Path
from typing import Any, ClassVar

import msgspec

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


class _Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, dict=True):
    """Base of the daemons' configs; ``origins`` tells where each value came from."""

    section: ClassVar[str]
    state_dir_key: ClassVar[str]  # the setting whose default is systemd's StateDirectory


class ReceiverConfig(_Config):
    section: ClassVar[str] = "receiver"
    state_dir_key: ClassVar[str] = "data_dir"

    data_dir: str = "/var/lib/hidra-ng"
    ingest: str = "tcp://*:50100"
    api: str = "tcp://*:50101"
    publish: str = "tcp://*:50102"
    metrics_port: int = 9610
    ack_timeout_seconds: float = 30.0
    max_store_bytes: int = 0  # 0: no size limit
    max_age_seconds: float = 0.0  # 0: no age limit
    max_message_bytes: int = MAX_DATA_BYTES
    max_meta_bytes: int = MAX_META_BYTES
    commit_max_messages: int = 10_000
    commit_max_bytes: int = 128 * MiB
    publish_hwm: int = 8
    initial_map_bytes: int = 1 * GiB
    keys_dir: str = ""
    authorized_keys_dir: str = ""
    allow_ips: str = ""  # comma-separated addresses or networks; "" allows every address

    def __post_init__(self) -> None:
        c = _Checker(self)
        c.path("data_dir")
        for item in self.allow_ips.split(","):
            if item.strip():
                try:
                    ipaddress.ip_network(item.strip(), strict=False)
                except ValueError:
                    c.fail("allow_ips", "comma-separated IP addresses or networks like 10.0.0.0/8")
        for name in ("ingest", "api", "publish"):
            c.endpoint(name, bind=True)
        c.distinct_endpoints("ingest", "api", "publish")
        c.port("metrics_port")
        c.number("ack_timeout_seconds", above=0, high=7 * 24 * 3600)  # as groups allow
        c.number("max_store_bytes", low=0, note="0 (no limit) or more bytes")
        c.number("max_age_seconds", low=0, note="0 (no limit) or more seconds")
        c.number("max_message_bytes", low=1, high=MAX_DATA_BYTES)
        c.number("max_meta_bytes", low=2, high=MAX_META_BYTES)
        c.number("commit_max_messages", low=1)
        c.number("commit_max_bytes", low=1)
        c.number("publish_hwm", low=1)
        c.number("initial_map_bytes", low=MIN_MAP_BYTES)


class SenderConfig(_Config):
    section: ClassVar[str] = "sender"
    state_dir_key: ClassVar[str] = "spool_dir"

    ingest: str = "tcp://localhost:50100"
    api: str = "tcp://localhost:50101"
    spool_dir: str = "/var/spool/hidra-ng"
    sender_id: str = ""  # default: the host name
    spool_sync: str = "always"
    spool_batch_seconds: float = 0.5
    max_spool_bytes: int = 16 * GiB
    send_timeout_seconds: float = 30.0
    compression: str = "none"
    metrics_port: int = 9611
    keys_dir: str = ""
    server_key_dir: str = ""
    sources: list[str] = msgspec.field(default_factory=list)

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
        c.number("spool_batch_seconds", above=0)
        c.number("max_spool_bytes", low=1)
        c.number("send_timeout_seconds", above=0)
        c.choice("compression", ("none", "lz4", "zstd"))
        c.port("metrics_port")
        for i, uri in enumerate(self.sources):
            if not isinstance(uri, str) or ":" not in uri:
                raise FieldError(
                    self.section, f"sources[{i}]", uri, "a source URI such as 'simulate:?count=100'"
                )


class ViewConfig(_Config):
    """``hidra-ng view`` (SPEC §16): the live view in a browser; env ``HIDRA_NG_VIEW_*``."""

    section: ClassVar[str] = "view"
    state_dir_key: ClassVar[str] = ""  # the view keeps no state

    api: str = "tcp://localhost:50101"  # the receiver's api, for streams and stored frames
    publish: str = "tcp://localhost:50102"  # the receiver's publish socket, for live frames
    port: int = 8080  # HTTP port; 0 picks a free one (printed at start)
    bind: str = "127.0.0.1"  # address to listen on; beyond loopback a token is required
    token: str = ""  # access token for the page and the API (required beyond loopback)
    keys_dir: str = ""  # this client's CurveZMQ key pair, when the receiver uses keys
    server_key_dir: str = ""  # the receiver's public key
    wait_seconds: float = 2.0  # how long a request for a future index waits before 404
    request_timeout_seconds: float = 2.0  # a receiver silent this long is reported down (503)
    max_pixels: int = 8_388_608  # larger frames reach the browser binned (true values on hover)

    def __post_init__(self) -> None:
        c = _Checker(self)
        c.endpoint("api", bind=False)
        c.endpoint("publish", bind=False)
        c.port("port")
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
        c.number("wait_seconds", low=0, high=10)
        c.number("request_timeout_seconds", above=0)
        c.number("max_pixels", low=65_536)


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

    api: str = "tcp://localhost:50101"  # the receiver's api endpoint
    streams: list[str] = msgspec.field(default_factory=lambda: ["**"])  # glob patterns
    dir: str = "/var/lib/hidra-ng-writer"  # output root; files of STREAM go to DIR/STREAM/
    format: str = "nxmx"  # "nxmx" (DECTRIS series), "hdf5" (§10 layout) or "tiff"
    frames_per_file: int = 1000  # images per data file (nxmx) or frames per file (hdf5)
    file_idle_seconds: float = 10.0  # hdf5: complete a file after this long without frames
    name_pattern: str = "series_$id"  # nxmx file prefix; $id is the series id
    instrument_name: str = ""  # NXmx /entry/instrument/name; "" = the stream's first segment
    source_name: str = ""  # NXmx /entry/source/name; "" = "unknown"
    amqp: str = ""  # amqp://user:password@host:5672/vhost; "" = no announcements
    queue: str = ""  # the queue announcements go to
    recipes: list[str] = msgspec.field(default_factory=lambda: ["hidra-ng-files"])
    metrics_port: int = 9613
    keys_dir: str = ""
    server_key_dir: str = ""

    def __post_init__(self) -> None:
        c = _Checker(self)
        for key in ("streams", "recipes"):
            value = getattr(self, key)
            if isinstance(value, str):  # from the environment: comma-separated
                setattr(self, key, [v.strip() for v in value.split(",") if v.strip()])
        c.endpoint("api", bind=False)
        c.path("dir")
        c.patterns("streams")
        c.choice("format", ("nxmx", "hdf5", "tiff"))
        c.number("frames_per_file", low=1, high=1_000_000)
        c.number("file_idle_seconds", low=0, note="0 (never) or more seconds")
        if "/" in self.name_pattern or not self.name_pattern.strip():
            c.fail("name_pattern", "a file name prefix without '/', e.g. 'series_$id'")
        if self.amqp and not self.queue:
            c.fail("amqp", "a queue given with it (queue, --queue), or no amqp")
        if self.queue and not self.amqp:
            c.fail("queue", "an amqp broker URI given with it (amqp, --amqp), or no queue")
        if self.amqp and not self.amqp.startswith(("amqp://", "amqps://")):
            c.fail("amqp", "an AMQP URI such as 'amqp://user:password@broker:5672/%2F'")
        c.port("metrics_port")


class BridgeConfig(_Config):
    """``hidra-ng bridge`` (SPEC §13): durable frames into RabbitMQ streams."""

    section: ClassVar[str] = "bridge"
    state_dir_key: ClassVar[str] = "state_dir"

    api: str = "tcp://localhost:50101"  # the receiver's api endpoint
    rabbitmq: str = "rabbitmq-stream://guest:guest@localhost:5552/%2F"
    streams: list[str] = msgspec.field(default_factory=lambda: ["**"])  # glob patterns
    payload: str = "full"  # "full": body = stored payload; "record": empty body
    prefix: str = "hidra"  # broker stream = prefix + "." + the coded hidra name
    state_dir: str = "/var/lib/hidra-ng-bridge"  # the lock file lives here
    metrics_port: int = 9612
    keys_dir: str = ""
    server_key_dir: str = ""
    poll_seconds: float = 2.0  # how often the receiver's stream list is read
    max_inflight_bytes: int = 256 * MiB  # payload read but not yet confirmed, all streams
    max_inflight_frames: int = 4096  # per stream

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
        c.port("metrics_port")
        c.number("poll_seconds", above=0, high=3600)
        c.number("max_inflight_bytes", low=MiB)
        c.number("max_inflight_frames", low=1, high=1 << 20)


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
        config = cls(**values)
    except FieldError as err:
        raise ConfigError(_locate(err, origins, path)) from None
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
    for field in msgspec.structs.fields(cls):
        if field.name == key:
            return field.type
    raise KeyError(key)


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

    def number(
        self,
        key: str,
        *,
        low: float | None = None,
        high: float | None = None,
        above: float | None = None,
        note: str = "",
    ) -> None:
        value = getattr(self.config, key)
        unit = (
            " bytes" if key.endswith("_bytes") else " seconds" if key.endswith("_seconds") else ""
        )
        if not math.isfinite(value):
            self.fail(key, f"a finite number{unit and ' of' + unit}")
        if above is not None and not value > above:
            self.fail(key, note or f"more than {above}{unit}")
        if low is not None and high is not None and not low <= value <= high:
            self.fail(key, note or f"{low} to {high}{unit}{_mib(high)}")
        if low is not None and high is None and value < low:
            self.fail(key, note or f"{low}{unit}{_mib(low)} or more")

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

    def port(self, key: str) -> None:
        value = getattr(self.config, key)
        if not 0 <= value <= 65535:
            self.fail(key, "a port number from 0 (off) to 65535")

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
        return f"environment variable {origin[4:]}={str(err.value)!r}: expected {err.expected}"
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

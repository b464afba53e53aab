"""Typed configuration of the daemons: loading, precedence and validation (SPEC §7).

One TOML file per daemon: ``[receiver]`` or ``[sender]`` (with
``[[sender.sources]]``). Precedence: command-line flag > environment
(``HIDRA_NG_RECEIVER_DATA_DIR``, ``HIDRA_NG_SENDER_SPOOL_DIR``, ...) > file >
default. Everything is validated before a socket opens or a store is touched;
an unknown key or a wrong type is a :class:`ConfigError` naming the key, the
value and what was expected.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from hidra_ng.errors import ConfigError
from hidra_ng.protocol import MAX_DATA_BYTES, MAX_META_BYTES, check_sender_id

MiB = 1 << 20
GiB = 1 << 30

_ENDPOINT = re.compile(r"(tcp://[^\s:]+:(\d+|\*)|ipc://\S+|inproc://\S+)")


class ReceiverConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
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

    def __post_init__(self) -> None:
        for name in ("ingest", "api", "publish"):
            _check_endpoint(f"receiver.{name}", getattr(self, name))
        _check_port("receiver.metrics_port", self.metrics_port)
        _check_positive("receiver.ack_timeout_seconds", self.ack_timeout_seconds)
        _check_not_negative("receiver.max_store_bytes", self.max_store_bytes)
        _check_not_negative("receiver.max_age_seconds", self.max_age_seconds)
        _check_range("receiver.max_message_bytes", self.max_message_bytes, 1, MAX_DATA_BYTES)
        _check_range("receiver.max_meta_bytes", self.max_meta_bytes, 2, MAX_META_BYTES)
        _check_positive("receiver.commit_max_messages", self.commit_max_messages)
        _check_positive("receiver.commit_max_bytes", self.commit_max_bytes)
        _check_positive("receiver.publish_hwm", self.publish_hwm)
        _check_positive("receiver.initial_map_bytes", self.initial_map_bytes)
        if not self.data_dir:
            raise ConfigError("receiver.data_dir is empty; expected a directory path")


class SenderConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
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
        try:
            check_sender_id(self.sender_id)
        except Exception as err:
            raise ConfigError(f"sender.sender_id: {err}") from None
        for name in ("ingest", "api"):
            _check_endpoint(f"sender.{name}", getattr(self, name))
        _check_port("sender.metrics_port", self.metrics_port)
        if self.spool_sync not in ("always", "batch"):
            raise ConfigError(
                f"sender.spool_sync = {self.spool_sync!r}; expected 'always' or 'batch'"
            )
        if self.compression not in ("none", "lz4", "zstd"):
            raise ConfigError(
                f"sender.compression = {self.compression!r}; expected 'none', 'lz4' or 'zstd'"
            )
        _check_positive("sender.spool_batch_seconds", self.spool_batch_seconds)
        _check_positive("sender.max_spool_bytes", self.max_spool_bytes)
        _check_positive("sender.send_timeout_seconds", self.send_timeout_seconds)
        if not self.spool_dir:
            raise ConfigError("sender.spool_dir is empty; expected a directory path")


_SECTIONS: dict[str, type[msgspec.Struct]] = {
    "receiver": ReceiverConfig,
    "sender": SenderConfig,
}


def load(
    section: str,
    path: str | os.PathLike[str] | None = None,
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Any:
    """Build the effective config of ``section`` from file, environment and flags."""
    cls = _SECTIONS[section]
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(Path(path), section))
    env_values = _from_environ(section, cls, os.environ if environ is None else environ)
    values.update(env_values)
    values.update({k: v for k, v in (flags or {}).items() if v is not None})
    return _convert(section, cls, values, strict_keys=set(env_values))


def check_file(path: str | os.PathLike[str]) -> tuple[str, Any]:
    """Validate a config file of either daemon; returns (section, effective config)."""
    raw = _read_toml(Path(path))
    sections = [name for name in raw if name in _SECTIONS]
    unknown = [name for name in raw if name not in _SECTIONS]
    if unknown:
        raise ConfigError(f"{path}: unknown table [{unknown[0]}]; expected [receiver] or [sender]")
    if len(sections) != 1:
        raise ConfigError(f"{path}: expected exactly one of [receiver] or [sender]")
    return sections[0], load(sections[0], path, environ={})


def to_toml(section: str, config: msgspec.Struct) -> str:
    """The effective settings as TOML, for ``check-config``."""
    lines = [f"[{section}]"]
    sources: list[str] = []
    for name in config.__struct_fields__:
        value = getattr(config, name)
        if name == "sources":
            sources = value
            continue
        lines.append(f"{name} = {_toml_value(value)}")
    for uri in sources:
        lines += ["", f"[[{section}.sources]]", f"uri = {_toml_value(uri)}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- internals


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None


def _read_file(path: Path, section: str) -> dict[str, Any]:
    raw = _read_toml(path)
    if section not in raw:
        raise ConfigError(f"config file {path} has no [{section}] table")
    other = [name for name in raw if name != section]
    if other:
        raise ConfigError(f"config file {path}: unexpected table [{other[0]}] beside [{section}]")
    table = dict(raw[section])
    if section == "sender" and "sources" in table:
        table["sources"] = _source_uris(path, table["sources"])
    return table


def _source_uris(path: Path, sources: Any) -> list[str]:
    if not isinstance(sources, list):
        raise ConfigError(f"{path}: sender.sources must be [[sender.sources]] tables")
    uris = []
    for i, item in enumerate(sources):
        if not isinstance(item, dict) or set(item) != {"uri"} or not isinstance(item["uri"], str):
            raise ConfigError(
                f"{path}: sender.sources[{i}] = {item!r}; expected a table with one"
                " string key 'uri', e.g. uri = \"simulate:?count=100\""
            )
        uris.append(item["uri"])
    return uris


def _from_environ(section: str, cls: type, environ: dict[str, str]) -> dict[str, Any]:
    prefix = f"HIDRA_NG_{section.upper()}_"
    fields = {name.upper(): name for name in cls.__struct_fields__ if name != "sources"}
    values: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(prefix):
            continue
        name = fields.get(key[len(prefix) :])
        if name is None:
            raise ConfigError(
                f"environment variable {key} names no {section} setting; expected one of "
                + ", ".join(prefix + f for f in sorted(fields))
            )
        values[name] = value
    return values


def _convert(section: str, cls: type, values: dict[str, Any], strict_keys: set[str]) -> Any:
    try:
        # Environment values are strings: let msgspec parse "5" as 5 for them only.
        lax = {k: v for k, v in values.items() if k in strict_keys}
        if lax:
            lax_cls = msgspec.defstruct(
                "Env", [(k, cls.__annotations__[k]) for k in lax], forbid_unknown_fields=True
            )
            parsed = msgspec.convert(lax, lax_cls, strict=False)
            values = {**values, **msgspec.structs.asdict(parsed)}
        return msgspec.convert(values, cls)
    except msgspec.ValidationError as err:
        raise ConfigError(_explain(section, values, str(err))) from None
    except ConfigError:
        raise


def _explain(section: str, values: dict[str, Any], message: str) -> str:
    """Turn msgspec's message into one naming the key, the value and the expectation."""
    match = re.match(r"(.*?) - at `\$\.(\w+)(.*)`", message)
    if match:
        what, key, rest = match.groups()
        shown = values.get(key, "?")
        what = what.replace("`", "")
        return f"{section}.{key}{rest} = {shown!r}: {what[0].lower()}{what[1:]}"
    match = re.match(r"Object contains unknown field `(\w+)`", message)
    if match:
        key = match.group(1)
        return f"{section}.{key} = {values.get(key)!r}: unknown setting"
    return f"[{section}]: {message}"


def _check_endpoint(key: str, value: str) -> None:
    if not _ENDPOINT.fullmatch(value):
        raise ConfigError(
            f"{key} = {value!r}: expected a ZeroMQ endpoint such as 'tcp://*:50100' or"
            " 'tcp://host:50100'"
        )


def _check_port(key: str, value: int) -> None:
    _check_range(key, value, 0, 65535)


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key} = {value!r}: expected a value from {low} to {high}")


def _check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{key} = {value!r}: expected a number greater than 0")


def _check_not_negative(key: str, value: float) -> None:
    if value < 0:
        raise ConfigError(f"{key} = {value!r}: expected 0 (no limit) or more")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

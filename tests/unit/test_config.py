"""Config loading (SPEC §7): the examples, precedence, and one clear sentence per mistake."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hidra_ng import config as cfg
from hidra_ng.config import ReceiverConfig, SenderConfig
from hidra_ng.errors import ConfigError

EXAMPLES = Path(__file__).parents[2] / "config"


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(func, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, "an error is one line"
    return message


# ------------------------------------------------------------------ examples


@pytest.mark.parametrize("name", ["receiver", "sender"])
def test_example_is_valid_and_names_every_setting(name: str) -> None:
    path = EXAMPLES / f"{name}.toml"
    section, config = cfg.check_file(path, environ={})
    assert section == name
    written = tomllib.loads(path.read_text())[name]
    assert sorted(written) == sorted(cfg.settings(name)), "every setting"
    assert config.origins == dict.fromkeys(written, "file")


def test_receiver_example_shows_the_defaults() -> None:
    _, config = cfg.check_file(EXAMPLES / "receiver.toml", environ={})
    assert config == ReceiverConfig()


def test_sender_example_sources_are_uris() -> None:
    _, config = cfg.check_file(EXAMPLES / "sender.toml", environ={})
    assert config.sources == [
        "simulate:?shape=2048x1024&dtype=uint16&rate=100&count=1000&stream=sim"
    ]
    assert config.sender_id == "eiger-p11"


@pytest.mark.parametrize("name", ["receiver", "sender"])
def test_effective_settings_round_trip(tmp_path: Path, name: str) -> None:
    section, config = cfg.check_file(
        EXAMPLES / f"{name}.toml", environ={cfg.env_name(name, "metrics_port"): "1234"}
    )
    text = cfg.to_toml(section, config)
    assert "metrics_port = 1234  # from environment HIDRA_NG_" in text
    again = cfg.load(section, write(tmp_path, text), environ={})
    assert again == config


# ---------------------------------------------------------------- precedence


def test_defaults_without_file_or_environment() -> None:
    config = cfg.load("receiver", environ={})
    assert config == ReceiverConfig()
    assert (config.ingest, config.api, config.publish) == (
        "tcp://*:50100",
        "tcp://*:50101",
        "tcp://*:50102",
    )
    assert (config.metrics_port, config.ack_timeout_seconds) == (9610, 30.0)
    assert config.max_message_bytes == 256 << 20 and config.max_meta_bytes == 64 << 10
    assert cfg.load("sender", environ={}).metrics_port == 9611


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path) -> None:
    path = write(tmp_path, '[receiver]\nmetrics_port = 1001\napi = "tcp://*:1002"\n')
    env = {"HIDRA_NG_RECEIVER_METRICS_PORT": "2001", "HIDRA_NG_RECEIVER_PUBLISH": "tcp://*:2002"}
    config = cfg.load("receiver", path, {"metrics_port": 3001, "ingest": None}, env)
    assert config.metrics_port == 3001  # flag over environment and file
    assert config.publish == "tcp://*:2002"  # environment over default
    assert config.api == "tcp://*:1002"  # file over default
    assert config.ingest == "tcp://*:50100"  # a flag given as None is not given
    assert config.origins == {
        "metrics_port": "flag",
        "publish": "env:HIDRA_NG_RECEIVER_PUBLISH",
        "api": "file",
    }
    assert cfg.load("receiver", path, environ=env).metrics_port == 2001
    assert cfg.load("receiver", path, environ={}).metrics_port == 1001


def test_environment_values_are_parsed_to_the_setting_type() -> None:
    env = {
        "HIDRA_NG_RECEIVER_ACK_TIMEOUT_SECONDS": "2.5",
        "HIDRA_NG_RECEIVER_MAX_STORE_BYTES": " 1000 ",
        "HIDRA_NG_RECEIVER_DATA_DIR": "/data/x",
        "HIDRA_NG_SENDER_SPOOL_DIR": "/ignored/by/the/receiver",
        "UNRELATED": "1",
    }
    config = cfg.load("receiver", environ=env)
    assert (config.ack_timeout_seconds, config.max_store_bytes, config.data_dir) == (
        2.5,
        1000,
        "/data/x",
    )


def test_state_directory_is_the_default_below_the_file(tmp_path: Path) -> None:
    env = {"STATE_DIRECTORY": "/var/lib/hidra-ng-sender/eiger:/var/lib/other"}
    assert cfg.load("sender", environ=env).spool_dir == "/var/lib/hidra-ng-sender/eiger"
    assert cfg.load("receiver", environ=env).data_dir == "/var/lib/hidra-ng-sender/eiger"
    path = write(tmp_path, '[sender]\nspool_dir = "/spool"\n')
    assert cfg.load("sender", path, environ=env).spool_dir == "/spool"


def test_sources_from_flags_replace_those_of_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[sender]\n[[sender.sources]]\nuri = "simulate:?count=1"\n')
    assert cfg.load("sender", path, environ={}).sources == ["simulate:?count=1"]
    config = cfg.load("sender", path, {"sources": ["simulate:?count=2"]}, environ={})
    assert config.sources == ["simulate:?count=2"]


def test_sender_id_defaults_to_a_valid_host_name() -> None:
    config = cfg.load("sender", environ={})
    assert config.sender_id
    SenderConfig(sender_id=config.sender_id)  # valid


# ------------------------------------------------------------ file mistakes


BAD_FILES = [
    # (what, file text, fragments the message must contain)
    (
        "unknown key",
        "[receiver]\nmetrics_prot = 9610\n",
        ["receiver.metrics_prot = 9610", "not a receiver setting", "did you mean metrics_port"],
    ),
    (
        "wrong type",
        '[receiver]\nmetrics_port = "9610"\n',
        ['receiver.metrics_port = "9610"', "expected a port number (an integer)"],
    ),
    (
        "float for an integer",
        "[receiver]\nmax_store_bytes = 1.5e9\n",
        ["receiver.max_store_bytes = 1500000000.0", "expected an integer number of bytes"],
    ),
    (
        "bool for an integer",
        "[receiver]\npublish_hwm = true\n",
        ["receiver.publish_hwm = true", "expected an integer"],
    ),
    (
        "string for seconds",
        '[receiver]\nack_timeout_seconds = "30s"\n',
        ['receiver.ack_timeout_seconds = "30s"', "expected a number of seconds"],
    ),
    (
        "out of range port",
        "[receiver]\nmetrics_port = 70000\n",
        ["receiver.metrics_port = 70000", "expected a port number from 0 (off) to 65535"],
    ),
    (
        "zero timeout",
        "[receiver]\nack_timeout_seconds = 0\n",
        ["receiver.ack_timeout_seconds = 0", "expected more than 0 seconds"],
    ),
    (
        "negative retention",
        "[receiver]\nmax_age_seconds = -1.0\n",
        ["receiver.max_age_seconds = -1.0", "expected 0 (no limit) or more seconds"],
    ),
    (
        "infinite timeout",
        "[receiver]\nack_timeout_seconds = inf\n",
        ["receiver.ack_timeout_seconds = inf", "expected a finite number of seconds"],
    ),
    (
        "message limit above the protocol's",
        "[receiver]\nmax_message_bytes = 268435457\n",
        ["receiver.max_message_bytes = 268435457", "expected 1 to 268435456 bytes (256 MiB)"],
    ),
    (
        "bad port in endpoint",
        '[receiver]\ningest = "tcp://*:99999"\n',
        ['receiver.ingest = "tcp://*:99999"', "ZeroMQ endpoint", "port from 1 to 65535 or *"],
    ),
    (
        "bad scheme",
        '[receiver]\napi = "http://host:50101"\n',
        ['receiver.api = "http://host:50101"', "tcp://, ipc:// or inproc://"],
    ),
    (
        "endpoint without port",
        '[receiver]\npublish = "tcp://*"\n',
        ['receiver.publish = "tcp://*"', "host:port"],
    ),
    (
        "same endpoint twice",
        '[receiver]\ningest = "tcp://*:50101"\n',
        [
            'receiver.ingest = "tcp://*:50101" in',
            "other than that of receiver.api (the default)",
        ],
    ),
    (
        "wildcard host to connect to",
        '[sender]\ningest = "tcp://*:50100"\n',
        ['sender.ingest = "tcp://*:50100"', "a host name or address to connect to"],
    ),
    (
        "wildcard port to connect to",
        '[sender]\napi = "tcp://dc:*"\n',
        ['sender.api = "tcp://dc:*"', "a port number, not *"],
    ),
    (
        "bad choice",
        '[sender]\ncompression = "gzip"\n',
        ['sender.compression = "gzip"', "expected one of 'none', 'lz4' or 'zstd'"],
    ),
    (
        "bad sender id",
        '[sender]\nsender_id = "eiger p11"\n',
        ['sender.sender_id = "eiger p11"', "letters, digits"],
    ),
    (
        "empty directory",
        '[sender]\nspool_dir = ""\n',
        ['sender.spool_dir = ""', "expected a directory path"],
    ),
    (
        "sources as strings",
        '[sender]\nsources = ["simulate:"]\n',
        ['sender.sources[0] = "simulate:"', "[[sender.sources]] tables"],
    ),
    (
        "unknown key in a source",
        '[sender]\n[[sender.sources]]\nuri = "simulate:"\nrate = 5\n',
        ["sender.sources[0].rate = 5", "not a source setting", "expected only uri"],
    ),
    (
        "source without uri",
        "[sender]\n[[sender.sources]]\nuri = 5\n",
        ["sender.sources[0].uri = 5", "source URI string"],
    ),
    (
        "bad TOML",
        "[receiver]\nmetrics_port = \n",
        ["is not valid TOML", "line 2"],
    ),
    (
        "unknown table",
        "[recevier]\nmetrics_port = 9610\n",
        ["unknown table [recevier]", "did you mean receiver"],
    ),
    (
        "key outside a table",
        "metrics_port = 9610\n",
        ["metrics_port = 9610", "outside any table", "[receiver] or [sender]"],
    ),
    (
        "sub-table",
        "[receiver.extra]\nx = 1\n",
        ['receiver.extra = {"x": 1}', "not a receiver setting"],
    ),
    ("empty file", "", ["is empty", "[receiver] or [sender]"]),
    ("both daemons", "[receiver]\n[sender]\n", ["both [receiver] and [sender]"]),
]


@pytest.mark.parametrize(
    ("text", "fragments"), [(t, f) for _, t, f in BAD_FILES], ids=[w for w, _, _ in BAD_FILES]
)
def test_bad_file_is_refused_with_key_value_and_expectation(
    tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = write(tmp_path, text)
    message = error_of(cfg.check_file, path, environ={})
    for fragment in fragments:
        assert fragment in message
    assert str(path) in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert (
        error_of(cfg.check_file, path) == f"config file {path} does not exist; expected a TOML file"
    )
    assert "does not exist" in error_of(cfg.load, "receiver", path, environ={})


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "is a directory" in error_of(cfg.check_file, tmp_path)


def test_file_of_the_other_daemon(tmp_path: Path) -> None:
    path = write(tmp_path, "[sender]\n")
    message = error_of(cfg.load, "receiver", path, environ={})
    assert (
        message == f"config file {path} has a [sender] table; expected [receiver] for the receiver"
    )


# ----------------------------------------------------- environment mistakes


@pytest.mark.parametrize(
    ("environ", "fragments"),
    [
        (
            {"HIDRA_NG_RECEIVER_METRICS_PORT": "ninety"},
            ["HIDRA_NG_RECEIVER_METRICS_PORT='ninety'", "expected a port number (an integer)"],
        ),
        (
            {"HIDRA_NG_RECEIVER_METRICS_PORT": "70000"},
            ["HIDRA_NG_RECEIVER_METRICS_PORT='70000'", "from 0 (off) to 65535"],
        ),
        (
            {"HIDRA_NG_RECEIVER_ACK_TIMEOUT_SECONDS": "nan"},
            ["HIDRA_NG_RECEIVER_ACK_TIMEOUT_SECONDS='nan'", "expected a number of seconds"],
        ),
        (
            {"HIDRA_NG_RECEIVER_INGEST": "tcp://*:0"},
            ["HIDRA_NG_RECEIVER_INGEST='tcp://*:0'", "port from 1 to 65535"],
        ),
        (
            {"HIDRA_NG_RECEIVER_METRIC_PORT": "1"},
            [
                "environment variable HIDRA_NG_RECEIVER_METRIC_PORT is not a receiver setting",
                "did you mean HIDRA_NG_RECEIVER_METRICS_PORT",
            ],
        ),
        (
            {"HIDRA_NG_DATA_DIR": "/x"},
            ["HIDRA_NG_DATA_DIR is not a hidra-ng setting", "HIDRA_NG_RECEIVER_<SETTING>"],
        ),
    ],
)
def test_bad_environment_is_refused(environ: dict[str, str], fragments: list[str]) -> None:
    message = error_of(cfg.load, "receiver", environ=environ)
    for fragment in fragments:
        assert fragment in message


def test_sources_cannot_come_from_the_environment() -> None:
    message = error_of(cfg.load, "sender", environ={"HIDRA_NG_SENDER_SOURCES": "simulate:"})
    assert "HIDRA_NG_SENDER_SOURCES cannot set sources" in message


def test_environment_error_beats_a_good_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[receiver]\nmetrics_port = 1\n")
    message = error_of(cfg.check_file, path, environ={"HIDRA_NG_RECEIVER_PUBLISH_HWM": "0"})
    assert message == "environment variable HIDRA_NG_RECEIVER_PUBLISH_HWM='0': expected 1 or more"


# ------------------------------------------------------------- flag mistakes


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"metrics_port": 70000}, "--metrics-port 70000: expected a port number from 0 (off)"),
        ({"ack_timeout_seconds": -1.0}, "--ack-timeout -1.0: expected more than 0 seconds"),
        ({"max_age_seconds": "x"}, '--max-age "x": expected a number of seconds'),
        ({"data_dir": " "}, '--data-dir " ": expected a directory path'),
        ({"api": "tcp://*:50100"}, '--api "tcp://*:50100": expected an endpoint other than'),
        ({"nonsense": 1}, "--nonsense is not a receiver setting"),
    ],
)
def test_bad_flag_is_refused(flags: dict, expected: str) -> None:
    assert error_of(cfg.load, "receiver", flags=flags, environ={}).startswith(expected)


def test_direct_construction_is_validated_too() -> None:
    message = error_of(ReceiverConfig, commit_max_messages=0)
    assert message == "receiver.commit_max_messages = 0: expected 1 or more"
    assert "sender.spool_sync" in error_of(SenderConfig, spool_sync="sometimes")


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://*:50100",
        "tcp://*:*",
        "tcp://127.0.0.1:1",
        "tcp://[::1]:65535",
        "tcp://eth0:5000",
        "ipc:///run/hidra-ng/ingest",
        "inproc://x",
    ],
)
def test_good_bind_endpoints(endpoint: str) -> None:
    assert ReceiverConfig(ingest=endpoint).ingest == endpoint


@pytest.mark.parametrize(
    "endpoint", ["tcp://dc:50100", "tcp://10.0.0.1:1", "tcp://[fe80::1]:50100", "ipc:///x"]
)
def test_good_connect_endpoints(endpoint: str) -> None:
    assert SenderConfig(ingest=endpoint).ingest == endpoint


@pytest.mark.parametrize(
    "endpoint", ["", "tcp://", "tcp://:50100", "tcp://[::1:5", "tcp://a b:1", "ipc://", "50100"]
)
def test_bad_endpoints(endpoint: str) -> None:
    assert "expected a ZeroMQ endpoint" in error_of(ReceiverConfig, ingest=endpoint)


def test_commented_source_examples_parse() -> None:
    """The sources shown commented out in config/sender.toml work once uncommented."""
    from hidra_ng.sender import sources

    text = (EXAMPLES / "sender.toml").read_text()
    uris = [
        tomllib.loads(line.lstrip("# "))["uri"]
        for line in text.splitlines()
        if line.startswith("# uri = ")
    ]
    assert len(uris) == 4
    for uri in uris:
        sources.parse(uri)


def test_the_producer_takes_its_settings_from_the_sender_config(tmp_path) -> None:
    """Each setting is declared once (SenderConfig); the Producer's arguments derive from it."""
    from hidra_ng.sender.producer import Producer, producer_settings

    daemon_only = {"metrics_port", "sources"}
    assert set(producer_settings()) == set(cfg.SenderConfig.__struct_fields__) - daemon_only
    config = cfg.SenderConfig(
        ingest="tcp://127.0.0.1:9",
        api="tcp://127.0.0.1:9",
        spool_dir=str(tmp_path / "spool"),
        sender_id="from-config",
        spool_sync="batch",
        spool_batch_seconds=0.25,
        max_spool_bytes=123_456_789,
        send_timeout_seconds=7.5,
        compression="zstd",
    )
    with Producer.from_config(config) as p:
        assert (p.ingest, p.api, p.sender_id) == (config.ingest, config.api, "from-config")
        assert p.max_spool_bytes == 123_456_789 and p.send_timeout == 7.5
        assert p.compression == "zstd" and p.keys is None


def test_send_timeout_is_the_former_name_of_send_timeout_seconds(tmp_path) -> None:
    from hidra_ng import ConfigError, Producer

    endpoint = "tcp://127.0.0.1:9"
    with Producer(endpoint, endpoint, tmp_path / "a", "old-name", send_timeout=2.5) as p:
        assert p.send_timeout == 2.5
    with Producer(endpoint, endpoint, tmp_path / "b", "new-name", send_timeout_seconds=3.5) as p:
        assert p.send_timeout == 3.5
    with pytest.raises(ConfigError, match="disagree"):
        Producer(endpoint, endpoint, tmp_path / "c", "both", send_timeout=1, send_timeout_seconds=2)


# ------------------------------------------------- each setting declared once


@pytest.mark.parametrize("section", ["receiver", "sender", "view", "writer", "bridge"])
def test_every_setting_has_a_description_and_a_flag(section: str) -> None:
    """The struct is the one declaration: the CLI's flags and --help text come from it."""
    from typer.main import get_command

    from hidra_ng.cli import app

    command = {"writer": "write"}.get(section, section)
    click_command = get_command(app).commands[command]  # type: ignore[attr-defined]
    options = {name: p for p in click_command.params for name in p.opts}
    for key in cfg.settings(section):
        text = cfg.description(section, key)
        assert text, f"{section}.{key} has no description"
        param = options[cfg.flag_name(key)]
        assert param.help.startswith(text)
        if key != "sources":
            assert cfg.env_name(section, key) in param.help


def test_constraints_come_from_the_declaration() -> None:
    """The Meta constraints are checked by msgspec.convert in load and by the struct."""
    message = error_of(cfg.load, "receiver", flags={"ack_timeout_seconds": 1e9}, environ={})
    assert message == "--ack-timeout 1000000000.0: expected at most 604800 seconds"
    assert error_of(cfg.BridgeConfig, poll_seconds=7200.0) == (
        "bridge.poll_seconds = 7200.0: expected at most 3600 seconds"
    )
    message = error_of(cfg.load, "sender", flags={"max_spool_bytes": 0}, environ={})
    assert message == "--max-spool-bytes 0: expected 1 bytes or more"


def test_allow_ips_is_a_list_and_still_reads_a_comma_string(tmp_path: Path) -> None:
    as_list = write(tmp_path, '[receiver]\nallow_ips = ["10.0.0.0/8", "127.0.0.1"]\n', "l.toml")
    as_text = write(tmp_path, '[receiver]\nallow_ips = "10.0.0.0/8, 127.0.0.1"\n', "t.toml")
    expected = ["10.0.0.0/8", "127.0.0.1"]
    assert cfg.load("receiver", as_list, environ={}).allow_ips == expected
    assert cfg.load("receiver", as_text, environ={}).allow_ips == expected
    env = {"HIDRA_NG_RECEIVER_ALLOW_IPS": "10.0.0.0/8,127.0.0.1"}
    assert cfg.load("receiver", environ=env).allow_ips == expected
    flags = {"allow_ips": ["10.0.0.0/8,127.0.0.1"]}  # --allow-ips A,B (before: one string)
    assert cfg.load("receiver", flags=flags, environ={}).allow_ips == expected
    assert cfg.load("receiver", environ={}).allow_ips == []
    bad = {"HIDRA_NG_RECEIVER_ALLOW_IPS": "10.0.0.0/8, nowhere"}
    assert error_of(cfg.load, "receiver", environ=bad) == (
        "environment variable HIDRA_NG_RECEIVER_ALLOW_IPS='10.0.0.0/8, nowhere': expected IP"
        " addresses or networks like 10.0.0.0/8; 'nowhere' is neither"
    )


@pytest.mark.parametrize("section", ["receiver", "sender", "writer", "bridge"])
def test_metrics_port_minus_one_asks_for_any_free_port(section: str) -> None:
    """-1 (metrics.ANY_PORT) is the one value below 0: any free port, read back later."""
    from hidra_ng.metrics import ANY_PORT

    assert cfg.load(section, flags={"metrics_port": ANY_PORT}, environ={}).metrics_port == -1
    with pytest.raises(ConfigError) as bad:
        cfg.load(section, flags={"metrics_port": -2}, environ={})
    assert str(bad.value) == (
        "--metrics-port -2: expected a port number from 0 (off) to 65535, or -1 (any free port)"
    )

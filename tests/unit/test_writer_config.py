"""The [writer] config table (SPEC §7, §15): defaults, precedence, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hidra_ng import config as cfg
from hidra_ng.errors import ConfigError

ROOT = Path(__file__).parents[2]


def test_example_config_is_valid_and_check_config_prints_it_back(tmp_path):
    section, settings = cfg.check_file(ROOT / "config" / "writer.toml", environ={})
    assert section == "writer"
    assert settings.format == "nxmx" and settings.streams == ["p11/**"]
    again = tmp_path / "again.toml"
    again.write_text(cfg.to_toml(section, settings))
    _, reread = cfg.check_file(again, environ={})
    assert reread.streams == settings.streams and reread.recipes == settings.recipes


def test_precedence_flag_env_file(tmp_path):
    f = tmp_path / "w.toml"
    f.write_text('[writer]\ndir = "/data/files"\nformat = "hdf5"\nstreams = ["a/*"]\n')
    env = {"HIDRA_NG_WRITER_FORMAT": "tiff", "HIDRA_NG_WRITER_STREAMS": "x/**, y/*"}
    s = cfg.load("writer", f, {"frames_per_file": 50}, environ=env)
    assert (s.dir, s.format, s.streams, s.frames_per_file) == (
        "/data/files", "tiff", ["x/**", "y/*"], 50
    )  # fmt: skip
    assert cfg.load("writer", None, {"streams": ["z/*"]}, environ=env).streams == ["z/*"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"format": "cbf"}, '--format "cbf": expected one of .nxmx., .hdf5. or .tiff.'),
        ({"frames_per_file": 0}, "--frames-per-file 0: expected 1 to 1000000"),
        ({"amqp": "amqp://guest:guest@h:5672/%2F"}, "--amqp .*expected a queue given with it"),
        ({"queue": "q"}, '--queue "q": expected an amqp broker URI given with it'),
        ({"amqp": "http://x", "queue": "q"}, '--amqp "http://x": expected an AMQP URI'),
        ({"api": "tcp://*:50101"}, '--api "tcp://\\*:50101"'),
        ({"streams": [""]}, '--streams "": expected a glob of stream names'),
        ({"streams": ["a b"]}, '--streams "a b": expected a glob of stream names'),
        ({"metrics_port": 70000}, "--metrics-port 70000"),
    ],
)
def test_errors_name_the_setting(flags, message):
    with pytest.raises(ConfigError, match=message):
        cfg.load("writer", None, flags, environ={})


def test_unknown_key_in_the_file(tmp_path):
    f = tmp_path / "w.toml"
    f.write_text("[writer]\nframes_per_fil = 3\n")
    with pytest.raises(ConfigError, match="did you mean frames_per_file"):
        cfg.load("writer", f, environ={})

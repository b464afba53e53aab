"""The systemd units (SPEC §8): required keys, agreement with the CLI and the config
defaults, and ``systemd-analyze verify`` where it exists.

(That the daemons run under ``MemoryDenyWriteExecute=yes`` is checked in
tests/integration/test_service.py.)"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from hidra_ng import config as cfg
from hidra_ng import service
from hidra_ng.cli import app

ROOT = Path(__file__).parents[2]
UNITS = ROOT / "systemd"
RECEIVER = "hidra-ng-receiver.service"
SENDER = "hidra-ng-sender@.service"
WRITER = "hidra-ng-writer.service"
BRIDGE = "hidra-ng-bridge.service"
COMMANDS = {RECEIVER: "receiver", SENDER: "sender", WRITER: "write", BRIDGE: "bridge"}
SECTIONS = {RECEIVER: "receiver", SENDER: "sender", WRITER: "writer", BRIDGE: "bridge"}
INSTALLED = "/opt/hidra-ng/bin/hidra-ng"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat; an empty value resets the list)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    text = path.read_text().replace("\\\n", " ")
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}:{number}: not 'Key=value': {raw!r}"
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
    return sections


@pytest.fixture(scope="module", params=[RECEIVER, SENDER, WRITER, BRIDGE])
def unit(request) -> tuple[str, dict[str, list[str]]]:
    sections = parse_unit(UNITS / request.param)
    assert set(sections) == {"Unit", "Service", "Install"}
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]
    return request.param, sections["Service"]


def one(service_section: dict[str, list[str]], key: str) -> str:
    values = service_section.get(key)
    assert values and len(values) == 1, f"{key} should be set once, is {values}"
    return values[0]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|min)?", value)
    assert match, f"not a simple time span: {value}"
    number, unit_name = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1.0, "min": 60.0}[unit_name]


REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "Restart": "on-failure",
    "RestartPreventExitStatus": "2",
    "KillSignal": "SIGTERM",
    "User": "hidra-ng",
    "Group": "hidra-ng",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
}


def test_required_keys(unit) -> None:
    _name, svc = unit
    for key, value in REQUIRED.items():
        assert one(svc, key) == value, key
    assert "@system-service" in svc["SystemCallFilter"]
    assert svc.get("CapabilityBoundingSet") == []  # set, and empty: no capabilities
    assert "DynamicUser" not in svc  # a sysusers.d user instead, see the unit's comment


def test_timeouts_fit_the_daemon(unit) -> None:
    _name, svc = unit
    watchdog = seconds(one(svc, "WatchdogSec"))
    assert watchdog >= 10, "room for a slow fsync without a false watchdog kill"
    # the daemon's own stop guard fires before systemd's SIGKILL
    assert seconds(one(svc, "TimeoutStopSec")) > service.STOP_TIMEOUT_SECONDS


def test_exec_start_is_a_real_command_line(unit) -> None:
    name, svc = unit
    argv = shlex.split(one(svc, "ExecStart"))
    assert argv[0] == INSTALLED
    command = typer.main.get_command(app)
    sub = command.commands[argv[1]]
    assert sub.name == COMMANDS[name]
    options = {opt for param in sub.params for opt in getattr(param, "opts", [])}
    for arg in argv[2:]:
        if arg.startswith("--"):
            assert arg in options, f"{arg} is no option of hidra-ng {sub.name}"
    config = argv[argv.index("--config") + 1]
    if name == SENDER:
        assert config == "/etc/hidra-ng/sender-%i.toml"
    else:
        assert config == f"/etc/hidra-ng/{SECTIONS[name]}.toml"


def test_state_directory_is_writable_and_the_config_default(unit) -> None:
    name, svc = unit
    state = one(svc, "StateDirectory")
    path = f"/var/lib/{state}"
    assert one(svc, "ReadWritePaths") == path
    section = SECTIONS[name]
    if name == SENDER:
        assert state == "hidra-ng-sender/%i", "one spool per instance"
        path = path.replace("%i", "eiger")
    config = cfg.load(section, environ={"STATE_DIRECTORY": path})
    assert getattr(config, config.state_dir_key) == path
    # and the example config (installed as receiver.toml / sender-eiger.toml) agrees
    _, example = cfg.check_file(ROOT / "config" / f"{section}.toml", environ={})
    assert getattr(example, example.state_dir_key) == path


def test_sysusers_creates_the_unit_user() -> None:
    lines = [
        shlex.split(line)
        for line in (UNITS / "hidra-ng.sysusers").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [(kind, name) for kind, name, *_ in lines] == [("u", "hidra-ng")]


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """Both units verify without a single warning (ExecStart pointed at this venv)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed; the key checks above still ran")
    executable = Path(sys.executable).parent / "hidra-ng"
    if not executable.exists():
        pytest.skip(f"{executable} is not installed (pip install -e .)")
    for name in (RECEIVER, SENDER, WRITER, BRIDGE):
        text = (UNITS / name).read_text().replace(INSTALLED, str(executable))
        (tmp_path / name).write_text(text)
    result = subprocess.run(
        [
            analyze,
            "verify",
            "--man=no",
            RECEIVER,
            "./hidra-ng-sender@eiger.service",
            WRITER,
            BRIDGE,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # systemd-analyze exits 0 even for unknown keys; any output is a finding
    assert result.returncode == 0 and not result.stdout and not result.stderr, (
        result.stdout + result.stderr
    )

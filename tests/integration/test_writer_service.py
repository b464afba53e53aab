"""``hidra-ng write`` as a systemd service (SPEC §8, §15): READY, watchdog, STOPPING, exit 0,
and its code under MemoryDenyWriteExecute."""

from __future__ import annotations

import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import wait_for

from hidra_ng.testing import ReceiverProcess
from tests.integration.test_service import WATCHDOG_USEC, check_stop, check_watchdog_cadence
from tests.ops_helpers import DaemonProcess, NotifySocket, clean_env


def test_writer_notifies_ready_watchdog_status_stopping(tmp_path: Path) -> None:
    with (
        ReceiverProcess(tmp_path / "store") as receiver,
        NotifySocket(f"@hidra-ng-test-{secrets.token_hex(6)}") as notify,
    ):
        args = ["write", "--api", receiver.api, "--dir", str(tmp_path / "out"),
                "--metrics-port", "0", "--format", "hdf5"]  # fmt: skip
        env = clean_env(NOTIFY_SOCKET=notify.address, WATCHDOG_USEC=str(WATCHDOG_USEC))
        with DaemonProcess(args, tmp_path / "writer.log", env) as daemon:
            wait_for(lambda: notify.times_of("READY") or not daemon.running(), timeout=30,
                     what="READY=1")  # fmt: skip
            assert daemon.running(), daemon.read_log()
            first = notify.messages()[0]
            assert first["READY"] == "1" and "streams" in first["STATUS"]
            check_watchdog_cadence(notify, daemon)
            check_stop(notify, daemon)


MDWE_WRITE = textwrap.dedent(
    """
    import ctypes, mmap, sys, tempfile
    from pathlib import Path
    PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
    if ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        sys.exit(77)
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit(3)
    except PermissionError:
        pass
    import h5py, hdf5plugin, numpy as np, pika, tifffile
    sys.path.insert(0, "tests")
    from stream_v2_emitter import bslz4
    from hidra_ng.writer import nxmx
    d = Path(tempfile.mkdtemp())
    a = np.arange(64 * 48, dtype="<u2").reshape(64, 48)
    df = nxmx.DataFile(d / "s_data_000001.h5", "s", "u", 2, "<u2", (64, 48), "bslz4")
    df.add(bslz4(a), 1, 0)
    df.complete(1, 1)
    with h5py.File(d / "s_data_000001.h5", "r") as h5:
        assert (h5["/entry/data/data"][0] == a).all()
    tifffile.imwrite(d / "a.tif", a)
    assert (tifffile.imread(d / "a.tif") == a).all()
    print("write ok")
    """
)


def test_writer_code_runs_under_memory_deny_write_execute() -> None:
    result = subprocess.run([sys.executable, "-c", MDWE_WRITE], capture_output=True, text=True,
                            timeout=120, env=clean_env())  # fmt: skip
    if result.returncode == 77:
        pytest.skip("the kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0 and "write ok" in result.stdout, result.stderr[-3000:]

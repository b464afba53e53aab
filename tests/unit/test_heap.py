"""hidra_ng.heap: the daemons' malloc settings for frame-sized buffers."""

from __future__ import annotations

import platform

import pytest

from hidra_ng import heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_glibc_takes_the_frame_buffer_settings() -> None:
    assert heap.keep_frame_buffers() is True
    big = bytearray(8 << 20)  # below the new mmap threshold: from the heap, and usable
    big[-1] = 1
    assert big[-1] == 1

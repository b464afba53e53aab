"""Stream patterns of ``hidra-ng write`` (SPEC §13 rule): ``*`` within a segment, ``**`` across."""

import pytest

from hidra_ng.writer.patterns import compile_pattern, matches, matches_any


@pytest.mark.parametrize(
    ("pattern", "stream", "expected"),
    [
        ("p11/*", "p11/scan_0001", True),
        ("p11/*", "p11/eiger/threshold_1", False),
        ("p11/**", "p11/scan_0001", True),
        ("p11/**", "p11/eiger/threshold_1", True),
        ("p11/**", "p11", False),
        ("p11/**", "p12/x", False),
        ("**", "anything/at/all", True),
        ("**", "x", True),
        ("*", "x", True),
        ("*", "x/y", False),
        ("p11/*/threshold_1", "p11/eiger/threshold_1", True),
        ("p11/*/threshold_1", "p11/eiger/threshold_2", False),
        ("**/threshold_1", "threshold_1", True),
        ("**/threshold_1", "p11/eiger/threshold_1", True),
        ("**/threshold_1", "p11/eiger/threshold_10", False),
        ("p11/scan_*", "p11/scan_0001", True),
        ("p11/scan_*", "p11/scan_0001/part-1", False),
        ("p11/scan_????", "p11/scan_0001", True),
        ("p11/scan_????", "p11/scan_01", False),
        ("p11/scan.1", "p11/scanx1", False),  # '.' is literal
        ("p11/a+b", "p11/a+b", True),
        ("exact", "exact", True),
        ("exact", "exactly", False),
    ],
)
def test_patterns(pattern, stream, expected):
    assert matches(pattern, stream) is expected


def test_matches_any_and_empty_pattern():
    assert matches_any(["a/*", "b/**"], "b/c/d")
    assert not matches_any(["a/*", "b/**"], "c")
    assert not matches_any([], "c")
    with pytest.raises(ValueError, match="empty"):
        compile_pattern("")

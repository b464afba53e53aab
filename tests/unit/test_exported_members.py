"""The public API (SPEC §4) is what ``hidra_ng.__all__`` says, all importable from ``hidra_ng``."""

from __future__ import annotations

import types

import hidra_ng
from hidra_ng import errors


def test_all_public_names_are_exported() -> None:
    public = {
        name
        for name, value in vars(hidra_ng).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    lazy = {"export_hdf5"}  # imports h5py only when asked for
    assert sorted(hidra_ng.__all__) == hidra_ng.__all__
    assert set(hidra_ng.__all__) == public | lazy


def test_every_exported_name_resolves() -> None:
    namespace: dict[str, object] = {}
    exec("from hidra_ng import *", namespace)
    for name in hidra_ng.__all__:
        assert namespace[name] is getattr(hidra_ng, name)


def test_every_error_class_is_exported() -> None:
    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.HidraError)
    }
    assert classes <= set(hidra_ng.__all__)

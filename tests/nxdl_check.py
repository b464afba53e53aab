"""Check an HDF5 file against a NeXus application definition (NXDL), parsed here.

An element of an application definition is required unless it says
``minOccurs="0"``, ``optional="true"`` or ``recommended="true"`` (the NeXus
rule for application definitions); attributes are held to the same rule, which
is stricter than the schema's default. Present fields must carry ``@units`` when
the definition gives units, and enumerated values must be one of the items.
Unnamed groups match any group of their ``NX_class``; every match is checked.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import h5py

NS = {"nx": "http://definition.nexusformat.org/nxdl/3.1"}
NXDL = Path(__file__).parent / "data" / "nexus" / "NXmx.nxdl.xml"


@dataclass
class Report:
    missing: list[str] = field(default_factory=list)  # required and absent
    recommended_missing: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # units, enumerations
    checked: int = 0


def _required(el: ET.Element) -> bool:
    return not (
        el.get("minOccurs") == "0"
        or el.get("optional") == "true"
        or el.get("recommended") == "true"
    )


def _text(value) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if hasattr(value, "shape") and value.shape == ():
        return _text(value[()])
    return str(value)


def _nx_class(obj) -> str:
    return _text(obj.attrs.get("NX_class", b""))


def check(path: Path | str, nxdl: Path = NXDL) -> Report:
    root = ET.parse(nxdl).getroot()
    report = Report()
    with h5py.File(path, "r") as h5:
        for group_def in root.findall("nx:group", NS):
            _group(group_def, h5, "", report)
    return report


def _group(group_def: ET.Element, parent: h5py.Group, where: str, report: Report) -> None:
    nx_type = group_def.get("type")
    name = group_def.get("name")
    if name and group_def.get("nameType") != "partial":
        candidates = [parent[name]] if name in parent else []
    else:
        candidates = [
            parent[k]
            for k in parent
            if isinstance(parent.get(k, getlink=False), h5py.Group)
            and _nx_class(parent[k]) == nx_type
        ]
    label = f"{where}/{name or nx_type}"
    if not candidates:
        if _required(group_def):
            report.missing.append(label)
        elif group_def.get("recommended") == "true":
            report.recommended_missing.append(label)
        return
    for group in candidates:
        report.checked += 1
        here = group.name
        for child in group_def:
            tag = child.tag.split("}")[1]
            if tag == "group":
                _group(child, group, here, report)
            elif tag == "field":
                _field(child, group, here, report)
            elif tag == "attribute":
                _attribute(child, group, here, report)


def _field(field_def: ET.Element, group: h5py.Group, where: str, report: Report) -> None:
    name = field_def.get("name")
    label = f"{where}/{name}"
    if name not in group:
        if _required(field_def):
            report.missing.append(label)
        elif field_def.get("recommended") == "true":
            report.recommended_missing.append(label)
        return
    report.checked += 1
    ds = group[name]
    if field_def.get("units") and "units" not in ds.attrs:
        report.wrong.append(f"{label} has no @units ({field_def.get('units')})")
    items = [i.get("value") for i in field_def.findall("nx:enumeration/nx:item", NS)]
    if items and _text(ds[()]) not in items:
        report.wrong.append(f"{label} = {_text(ds[()])!r}, expected one of {items}")
    for attr in field_def.findall("nx:attribute", NS):
        _attribute(attr, ds, label, report)


def _attribute(attr_def: ET.Element, obj, where: str, report: Report) -> None:
    name = attr_def.get("name")
    label = f"{where}@{name}"
    if name not in obj.attrs:
        if _required(attr_def):
            report.missing.append(label)
        return
    report.checked += 1
    items = [i.get("value") for i in attr_def.findall("nx:enumeration/nx:item", NS)]
    if items and _text(obj.attrs[name]) not in items:
        report.wrong.append(f"{label} = {_text(obj.attrs[name])!r}, expected one of {items}")


def depends_on_chains(path: Path | str) -> dict[str, list[str]]:
    """Each depends_on chain of the file, followed to "."; raises on a dangling or looping one."""
    chains: dict[str, list[str]] = {}
    with h5py.File(path, "r") as h5:
        starts = [
            p
            for p in ("/entry/sample/depends_on", "/entry/instrument/detector/depends_on")
            if p in h5
        ]
        for start in starts:
            chain: list[str] = []
            target = _text(h5[start][()])
            while target != ".":
                assert target in h5, f"{start}: {target} does not exist"
                assert target not in chain, f"{start}: a loop at {target}"
                chain.append(target)
                t = h5[target]
                for key in ("transformation_type", "vector", "units", "depends_on"):
                    assert key in t.attrs, f"{target} has no @{key}"
                target = _text(t.attrs["depends_on"])
            chains[start] = chain
    return chains

"""The JUnit XML format: one ``<testsuite>`` per section, one ``<testcase>`` per check
(verify: per sample × output; localize: per output and checked layer; ...), a ``<failure>``
carrying the numbers."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

from .base import Format, register_format, view


def junit_cases(name: str, section: Any) -> list[tuple[str, str, str | None, str]]:
    """(classname, testcase name, failure message or None, details) for one report section."""
    return [(c.group, c.name, c.failure, c.details) for c in view(name, section).checks()]


def render(sections: Mapping[str, Any], *, suite: str = "normonnx", **_: Any) -> bytes:
    root = ET.Element("testsuites", name=suite)
    total = failures = 0
    for name, section in sections.items():
        if section is None:
            continue
        checks = view(name, section).checks()
        ts = ET.SubElement(root, "testsuite", name=f"{suite}.{name}")
        nfail = skipped = 0
        for c in checks:
            tc = ET.SubElement(ts, "testcase", classname=c.group, name=c.name, time="0")
            if c.skipped is not None:
                ET.SubElement(tc, "skipped", message=c.skipped)
                skipped += 1
            elif c.failure is not None:
                f = ET.SubElement(tc, "failure", message=c.failure, type="NumericalMismatch")
                f.text = c.details or c.failure
                nfail += 1
            elif c.details:
                out = ET.SubElement(tc, "system-out")
                out.text = c.details
        ts.set("tests", str(len(checks)))
        ts.set("failures", str(nfail))
        ts.set("errors", "0")
        ts.set("skipped", str(skipped))
        total += len(checks)
        failures += nfail
    root.set("tests", str(total))
    root.set("failures", str(failures))
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


FORMAT = register_format(
    Format("junit", "write JUnit XML: one testcase per check (output, layer, value)", render, order=1)
)

__all__ = ["FORMAT", "junit_cases"]

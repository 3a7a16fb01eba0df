"""What a report format is, what a report section offers it, and the registries of both.

A **section** is a result the verifier returns (``VerifyReport``, ``LocalizeReport``,
``StressReport``, ``PrecisionReport``, ``BisectReport``, or any object with ``passed``,
``summary()``, ``format_table()`` and ``as_dict()``). Formats never look at its type: they ask
its :class:`View` (from :func:`view`) for

- ``to_dict()`` — the JSON document;
- ``checks()`` — :class:`Check` rows, one per thing that can fail (JUnit test cases);
- ``blocks()`` — a format-neutral page: :class:`Block` headings, paragraphs, preformatted
  tables, bullet lists, images and cell tables (HTML, text).

A section type with its own view registers it with :func:`register_view` (the five verifier
reports do, in :mod:`.sections`); any other section gets :class:`View`'s defaults from the
protocol above, so a new report type needs no edit in any format.

A **format** is a :class:`Format` in :data:`FORMATS`, one module ``format_<name>.py`` each; its
name is the CLI flag (``--json``, ``--junit``, ``--html``, ``--text``) of every command that writes
reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

# ---------------------------------------------------------------------------------------------
# sections


@dataclasses.dataclass(frozen=True)
class Check:
    """One check of a section: ``failure`` is None when it passed; ``skipped`` is the reason it did not run."""

    group: str
    name: str
    failure: str | None = None
    details: str = ""
    skipped: str | None = None


@dataclasses.dataclass(frozen=True)
class Block:
    """One piece of a report page.

    ``kind``: ``heading`` (text), ``para`` (text; ``bold``), ``pre`` (preformatted text),
    ``bullets`` (items), ``image`` (text = alt text; ``png()`` returns base64 PNG, called only by a
    format that embeds images), ``table`` (head, rows; ``bad`` marks failing rows).
    """

    kind: str
    text: str = ""
    bold: bool = False
    items: tuple[str, ...] = ()
    head: tuple[str, ...] = ()
    rows: tuple[tuple[Any, ...], ...] = ()
    bad: tuple[bool, ...] = ()
    png: Callable[[], str] | None = None


def heading(text: str) -> Block:
    return Block("heading", text)


def para(text: str, bold: bool = False) -> Block:
    return Block("para", text, bold=bold)


def pre(text: str) -> Block:
    return Block("pre", text)


class View:
    """What formats ask of a section; the defaults read the section protocol
    (``passed``, ``summary()``, ``format_table()``, ``as_dict()``, optional ``title``)."""

    #: place on a page: sections are laid out by ``order``, then in the order they were given
    order = 50

    def __init__(self, key: str, section: Any) -> None:
        self.key = key
        self.section = section

    @property
    def title(self) -> str:
        return str(getattr(self.section, "title", None) or self.key)

    @property
    def passed(self) -> bool:
        return bool(self.section.passed)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.section.as_dict())

    def checks(self) -> list[Check]:
        summary = self.section.summary()
        return [Check(self.key, "passed", None if self.passed else summary, summary)]

    def blocks(self) -> list[Block]:
        return [heading(self.title), para(self.section.summary()), pre(self.section.format_table())]


#: section type name → its View class (:func:`register_view`)
VIEWS: dict[str, type[View]] = {}


def register_view(type_name: str) -> Callable[[type[View]], type[View]]:
    """Class decorator: ``cls`` is the view of sections whose type is called ``type_name``."""

    def deco(cls: type[View]) -> type[View]:
        VIEWS[type_name] = cls
        return cls

    return deco


def view(key: str, section: Any) -> View:
    """The view of ``section`` (given under ``key``): its registered one, else the protocol defaults."""
    from . import sections as _  # noqa: F401  (registers the verifier reports' views)

    return VIEWS.get(type(section).__name__, View)(key, section)


def views(sections: Mapping[str, Any]) -> list[View]:
    """The views of the non-None ``sections``, in page order (stable)."""
    out = [view(k, s) for k, s in sections.items() if s is not None]
    return sorted(out, key=lambda v: v.order)


# ---------------------------------------------------------------------------------------------
# formats


@dataclasses.dataclass(frozen=True)
class Format:
    """A report format: ``render(sections, passed=, final=, title=)`` returns the file's bytes.

    ``name`` is also the CLI flag (``--<name> FILE``) and its argparse destination; ``help`` its
    ``--help`` text; ``require()`` fails early (before any work) when the format cannot be
    written here (the HTML format without matplotlib); ``order`` places its flag in ``--help``.
    """

    name: str
    help: str
    render: Callable[..., bytes]
    require: Callable[[], None] = lambda: None
    order: int = 50


#: format name → Format, filled by the ``format_*.py`` modules (:func:`formats`)
FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def passed_of(sections: Mapping[str, Any]) -> bool:
    """Every non-None section passed."""
    return all(bool(s.passed) for s in sections.values() if s is not None)


__all__ = [
    "FORMATS",
    "VIEWS",
    "Block",
    "Check",
    "Format",
    "View",
    "heading",
    "para",
    "passed_of",
    "pre",
    "register_format",
    "register_view",
    "view",
    "views",
]

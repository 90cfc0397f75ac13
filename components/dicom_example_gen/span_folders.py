"""The span folder layout of an input base: one folder `span-<N>` per batch of newly labelled scans.

TFX's ExampleGen driver resolves `{SPAN}` in the input pattern to the folder's number (the latest, or the span a
RangeConfig names) and records it on the Examples; `ich watch` finds the folders by the same name.
"""

from __future__ import annotations

import re

PREFIX = "span-"
SPAN_PATTERN = f"{PREFIX}{{SPAN}}/*"  # the ExampleGen's input pattern: every file of one span folder, any depth
SPAN_GLOB = f"{PREFIX}*"  # every span folder directly under the input base
_NAME = re.compile(rf"{re.escape(PREFIX)}(\d+)")  # the digits that TFX's `{SPAN}` matches


def span_folder(span: int) -> str:
    """The folder name of span `span`."""
    return f"{PREFIX}{span}"


def parse_span(name: str) -> int | None:
    """The span number of a folder name, or None when the name is not a span folder's."""
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match else None

"""Text that came from outside (a site's error report, an upload's rejection) made fit to store and show.

The coordinator keeps and displays what sites tell it: a failed task's error, events built from it.
A hostile or buggy site could send megabytes, terminal escape sequences or NUL bytes there; every such
text goes through `public_text` before it is stored or shown (docs/decisions.md 24). This bounds what
a site can put in the registry and in `fedtune admin watch`; it does not make a text that quotes a
site's data safe, which is why workers never put data values into their errors in the first place.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from fedtune.limits import MAX_ERROR_CHARS, MAX_EVENT_MESSAGE_CHARS, TRUNCATED_MARK

ERROR_TEXT_LIMIT = MAX_ERROR_CHARS  # characters of a task's or experiment's error that the coordinator keeps
EVENT_MESSAGE_LIMIT = MAX_EVENT_MESSAGE_CHARS  # characters of an event's message (`fedtune admin watch`)
TRUNCATION_MARKER = TRUNCATED_MARK

_WHITESPACE = re.compile(r"\s+")
# Cc: control characters (NUL, ESC, DEL, C1); Cf: format characters (bidi overrides, zero-width);
# Cs: lone surrogates (not encodable as UTF-8); Co: private use.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co"})


def public_text(text: str, limit: int) -> str:
    """One line of printable text of at most `limit` characters; a cut one ends with the marker.

    Whitespace runs (newlines, tabs) become one space, other control and format characters are
    dropped, and a text longer than `limit` keeps its beginning (where the error's reason is).
    """
    flat = _WHITESPACE.sub(" ", str(text))
    clean = "".join(ch for ch in flat if unicodedata.category(ch) not in _HIDDEN_CATEGORIES).strip()
    if len(clean) <= limit:
        return clean
    if limit <= len(TRUNCATION_MARKER):
        return clean[:limit]
    return clean[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def public_data(value: Any, limit: int) -> Any:
    """`value` (JSON-like: dicts, lists, scalars) with every string, keys included, through `public_text`."""
    if isinstance(value, str):
        return public_text(value, limit)
    if isinstance(value, dict):
        return {public_text(str(k), limit): public_data(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [public_data(v, limit) for v in value]
    return value

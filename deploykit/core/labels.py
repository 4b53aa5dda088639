"""Class names: the one rule for every label deploykit takes in, and the label-file format.

A class name is a ``str`` of one line: no character that ``str.splitlines()`` splits on (``\\n``, ``\\r``,
``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``, ``\\x85``, ``\\u2028``, ``\\u2029``: a name holding one would
shift every later class in any one-name-per-line reading) and UTF-8 text (no lone surrogate). A name that
breaks the rule is refused where it enters — a label file, the API's ``labels=``, a checkpoint's header, a
Hugging Face ``id2label``, an artifact's recorded labels — in one line naming its index and its ``repr``.

A label file is UTF-8 text split on ``\\n`` only: a ``\\r`` before it (CRLF) is dropped, as is a leading
byte-order mark; surrounding spaces are trimmed and blank lines at the end ignored.
"""

from __future__ import annotations

from collections.abc import Iterable

from deploykit.core.errors import ConfigError

#: every character ``str.splitlines()`` ends a line at
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BREAKS = frozenset(LINE_BREAKS)


def line_break(text: str) -> str | None:
    """The first line-break character in ``text`` (see :data:`LINE_BREAKS`); None when it is one line."""
    return next((c for c in text if c in _BREAKS), None)


def check_labels(names: Iterable[object], source: str = "labels") -> tuple[str, ...]:
    """``names`` as a tuple of class names, each a ``str`` of one line; anything else is a one-line
    :class:`ConfigError` that starts with ``source`` and names the label's index."""
    checked = tuple(names)
    for index, name in enumerate(checked):
        if not isinstance(name, str):
            raise ConfigError(f"{source}: label {index} is a {type(name).__name__}, not a string")
        found = line_break(name)
        if found is not None:
            raise ConfigError(
                f"{source}: label {index} {name!r} holds a line break ({found!r}); a class name must be one line"
            )
        if not _utf8(name):  # a lone surrogate, e.g. from JSON's "\ud800"
            raise ConfigError(f"{source}: label {index} {name!r} is not UTF-8 text (a lone surrogate)")
    return checked


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_label_file(text: str, source: str) -> tuple[str, ...]:
    """The class names of a label file's text (see the module doc); a line holding a line-break character
    other than its ending is a one-line :class:`ConfigError` naming ``source`` and the line number."""
    lines = text.removeprefix("\ufeff").split("\n")
    for number, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        found = line_break(line)
        if found is not None:
            raise ConfigError(
                f"{source}: line {number} {line!r} holds a line break ({found!r}) other than \\n; "
                "a label file has one class name per line"
            )
        lines[number - 1] = line
    while lines and not lines[-1].strip():
        lines.pop()
    return tuple(line.strip() for line in lines)

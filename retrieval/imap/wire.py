"""IMAP response formatting: pure functions from values to wire bytes.

The string helpers choose the representation the way Dovecot's lib-imap
does: an atom where the grammar allows one and the value is made of atom
characters, a quoted string when that is possible and cheap, and a literal
`{n}\\r\\n...` otherwise (CR, LF, NUL or 8-bit data, more than four
characters to escape, or a long value).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from retrieval.mime import utf7

__all__ = [
    "astring",
    "quoted",
    "literal",
    "literal8",
    "string",
    "nstring",
    "mailbox",
    "flag_list",
    "seqset",
    "date_time",
    "paren",
    "number",
    "text",
]

QUOTED_MAX_ESCAPES = 4  # more quoted-specials than this: a literal is shorter
LONG_STRING = 1024  # longer values go out as literals

_ATOM_CHARS = frozenset(c for c in range(0x21, 0x7F) if chr(c) not in '(){%*"\\]')
_ASTRING_CHARS = _ATOM_CHARS | {ord("]")}
_MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()


def _bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _quotable(data: bytes) -> bool:
    return not any(b in (0, 10, 13) or b >= 0x80 for b in data)


def literal(value: str | bytes) -> bytes:
    """`{n}\\r\\n` + the bytes."""
    data = _bytes(value)
    return b"{%d}\r\n" % len(data) + data


def literal8(value: bytes) -> bytes:
    """`~{n}\\r\\n` + the bytes (RFC 3516, for BINARY[] data that may hold NUL)."""
    data = bytes(value)
    return b"~{%d}\r\n" % len(data) + data


def quoted(value: str | bytes) -> bytes:
    """A quoted string, or a literal when quoting cannot carry the value (CR, LF, NUL, 8-bit)."""
    data = _bytes(value)
    if not _quotable(data):
        return literal(data)
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def string(value: str | bytes) -> bytes:
    """IMAP `string` (quoted or literal; never an atom, which `string` does not allow).

    Quoted when safe and short, a literal for CR/LF/NUL/8-bit data, for more than
    four characters needing a backslash, or for values over LONG_STRING octets.
    """
    data = _bytes(value)
    escapes = data.count(b"\\") + data.count(b'"')
    if len(data) > LONG_STRING or escapes > QUOTED_MAX_ESCAPES:
        return literal(data)
    return quoted(data)


def astring(value: str | bytes) -> bytes:
    """An atom when every character is an ASTRING-CHAR (and it is not NIL), else `string()`."""
    data = _bytes(value)
    if data and data.upper() != b"NIL" and all(b in _ASTRING_CHARS for b in data):
        return data
    return string(data)


def nstring(value: str | bytes | None) -> bytes:
    """NIL for None, else `string()`."""
    return b"NIL" if value is None else string(value)


def mailbox(name: str) -> bytes:
    """A mailbox name: modified UTF-7, INBOX always bare, else an astring."""
    if name.upper() == "INBOX":
        return b"INBOX"
    return astring(utf7.encode(name).encode("ascii"))


def number(n: int) -> bytes:
    return b"%d" % n


def flag_list(flags: Iterable[str | bytes]) -> bytes:
    """`(\\Seen $Forwarded)` — flags are atoms (system flags with their backslash)."""
    return b"(" + b" ".join(_bytes(f) for f in flags) + b")"


def seqset(numbers: Iterable[int]) -> bytes:
    """Compact sequence set: [1, 2, 3, 5, 7, 8, 9] -> b"1:3,5,7:9" (sorted, duplicates dropped).

    An empty input gives b"" (no valid sequence-set exists for it; callers leave it out).
    """
    parts = []
    run_start = prev = None
    for n in sorted(set(numbers)):
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if run_start is not None:
            parts.append(_range(run_start, prev))
        run_start = prev = n
    if run_start is not None:
        parts.append(_range(run_start, prev))
    return b",".join(parts)


def _range(a: int, b: int) -> bytes:
    return b"%d" % a if a == b else b"%d:%d" % (a, b)


def date_time(ts: float, tz: dt.tzinfo | int | None = None) -> bytes:
    """RFC 3501 date-time with its quotes: b'" 7-Feb-1994 21:52:25 -0800"'.

    `tz` is a tzinfo, an offset in seconds east of UTC, or None for the local time zone.
    """
    if isinstance(tz, int):
        tz = dt.timezone(dt.timedelta(seconds=tz))
    if tz is None:
        when = dt.datetime.fromtimestamp(ts).astimezone()
    else:
        when = dt.datetime.fromtimestamp(ts, tz)
    offset = when.utcoffset() or dt.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    text = "%2d-%s-%04d %02d:%02d:%02d %s%02d%02d" % (
        when.day,
        _MONTHS[when.month - 1],
        when.year,
        when.hour,
        when.minute,
        when.second,
        sign,
        minutes // 60,
        minutes % 60,
    )
    return b'"' + text.encode("ascii") + b'"'


def paren(items: Iterable[bytes | str | int]) -> bytes:
    """`(a b c)`: items already formatted (bytes), str (UTF-8) or int."""
    out = []
    for item in items:
        if isinstance(item, int):
            out.append(b"%d" % item)
        else:
            out.append(_bytes(item))
    return b"(" + b" ".join(out) + b")"


def text(value: str, limit: int = 400) -> bytes:
    """Human-readable resp-text: printable ASCII only (no CR/LF), at most `limit` characters."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in value)
    if len(clean) > limit:
        clean = clean[: limit - 3] + "..."
    return clean.encode("ascii")


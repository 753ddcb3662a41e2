"""RFC 2047 encoded words, charset conversion and the search normalizer, as Dovecot does them.

`decode_header(value)` turns a raw header value (bytes) into text: encoded words
decoded and converted from their charset, the rest read as UTF-8 (an invalid
sequence becomes U+FFFD, so 8-bit header octets that are not UTF-8 never match
a UTF-8 search string). Whitespace between two encoded words disappears.

`normalize(text)` is what both sides of a SEARCH comparison go through
(Dovecot's "decomposed titlecase"): each character mapped to its simple
titlecase, then decomposed (compatibility decompositions included), so the
comparison is case-insensitive and accent-aware in Dovecot's way.
"""

from __future__ import annotations

import binascii
import codecs
import re
import unicodedata
from functools import lru_cache

__all__ = ["decode_header", "decode_charset", "normalize", "charset_codec", "is_utf8_charset", "utf8_text"]

_REPLACEMENT = "\ufffd"
_REPL_RUN = re.compile("\ufffd{2,}")


def _utf8(data: bytes) -> str:
    """UTF-8 with each invalid stretch replaced by one U+FFFD (Dovecot never repeats it)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _REPL_RUN.sub(_REPLACEMENT, data.decode("utf-8", "replace"))


utf8_text = _utf8


def is_utf8_charset(name: str) -> bool:
    return name.lower() in ("utf-8", "utf8", "us-ascii", "ascii")


_ALIASES = {
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "x-sjis": "shift_jis",
    "x-euc-jp": "euc_jp",
    "iso-8859-8-i": "iso8859_8",
    "iso-8859-6-i": "iso8859_6",
    "x-mac-roman": "mac_roman",
    "macintosh": "mac_roman",
    "unicode-1-1-utf-7": "utf_7",
    "gb2312": "gb18030",  # what glibc's iconv accepts in practice
    "gbk": "gb18030",
}


@lru_cache(maxsize=256)
def charset_codec(name: str) -> str | None:
    """The Python codec for a MIME charset name, or None when unknown."""
    n = name.strip().strip('"').lower()
    if not n:
        return None
    n = _ALIASES.get(n, n)
    try:
        return codecs.lookup(n).name
    except LookupError:
        return None


def decode_charset(data: bytes, charset: str | None) -> str:
    """Bytes in `charset` -> text; unknown charsets are read as UTF-8 (what is valid of it)."""
    if charset is None or is_utf8_charset(charset):
        return _utf8(data)
    codec = charset_codec(charset)
    if codec is None:
        return _utf8(data)
    try:
        return data.decode(codec, "replace")
    except Exception:  # noqa: BLE001 - a broken codec must not break a search
        return _utf8(data)


# -- RFC 2047 -------------------------------------------------------------------


def _q_decode(text: bytes) -> bytes:
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == 0x5F:  # _
            out.append(0x20)
            i += 1
        elif c == 0x3D:  # =
            if i + 2 >= n:
                out += text[i:]
                break
            h = text[i + 1 : i + 3]
            try:
                out += binascii.unhexlify(h)
                i += 3
            except (binascii.Error, ValueError):
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return bytes(out)


_B64_CHARS = re.compile(rb"[A-Za-z0-9+/]*")


def _b_decode(text: bytes) -> bytes:
    s = text.translate(None, b" \t\r\n")
    body = _B64_CHARS.match(s).group(0)
    r = len(body) % 4
    out = binascii.a2b_base64(body[: len(body) - r]) if len(body) >= 4 else b""
    if r >= 2:
        out += binascii.a2b_base64(body[len(body) - r :] + b"=" * (4 - r))
    return out


def _decode_encoded(data: bytes, start: int) -> tuple[int, bytes, bytes] | None:
    """Parse "charset?enc?text?=" at start; (end offset, charset, decoded) or None."""
    marks = []
    i = start
    n = len(data)
    while i < n:
        if data[i] == 0x3F:
            marks.append(i)
            if len(marks) == 3:
                break
        i += 1
    if len(marks) < 3 or i + 1 >= n or data[i + 1] != 0x3D:
        return None
    charset = data[start : marks[0]]
    enc = data[marks[0] + 1 : marks[0] + 2]
    text = data[marks[1] + 1 : marks[2]]
    if enc in (b"q", b"Q"):
        decoded = _q_decode(text)
    elif enc in (b"b", b"B"):
        decoded = _b_decode(text)
    else:
        return None
    return marks[2] + 2, charset, decoded


def _only_lwsp(b: bytes) -> bool:
    return not b.strip(b" \t\r\n")


def decode_header_chunks(data: bytes) -> list[tuple[bytes, str | None]]:
    """Split a header value into (octets, charset) chunks; charset None = not encoded."""
    out: list[tuple[bytes, str | None]] = []
    start = 0
    pos = 0
    n = len(data)
    while pos + 1 < n:
        if data[pos] != 0x3D or data[pos + 1] != 0x3F:
            pos += 1
            continue
        if pos != start and not _only_lwsp(data[start:pos]):
            out.append((data[start:pos], None))
        res = _decode_encoded(data, pos + 2)
        if res is None:
            start = pos
            pos += 2
            continue
        end, charset, decoded = res
        if decoded:
            out.append((decoded, charset.decode("latin-1")))
        pos = start = end
    if start != n:
        out.append((data[start:], None))
    return out


def decode_header(data: bytes) -> str:
    """A header value with its encoded words decoded, as text."""
    if b"=?" not in data:
        return _utf8(data)
    parts = []
    for chunk, charset in decode_header_chunks(data):
        if charset is None or is_utf8_charset(charset) or charset_codec(charset) is None:
            parts.append(_utf8(chunk))
        else:
            parts.append(decode_charset(chunk, charset))
    return "".join(parts)


# -- normalizer -----------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _titlecase(ch: str) -> str:
    t = ch.title()
    if len(t) != 1:
        u = ch.upper()
        t = u if len(u) == 1 else ch
    return t


class _TitleTable(dict):
    def __missing__(self, code: int) -> str:
        v = _titlecase(chr(code))
        self[code] = v
        return v


_TABLE = _TitleTable()


def normalize(text: str) -> str:
    """Dovecot's decomposed titlecase of `text` (for case-insensitive substring search)."""
    if text.isascii():
        return text.upper()
    return unicodedata.normalize("NFKD", text.translate(_TABLE))

"""RFC 2047 encoded words, charset conversion and the search normalizer, as Dovecot does them.

`decode_header(value)` turns a raw header value (bytes) into text: encoded words
decoded and converted from their charset, the rest read as UTF-8 (an invalid
sequence becomes U+FFFD, so 8-bit header octets that are not UTF-8 never match
a UTF-8 search string). Whitespace between two encoded words disappears.

`search_header(value)` is the same text as SEARCH sees it: normalized
(`normalize`), except the words in a charset nobody knows, which Dovecot
appends as they are (valid UTF-8 kept, not normalized).

`normalize(text)` is what both sides of a SEARCH comparison go through
(Dovecot's "decomposed titlecase"): each character mapped to its simple
titlecase, then decomposed (compatibility decompositions included), so the
comparison is case-insensitive and accent-aware in Dovecot's way.

Charsets are converted with the C library's iconv when there is one (Dovecot
uses iconv, and its tables differ from Python's codecs, e.g. Big5), else with
Python's codecs.
"""

from __future__ import annotations

import binascii
import codecs
import ctypes
import re
import threading
import unicodedata
from functools import lru_cache

__all__ = [
    "decode_header",
    "search_header",
    "decode_charset",
    "normalize",
    "charset_known",
    "is_utf8_charset",
    "utf8_text",
]

_REPLACEMENT = "\ufffd"
_REPL_RUN = re.compile("\ufffd{2,}")


def utf8_text(data: bytes) -> str:
    """UTF-8 with each invalid stretch replaced by one U+FFFD (Dovecot never repeats it)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return _REPL_RUN.sub(_REPLACEMENT, data.decode("utf-8", "replace"))


_utf8 = utf8_text


def is_utf8_charset(name: str) -> bool:
    return name.lower() in ("utf-8", "utf8", "us-ascii", "ascii")


# -- iconv (what Dovecot converts with) --------------------------------------------------

_ICONV_FAIL = ctypes.c_void_p(-1).value


class _Iconv:
    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.open = libc.iconv_open
        self.open.restype = ctypes.c_void_p
        self.open.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        self.conv = libc.iconv
        self.conv.restype = ctypes.c_size_t
        self.conv.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_size_t),
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_size_t),
        ]
        self.local = threading.local()

    def handle(self, charset: str) -> int | None:
        cache = getattr(self.local, "cds", None)
        if cache is None:
            cache = self.local.cds = {}
        key = charset.lower()
        if key not in cache:
            cd = self.open(b"UTF-8", key.encode("ascii", "replace"))
            cache[key] = None if cd in (None, _ICONV_FAIL) else cd
        return cache[key]

    def decode(self, cd: int, data: bytes) -> str:
        """Dovecot's charset_to_utf8(): invalid input -> one U+FFFD, skip a byte, go on;
        an incomplete sequence at the end is dropped."""
        self.conv(cd, None, None, None, None)  # reset the shift state
        out = bytearray()
        pos = 0
        n = len(data)
        last_invalid = -1
        outsize = n * 4 + 16
        outbuf = ctypes.create_string_buffer(outsize)
        while pos < n:
            chunk = data[pos:]
            inp = ctypes.c_char_p(chunk)
            inleft = ctypes.c_size_t(len(chunk))
            outp = ctypes.cast(outbuf, ctypes.c_char_p)
            outleft = ctypes.c_size_t(outsize)
            ret = self.conv(cd, ctypes.byref(inp), ctypes.byref(inleft), ctypes.byref(outp), ctypes.byref(outleft))
            err = ctypes.get_errno() if ret == ctypes.c_size_t(-1).value else 0
            out += outbuf.raw[: outsize - outleft.value]
            pos += len(chunk) - inleft.value
            if ret != ctypes.c_size_t(-1).value:
                break
            if err == 7:  # E2BIG: cannot happen with our buffer, but go on anyway
                continue
            if err == 84:  # EILSEQ
                if last_invalid != len(out):
                    out += _REPLACEMENT.encode()
                    last_invalid = len(out)
                pos += 1
                continue
            break  # EINVAL: incomplete at the end
        # flush a stateful encoding
        outp = ctypes.cast(outbuf, ctypes.c_char_p)
        outleft = ctypes.c_size_t(outsize)
        self.conv(cd, None, None, ctypes.byref(outp), ctypes.byref(outleft))
        out += outbuf.raw[: outsize - outleft.value]
        return out.decode("utf-8", "replace")


try:
    _ICONV: _Iconv | None = _Iconv()
    if _ICONV.handle("iso-8859-1") is None:  # pragma: no cover - no usable iconv
        _ICONV = None
except (OSError, AttributeError):  # pragma: no cover - not a C library with iconv
    _ICONV = None


_ALIASES = {
    "ks_c_5601-1987": "cp949",
    "x-sjis": "shift_jis",
    "iso-8859-8-i": "iso8859_8",
    "x-mac-roman": "mac_roman",
    "unicode-1-1-utf-7": "utf_7",
}


@lru_cache(maxsize=256)
def _codec(name: str) -> str | None:
    n = _ALIASES.get(name, name)
    try:
        return codecs.lookup(n).name
    except LookupError:
        return None


def _clean(name: str) -> str:
    return name.strip().strip('"').lower()


def charset_known(name: str) -> bool:
    """Can Dovecot (iconv) convert from this charset?"""
    name = _clean(name)
    if not name:
        return False
    if is_utf8_charset(name):
        return True
    if _ICONV is not None:
        return _ICONV.handle(name) is not None
    return _codec(name) is not None


def decode_charset(data: bytes, charset: str | None) -> str:
    """Bytes in `charset` -> text; unknown charsets are read as UTF-8 (what is valid of it)."""
    if charset is None:
        return utf8_text(data)
    name = _clean(charset)
    if not name or is_utf8_charset(name):
        return utf8_text(data)
    if _ICONV is not None:
        cd = _ICONV.handle(name)
        if cd is None:
            return utf8_text(data)
        return _ICONV.decode(cd, data)
    codec = _codec(name)
    if codec is None:
        return utf8_text(data)
    return _REPL_RUN.sub(_REPLACEMENT, data.decode(codec, "replace"))


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
            try:
                out += binascii.unhexlify(text[i + 1 : i + 3])
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
    body = _B64_CHARS.match(s).group(0)  # type: ignore[union-attr]
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


def _pieces(data: bytes) -> list[tuple[str, bool]]:
    """(text, normalize it?) per chunk, as Dovecot's header decoder produces them."""
    if b"=?" not in data:
        return [(utf8_text(data), True)]
    out = []
    for chunk, charset in decode_header_chunks(data):
        if charset is None or is_utf8_charset(_clean(charset)):
            out.append((utf8_text(chunk), True))
        elif charset_known(charset):
            out.append((decode_charset(chunk, charset), True))
        else:
            out.append((utf8_text(chunk), False))
    return out


def decode_header(data: bytes) -> str:
    """A header value with its encoded words decoded, as text."""
    return "".join(text for text, _norm in _pieces(data))


def search_header(data: bytes) -> str:
    """A header value as SEARCH compares it: decoded and normalized, except words in an
    unknown charset (appended as they are, as Dovecot does)."""
    return "".join(normalize(text) if norm else text for text, norm in _pieces(data))


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

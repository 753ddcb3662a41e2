"""Content-Transfer-Encoding decoders with Dovecot's strictness.

`decode_qp` / `decode_base64` return (decoded bytes, ok). For BINARY a part that
is not ok is `NO [PARSE]`; for SEARCH the decoded bytes are used anyway, as
Dovecot's message decoder does.
"""

from __future__ import annotations

import binascii
import re

from .rfc822 import Parser

CTE_78BIT = "7bit"
CTE_BINARY = "binary"
CTE_QP = "quoted-printable"
CTE_BASE64 = "base64"
CTE_UNKNOWN = None

_KNOWN = {b"7bit": CTE_78BIT, b"8bit": CTE_78BIT, b"binary": CTE_BINARY, b"base64": CTE_BASE64, b"quoted-printable": CTE_QP}


def parse_cte(value: bytes) -> str | None:
    """A Content-Transfer-Encoding value -> one of the CTE_* names, None when unknown.

    The first token counts, and only a ';' (or nothing) may follow it, comments
    aside: "7bit; x" and "8bit (c)" are 7bit, "8bit x", "7bit/x" and
    "quoted printable" are unknown."""
    p = Parser(value)
    p.skip_lwsp()
    tok = bytearray()
    p.parse_mime_token(tok)
    if p.pos < p.end and p.data[p.pos] != 0x3B:
        return None
    return _KNOWN.get(bytes(tok).lower())


# -- quoted-printable ------------------------------------------------------------------

_HEX = b"0123456789ABCDEFabcdef"
_QP_SIMPLE = re.compile(rb"[^=\r\n \t]*")
_QP_MAX_WHITESPACE = 76


def decode_qp(data: bytes) -> tuple[bytes, bool]:
    """Quoted-printable -> bytes with CRLF line ends; ok is False on any invalid sequence."""
    out = bytearray()
    ok = True
    n = len(data)
    i = 0
    while i < n:
        m = _QP_SIMPLE.match(data, i)
        j = m.end()
        if j > i:
            out += data[i:j]
            i = j
            if i >= n:
                break
        c = data[i]
        if c == 0x0A:  # LF without CR
            out += b"\r\n"
            i += 1
        elif c == 0x0D:
            if i + 1 < n and data[i + 1] == 0x0A:
                out += b"\r\n"
                i += 2
            else:
                out.append(0x0D)
                ok = False
                i += 1
        elif c == 0x20 or c == 0x09:
            j = i
            while j < n and data[j] in (0x20, 0x09):
                j += 1
            ws = data[i:j]
            if j >= n:
                i = j  # trailing whitespace at the end is dropped
            elif data[j] == 0x0A:
                out += b"\r\n"
                i = j + 1
            elif data[j] == 0x0D:
                if j + 1 < n and data[j + 1] == 0x0A:
                    out += b"\r\n"
                    i = j + 2
                else:
                    out += ws
                    out.append(0x0D)
                    ok = False
                    i = j + 1
            else:
                if len(ws) > _QP_MAX_WHITESPACE:
                    out += ws[: _QP_MAX_WHITESPACE + 1]
                    ok = False
                else:
                    out += ws
                i = j
        else:  # '='
            if i + 1 >= n:
                out.append(0x3D)
                ok = False
                i += 1
                continue
            c1 = data[i + 1]
            if c1 in _HEX:
                if i + 2 < n and data[i + 2] in _HEX:
                    out.append(int(data[i + 1 : i + 3], 16))
                    i += 3
                else:
                    out.append(0x3D)
                    out.append(c1)
                    ok = False
                    i += 2
            elif c1 == 0x0A:
                i += 2
            elif c1 == 0x0D:
                if i + 2 < n and data[i + 2] == 0x0A:
                    i += 3
                else:
                    out += b"=\r"
                    ok = False
                    i += 2
            elif c1 == 0x20 or c1 == 0x09:
                j = i + 1
                while j < n and data[j] in (0x20, 0x09):
                    j += 1
                if j < n and data[j] == 0x0A:
                    i = j + 1
                elif j + 1 < n and data[j] == 0x0D and data[j + 1] == 0x0A:
                    i = j + 2
                else:
                    ws = data[i + 1 : j]
                    out.append(0x3D)
                    out += ws[: _QP_MAX_WHITESPACE + 1]
                    if j < n and data[j] == 0x0D:
                        out.append(0x0D)
                        j += 1
                    ok = False
                    i = j
            else:
                out.append(0x3D)
                ok = False
                i += 1
    return bytes(out), ok


# -- base64 ---------------------------------------------------------------------------

_B64_WS = b" \t\r\n"
_B64_BODY = re.compile(rb"[A-Za-z0-9+/]*")


def decode_base64(data: bytes) -> tuple[bytes, bool]:
    """Base64 with whitespace anywhere; ok is False for other characters, bad padding,
    data after the padding or a truncated last group."""
    s = data.translate(None, _B64_WS)
    m = _B64_BODY.match(s)
    body_len = m.end()
    rest = s[body_len:]
    r = body_len % 4
    ok = True
    if rest:
        if (r == 2 and rest == b"==") or (r == 3 and rest == b"="):
            pass
        else:
            ok = False
    elif r:
        ok = False
    usable = body_len - r
    try:
        out = binascii.a2b_base64(s[:usable]) if usable else b""
    except binascii.Error:  # pragma: no cover - the alphabet was checked
        return b"", False
    if r >= 2:
        # the bytes a partial group still yields (Dovecot writes them as it goes)
        tail = s[usable:body_len] + b"=" * (4 - r)
        try:
            out += binascii.a2b_base64(tail)
        except binascii.Error:  # pragma: no cover
            pass
    return out, ok

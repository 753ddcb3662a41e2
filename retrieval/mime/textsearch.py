"""What SEARCH compares against, Dovecot's way (no full-text index).

* Header keys (SUBJECT, FROM, ..., HEADER) look at the message's own header
  fields: the value with folding undone, RFC 2047 words decoded, charset
  converted to UTF-8, normalized (`encoded.normalize`). FROM/TO/CC/BCC compare
  against the address list re-written in a canonical form ("Name <a@b>"),
  SUBJECT against the value with runs of blanks made one space.
* BODY looks at the decoded (quoted-printable/base64, charset) bodies of the
  text/* and message/* parts (a part without Content-Type counts as text);
  TEXT also at every header of every part ("Name: value" lines).
* SENT* dates: the Date field's calendar date in its own zone; a missing or
  unreadable Date is 1 January 1970.
"""

from __future__ import annotations

import calendar
from typing import TYPE_CHECKING

from . import cte as _cte
from .encoded import decode_charset, normalize, search_header, utf8_text
from .rfc822 import ATEXT, Address, Parser, parse_addresses, rfc2231_parse

if TYPE_CHECKING:  # pragma: no cover
    from .message import Field, Message, Part

# -- header values ----------------------------------------------------------------------


def clean_oneline_value(data: bytes, f: Field) -> tuple[bytes, bytes, bool]:
    """(middle, value, has_newline) of a field as Dovecot's search reads it
    (MESSAGE_HEADER_PARSER_FLAG_CLEAN_ONELINE): one blank after the colon skipped,
    continuation lines appended without their line break, a leading TAB as space."""
    raw = data[f.start : f.end]
    lines = raw.split(b"\n")
    last = lines.pop()  # b"" when the field ends with its line break
    has_newline = not last
    lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
    if last:
        lines.append(last)
    first = lines[0]
    colon = f.colon - f.start
    name_end = len(f.name)
    v = first[colon + 1 :]
    skip = 1 if v[:1] in (b" ", b"\t") else 0
    middle = first[name_end : colon + 1 + skip]
    out = bytearray(v[skip:])
    for ln in lines[1:]:
        if ln[:1] == b"\t":
            out += b" " + ln[1:]
        else:
            out += ln
    return middle, bytes(out), has_newline


def compress_lwsp(value: bytes) -> bytes:
    out = bytearray()
    prev = True
    for c in value:
        if c == 0x20 or c == 0x09:
            if not prev:
                out.append(0x20)
                prev = True
        else:
            prev = False
            out.append(c)
    return bytes(out)


def _maybe_escape(s: bytes, escape_dot: bool) -> bytes:
    if all(ATEXT[c] or (not escape_dot and c == 0x2E) for c in s):
        return s
    if not any(c in (0x22, 0x5C) for c in s):
        return b'"' + s + b'"'
    return b'"' + s.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def address_write(addrs: list[Address]) -> bytes:
    """Dovecot's message_address_write(): the canonical text of an address list."""
    out = bytearray()
    first = True
    in_group = False
    for a in addrs:
        if first:
            first = False
        else:
            out += b", "
        if a.domain is None:
            if not in_group:
                if a.mailbox:
                    out += a.mailbox if b"=?" in a.mailbox else _maybe_escape(a.mailbox, True)
                else:
                    out += b'""'
                out += b": "
                first = True
            else:
                if out.endswith(b", "):
                    del out[-2:]
                elif out.endswith(b": "):
                    del out[-1:]
                out += b";"
            in_group = not in_group
        else:
            mailbox = a.mailbox or b""
            if a.name is not None:
                out += a.name if b"=?" in a.name else _maybe_escape(a.name, True)
            if a.route is not None or mailbox or a.domain:
                if a.name:
                    out += b" "
                out += b"<"
                if a.route is not None:
                    out += a.route + b":"
                out += b'""' if not mailbox else _maybe_escape(mailbox, False)
                if a.domain:
                    out += b"@" + a.domain
                out += b">"
    return bytes(out)


# -- dates ------------------------------------------------------------------------------

_MONTHS = [b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"]


def _tz_offset(tok: bytes) -> int:
    if len(tok) == 5 and tok[0] in b"+-":
        if not tok[1:].isdigit():
            return 0
        off = int(tok[1:3]) * 60 + int(tok[3:5])
        return off if tok[0] == 0x2B else -off
    if len(tok) == 1:
        c = tok.upper()[0]
        raw = tok[0]
        if c < 0x4A:  # 'J'
            return (raw - 0x41 + 1) * 60
        if c == 0x4A:
            return 0
        if c <= 0x4D:
            return (raw - 0x41) * 60
        if c < 0x5A:
            return (0x4D - raw) * 60
        return 0
    if len(tok) == 2 and tok.upper() == b"UT":
        return 0
    if len(tok) == 3:
        if tok[2] != 0x54:
            return 0
        base = {0x45: -5 * 60, 0x43: -6 * 60, 0x4D: -7 * 60, 0x50: -8 * 60}.get(tok.upper()[0])
        if base is None:
            return 0
        t1 = tok.upper()[1]
        if t1 == 0x44:
            return base + 60
        if t1 == 0x53:
            return base
    return 0


def parse_date(value: bytes) -> tuple[int, int] | None:
    """Dovecot's message_date_parse(): (UTC timestamp, zone offset in minutes) or None."""
    p = Parser(value)

    def token() -> tuple[int, bytes]:
        if p.pos >= p.end:
            return 0, b""
        buf = bytearray()
        ret = p.parse_atom(buf)
        if ret < 0:
            return -1, b""
        return (1 if buf else 0), bytes(buf)

    def at_sep() -> bool:
        return p.pos < p.end and p.data[p.pos] in (0x3A, 0x2E)

    p.skip_lwsp()
    r, tok = token()
    if r <= 0:
        return None
    if len(tok) == 3:
        if p.pos >= p.end or p.data[p.pos] != 0x2C:
            return None
        p.pos += 1
        p.skip_lwsp()
        r, tok = token()
        if r <= 0:
            return None
    if not 1 <= len(tok) <= 2 or not tok.isdigit():
        return None
    mday = int(tok)
    r, tok = token()
    if r <= 0 or len(tok) < 3:
        return None
    try:
        mon = _MONTHS.index(tok[:3].lower()) + 1
    except ValueError:
        return None
    r, tok = token()
    if r <= 0 or len(tok) not in (2, 4) or not tok.isdigit():
        return None
    year = int(tok)
    if len(tok) == 2:
        year += 2000 if year < 70 else 1900
    elif year < 1900:
        return None
    r, tok = token()
    if r <= 0 or not 1 <= len(tok) <= 2 or not tok.isdigit():
        return None
    hour = int(tok)
    if not at_sep():
        return None
    p.pos += 1
    p.skip_lwsp()
    r, tok = token()
    if r < 0 or len(tok) != 2 or not tok.isdigit():
        return None
    minute = int(tok)
    sec = 0
    if at_sep():
        p.pos += 1
        p.skip_lwsp()
        r, tok = token()
        if r <= 0 or len(tok) != 2 or not tok.isdigit():
            return None
        sec = int(tok)
    r, tok = token()
    if r < 0:
        return None
    tz = 0 if r == 0 else _tz_offset(tok)
    if mday < 1 or mday > calendar.monthrange(year, mon)[1] or hour > 23 or minute > 59 or sec > 59:
        return None
    ts = calendar.timegm((year, mon, mday, hour, minute, sec, 0, 0, 0))
    return ts - tz * 60, tz


# -- per-message search data --------------------------------------------------------------------


class SearchData:
    """The normalized texts one message offers to SEARCH, computed on first need."""

    def __init__(self, msg: Message) -> None:
        self.msg = msg
        self._parts_body: list[str] | None = None
        self._parts_text: list[str] | None = None

    # headers of the message itself
    def header_texts(self, name: str, kind: str = "plain") -> list[str] | None:
        """Normalized values of every `name` field; None when there is no such field.
        kind: "plain" (HEADER), "address" (FROM/TO/CC/BCC), "compress" (SUBJECT)."""
        msg = self.msg
        lname = name.lower().encode("utf-8", "surrogateescape")
        data = msg.data
        found = False
        out = []
        for f in msg.root.fields:
            if f.lname != lname or f.colon < 0:
                continue
            found = True
            _middle, value, _nl = clean_oneline_value(data, f)
            if kind == "address":
                value = address_write(parse_addresses(value))
            elif kind == "compress":
                value = compress_lwsp(value)
            out.append(search_header(value))
        return out if found else None

    def sent_date(self) -> tuple[int, int] | None:
        for f in self.msg.root.fields:
            if f.lname == b"date" and f.colon >= 0:
                _m, value, _nl = clean_oneline_value(self.msg.data, f)
                return parse_date(value)
        return None

    # bodies
    def part_texts(self, with_headers: bool) -> list[str]:
        """One normalized string per MIME part (headers when asked, then the text body)."""
        if with_headers:
            if self._parts_text is None:
                self._parts_text = self._collect(True)
            return self._parts_text
        if self._parts_body is None:
            self._parts_body = self._collect(False)
        return self._parts_body

    def _collect(self, with_headers: bool) -> list[str]:
        out: list[str] = []
        stack = [self.msg.root]
        while stack:
            part = stack.pop()
            text = self._part_text(part, with_headers)
            if text:
                out.append(text)
            stack.extend(reversed(part.children))
        return out

    def _part_text(self, part: Part, with_headers: bool) -> str:
        msg = self.msg
        data = msg.data
        pieces: list[str] = []
        is_text = True
        charset: str | None = None
        cte: str | None = _cte.CTE_78BIT
        for f in part.fields:
            ln = f.lname
            if f.colon < 0:
                if with_headers:
                    line = data[f.start : f.end].rstrip(b"\r\n")
                    pieces.append(normalize(utf8_text(line)))
                    if data[f.end - 1 : f.end] == b"\n":
                        pieces.append("\r\n")
                continue
            middle, value, nl = clean_oneline_value(data, f)
            if ln == b"content-type":
                p = Parser(value)
                p.skip_lwsp()
                buf = bytearray()
                ret = p.parse_content_type(buf)
                ct = bytes(buf).lower()
                is_text = ct.startswith(b"text/") or ct.startswith(b"message/")
                if ret >= 0 and charset is None:
                    for k, v in rfc2231_parse(p):
                        if k.lower() == b"charset":
                            charset = v.decode("latin-1")
                            break
            elif ln == b"content-transfer-encoding":
                cte = _cte.parse_cte(value)
            if with_headers:
                pieces.append(normalize(utf8_text(f.name)))
                pieces.append(utf8_text(middle))
                pieces.append(search_header(value))
                if nl:
                    pieces.append("\r\n")
        if with_headers and part.eoh:
            pieces.append("\r\n")
        # the body of a part with parts (a multipart's preamble and epilogue) is not
        # searched; a multipart in which no part was found is, when its last
        # Content-Type says text/* or message/* (Dovecot once it has cached the
        # message's structure, as after any FETCH of it; its very first search of a
        # message skips it)
        if is_text and not part.children and part.body_size and cte is not None:
            body = data[part.body_pos : part.end]
            if cte == _cte.CTE_QP:
                body, _ok = _cte.decode_qp(body)
            elif cte == _cte.CTE_BASE64:
                # invalid data: what was decoded before it is still searched
                body, _ok = _cte.decode_base64(body)
            pieces.append(normalize(decode_charset(body, charset)))
        return "".join(pieces)

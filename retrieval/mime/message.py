"""A stored message as IMAP sees it: structure, ENVELOPE, BODYSTRUCTURE, sections, BINARY.

`Message(data)` takes the bytes as stored (LF, CRLF or mixed line ends, NULs, a
leading mbox `From ` line that then is just the first header line, as in Dovecot's
Maildir) and parses nothing until asked. Everything it returns is in the form
Dovecot 2.3 serves: CRLF line ends (a bare LF counts as CRLF in every size and
is sent as CRLF), sizes and line counts computed the way Dovecot's message
parser computes them, including its readings of broken MIME (boundaries that
are prefixes of each other, boundaries inside headers, missing boundaries,
header lines without a colon ...).

The structure is kept as offsets into `data` (a `Part` per MIME part), so a
section is one slice plus the CRLF conversion; nothing is copied while parsing.

NUL octets: `section()` returns what goes into a `BODY[...]` literal, where
Dovecot sends NUL as 0x80 (`for_body_literal`); `binary()` returns the raw
octets for a `BINARY[...]` literal8 (0x80 too in the one case Dovecot does not
consider the result binary, see `binary()`). The session sends `binary()`'s
result as literal8 when it holds a NUL.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..imap.ast import Section
from . import cte as _cte
from .encoded import decode_header
from .rfc822 import (
    NUL_REPLACEMENT,
    Address,
    Parser,
    imap_nstring,
    imap_nstring_nolf,
    imap_string,
    imap_string_for_humans,
    parse_addresses,
    rfc2231_parse,
)
from .textsearch import SearchData

__all__ = [
    "Message",
    "Part",
    "UnknownCTE",
    "BinaryParseError",
    "for_body_literal",
    "to_crlf",
]

# part flags (Dovecot's MESSAGE_PART_FLAG_*)
IS_MIME = 0x01
MULTIPART = 0x02
RFC822 = 0x04
TEXT = 0x08
DIGEST = 0x10
OVERFLOW = 0x20  # nested too deep: shown as application/octet-stream, not parsed inside

MAX_NESTED_PARTS = 100
MAX_TOTAL_PARTS = 10000
BOUNDARY_MAX_LEN = 80


class UnknownCTE(Exception):
    """BINARY of a part whose Content-Transfer-Encoding is not one we decode: NO [UNKNOWN-CTE]."""


class BinaryParseError(Exception):
    """BINARY of a part whose encoded body is invalid: NO [PARSE]."""




def to_crlf(data: bytes) -> bytes:
    """Bare LF -> CRLF (a lone CR stays as it is). The store serves messages with it too."""
    if b"\r" not in data:
        return data.replace(b"\n", b"\r\n")
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def for_body_literal(data: bytes) -> bytes:
    """What Dovecot puts in a BODY[...] literal: NUL octets become 0x80."""
    if b"\x00" in data:
        return data.replace(b"\x00", b"\x80")
    return data


def _header_value(raw: bytes, start: int, end: int) -> bytes:
    """Dovecot's `full_value` of a header field (SKIP_INITIAL_LWSP, DROP_CR) from the
    octet after the colon to the field's end: the first line's value without leading
    blanks (just one blank dropped if it is all blank), continuation lines joined
    with LF, the CR of each CRLF dropped."""
    text = raw[start:end]
    if b"\n" in text:
        lines = text.split(b"\n")
        last = lines.pop()  # b"" when the field ends with its line break
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
        if last:
            lines.append(last)  # the message's last line, without a line break
    else:
        lines = [text]
    v = lines[0]
    s = v.lstrip(b" \t")
    if not s and v and v[0] in (0x20, 0x09):
        s = v[1:]
    lines[0] = s
    return b"\n".join(lines) if len(lines) > 1 else s


def _scan_header(data: bytes, pos: int) -> tuple[list[tuple[bytes, int, int, int]], bool]:
    """Header fields from pos to the first blank line (or the end), boundaries ignored:
    ([(lower-case name, start, colon or -1, end)], ended by a blank line)."""
    n = len(data)
    fields: list[list] = []
    continues = False
    while pos < n:
        lf = data.find(b"\n", pos)
        if lf < 0:
            line_end = next_pos = n
            nl = False
        else:
            next_pos = lf + 1
            line_end = lf - 1 if (lf > pos and data[lf - 1] == 0x0D) else lf
            nl = True
        if line_end == pos and nl and not continues:
            return [tuple(f) for f in fields], True
        if continues and fields:
            fields[-1][3] = next_pos
        else:
            colon = data.find(b":", pos, line_end)
            name = data[pos:colon].rstrip(b" \t") if colon >= 0 else data[pos:line_end]
            fields.append([name.lower(), pos, colon, next_pos])
        continues = nl and next_pos < n and data[next_pos] in (0x20, 0x09)
        pos = next_pos
    return [tuple(f) for f in fields], False


class Field:
    """One header field: its name and the raw octets it spans."""

    __slots__ = ("name", "lname", "start", "colon", "end")

    def __init__(self, name: bytes, start: int, colon: int, end: int) -> None:
        self.name = name
        self.lname = name.lower()
        self.start = start  # offset of the first line
        self.colon = colon  # offset of ':' or -1 when the line has none
        self.end = end  # offset after the last line's LF (or end of data)


class Part:
    """One MIME part as offsets into the message (Dovecot's struct message_part)."""

    __slots__ = (
        "parent",
        "children",
        "flags",
        "pos",
        "hdr_size",
        "hdr_vsize",
        "hdr_lines",
        "body_size",
        "body_vsize",
        "body_lines",
        "fields",
        "eoh",
        "eoh_nl",
        "eoh_in_header",
        "_info",
    )

    def __init__(self, parent: Part | None, pos: int, flags: int = 0) -> None:
        self.parent = parent
        self.children: list[Part] = []
        self.flags = flags
        self.pos = pos
        self.hdr_size = self.hdr_vsize = self.hdr_lines = 0
        self.body_size = self.body_vsize = self.body_lines = 0
        self.fields: list[Field] = []
        self.eoh = False  # the header ended with a blank line
        self.eoh_nl = 0  # that line's length (1 or 2)
        self.eoh_in_header = False  # ... and it counts as part of the header
        self._info: _PartInfo | None = None

    @property
    def body_pos(self) -> int:
        return self.pos + self.hdr_size

    @property
    def end(self) -> int:
        return self.pos + self.hdr_size + self.body_size

    @property
    def is_multipart(self) -> bool:
        return bool(self.flags & MULTIPART)

    @property
    def is_message(self) -> bool:
        return bool(self.flags & RFC822)


class _Boundary:
    __slots__ = ("text", "part")

    def __init__(self, text: bytes, part: Part) -> None:
        self.text = text
        self.part = part


@dataclass
class _PartInfo:
    """The Content-* data of a part (Dovecot's message_part_data)."""

    content_type: bytes | None = None
    content_subtype: bytes | None = None
    type_params: list | None = None
    cte: bytes | None = None
    content_id: bytes | None = None
    description: bytes | None = None
    md5: bytes | None = None
    disposition: bytes | None = None
    disposition_params: list | None = None
    language: list | None = None
    location: bytes | None = None


def _strdup(v: bytes) -> bytes:
    """message_header_strdup(): NUL -> U+FFFD."""
    return v.replace(b"\x00", NUL_REPLACEMENT) if b"\x00" in v else v


class _Parser:
    """Dovecot's message parser, run over the whole buffer at once."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.n = len(data)
        self.boundaries: list[_Boundary] = []
        self.total_parts = 1

    # -- sizes -------------------------------------------------------------------

    def add_body(self, part: Part, a: int, b: int) -> None:
        if b <= a:
            return
        data = self.data
        lines = data.count(b"\n", a, b)
        if lines:
            crlf = data.count(b"\r\n", a, b)
            if a > 0 and data[a] == 0x0A and data[a - 1] == 0x0D:
                crlf += 1
        else:
            crlf = 0
        part.body_size += b - a
        part.body_lines += lines
        part.body_vsize += b - a + lines - crlf

    @staticmethod
    def sum_into_parent(part: Part) -> Part:
        parent = part.parent
        assert parent is not None
        parent.body_size += part.hdr_size + part.body_size
        parent.body_vsize += part.hdr_vsize + part.body_vsize
        parent.body_lines += part.hdr_lines + part.body_lines
        return parent

    # -- boundaries --------------------------------------------------------------

    def boundary_at(self, pos: int) -> tuple[_Boundary, bool] | None:
        """The boundary whose "--" line starts at pos (longest match, newest first)."""
        data = self.data
        if not self.boundaries or not data.startswith(b"--", pos):
            return None
        if self.total_parts >= MAX_TOTAL_PARTS:
            return None
        best = None
        for b in reversed(self.boundaries):
            if (best is None or len(b.text) > len(best.text)) and data.startswith(b.text, pos + 2):
                best = b
        if best is None:
            return None
        e = pos + 2 + len(best.text)
        return best, data.startswith(b"--", e)

    def depth(self, part: Part) -> int:
        d = 0
        while part.parent is not None:
            d += 1
            part = part.parent
        return d

    # -- headers -----------------------------------------------------------------

    def parse_header(self, part: Part, pos: int) -> tuple[int, bytes | None]:
        """Read the header of `part` from pos; returns (body position, boundary to push)."""
        data, n = self.data, self.n
        fields = part.fields
        hsize = hvsize = hlines = 0
        prev_nl = 0
        continues = False
        cur: Field | None = None
        eoh = False
        while pos < n:
            if not continues and self.boundaries and data[pos] == 0x2D:
                found = self.boundary_at(pos)
                if found is not None and found[0].part is not part:
                    # the header ends at a boundary; its last line break belongs to the boundary
                    if prev_nl:
                        hlines -= 1
                        hsize -= prev_nl
                        hvsize -= 2
                        if cur is not None:
                            cur.end -= prev_nl
                        parent = part.parent
                        assert parent is not None
                        parent.body_lines += 1
                        parent.body_size += prev_nl
                        parent.body_vsize += 2
                    break
            lf = data.find(b"\n", pos)
            if lf < 0:
                line_end = next_pos = n
                nl = 0
            else:
                next_pos = lf + 1
                if lf > pos and data[lf - 1] == 0x0D:
                    line_end = lf - 1
                    nl = 2
                else:
                    line_end = lf
                    nl = 1
            if line_end == pos and nl and not continues:
                hlines += 1
                hsize += nl
                hvsize += 2
                pos = next_pos
                eoh = True
                part.eoh_nl = nl
                break
            if nl:
                hlines += 1
            hsize += next_pos - pos
            hvsize += next_pos - pos + (1 if nl == 1 else 0)
            if continues and cur is not None:
                cur.end = next_pos
            else:
                colon = data.find(b":", pos, line_end)
                if colon >= 0:
                    name = data[pos:colon].rstrip(b" \t")
                else:
                    name = data[pos:line_end]
                cur = Field(name, pos, colon, next_pos)
                fields.append(cur)
            prev_nl = nl
            continues = bool(nl) and next_pos < n and data[next_pos] in (0x20, 0x09)
            pos = next_pos
        part.hdr_size, part.hdr_vsize, part.hdr_lines = hsize, hvsize, hlines
        part.eoh = part.eoh_in_header = eoh

        # what the header says about the body
        flags = part.flags
        seen_ct = False
        boundary = None
        for f in fields:
            ln = f.lname
            if ln == b"mime-version":
                flags |= IS_MIME
            elif ln == b"content-type" and f.colon >= 0:
                flags |= IS_MIME
                if seen_ct:
                    continue
                seen_ct = True
                p = Parser(_header_value(data, f.colon + 1, f.end))
                p.skip_lwsp()
                buf = bytearray()
                ret = p.parse_content_type(buf)
                ct = bytes(buf).lower()
                if ct == b"message/rfc822":
                    flags |= RFC822
                elif ct.startswith(b"text") and (len(ct) == 4 or ct[4] == 0x2F):
                    flags |= TEXT
                elif ct.startswith(b"multipart/"):
                    flags |= MULTIPART
                    if ct[10:] == b"digest":
                        flags |= DIGEST
                if ret >= 0 and flags & MULTIPART and boundary is None:
                    for k, v in rfc2231_parse(p):
                        if k.lower() == b"boundary":
                            boundary = v
                            break
        if not flags & IS_MIME:
            flags = 0
        if not seen_ct or not flags & IS_MIME:
            if part.parent is not None and part.parent.flags & DIGEST:
                flags |= RFC822
            else:
                flags |= TEXT
        part.flags = flags
        push = boundary if (eoh and boundary is not None and flags & IS_MIME and flags & MULTIPART) else None
        return pos, push

    # -- the whole message -------------------------------------------------------

    def parse(self) -> Part:
        data, n = self.data, self.n
        root = part = Part(None, 0)
        pos = 0
        action = "header"
        first_line = False
        while True:
            if action == "header":
                pos, push = self.parse_header(part, pos)
                first_line = True
                if push is not None:
                    if self.depth(part) + 1 >= MAX_NESTED_PARTS:
                        part.flags = (part.flags & ~MULTIPART) | OVERFLOW
                        push = None
                    else:
                        # Dovecot cuts boundaries at 80 octets (so longer ones sharing
                        # that prefix are the same boundary)
                        self.boundaries.append(_Boundary(push[:BOUNDARY_MAX_LEN], part))
                if part.eoh and self.boundaries:
                    found = self.boundary_at(pos)
                    if found is not None and found[0].part is not part:
                        # a boundary right after the blank line: that line break
                        # belongs to the boundary, not to the header
                        nl = part.eoh_nl
                        part.hdr_size -= nl
                        part.hdr_vsize -= 2
                        part.hdr_lines -= 1
                        part.eoh_in_header = False
                        parent = part.parent
                        assert parent is not None
                        parent.body_size += nl
                        parent.body_vsize += 2
                        parent.body_lines += 1
                if push is not None:
                    action = "body"
                elif part.flags & RFC822:
                    if self.depth(part) + 1 < MAX_NESTED_PARTS and self.total_parts < MAX_TOTAL_PARTS:
                        child = Part(part, part.pos + part.hdr_size + part.body_size)
                        part.children.append(child)
                        self.total_parts += 1
                        part = child
                        continue
                    part.flags = (part.flags & ~RFC822) | OVERFLOW
                    action = "body" if self.boundaries else "eof"
                else:
                    action = "body" if self.boundaries else "eof"
            if action == "eof":
                self.add_body(part, pos, n)
                pos = n
                break
            # action == "body": read to the next boundary line
            found = None
            bstart = line_start = -1
            if first_line and pos < n:
                found = self.boundary_at(pos)
                if found is not None:
                    bstart = line_start = pos
            if found is None:
                i = pos
                while True:
                    j = data.find(b"\n--", i)
                    if j < 0:
                        break
                    found = self.boundary_at(j + 1)
                    if found is not None:
                        line_start = j + 1
                        bstart = j - 1 if (j > pos and data[j - 1] == 0x0D) else j
                        break
                    i = j + 1
            if found is None:
                self.add_body(part, pos, n)
                pos = n
                break
            b, epilogue = found
            self.add_body(part, pos, bstart)
            while part is not b.part:
                part = self.sum_into_parent(part)
            k = self.boundaries.index(b)
            del self.boundaries[k if epilogue else k + 1 :]
            line_end = line_start + 2 + len(b.text) + (2 if epilogue else 0)
            self.add_body(part, bstart, line_end)
            lf = data.find(b"\n", line_end)
            if lf < 0:
                self.add_body(part, line_end, n)
                pos = n
                break
            self.add_body(part, line_end, lf + 1)
            pos = lf + 1
            if not self.boundaries or self.boundaries[-1].part is not part:
                # epilogue
                first_line = True
                action = "body" if self.boundaries else "eof"
            else:
                child = Part(part, part.pos + part.hdr_size + part.body_size, IS_MIME)
                part.children.append(child)
                self.total_parts += 1
                part = child
                action = "header"
        while part.parent is not None:
            part = self.sum_into_parent(part)
        return root


class Message:
    """A message as stored; parsed on first need."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._root: Part | None = None
        self._envelope: bytes | None = None
        self._bodystructure: bytes | None = None
        self._body: bytes | None = None
        self._search: SearchData | None = None

    # -- structure ---------------------------------------------------------------

    @property
    def root(self) -> Part:
        if self._root is None:
            self._root = _Parser(self.data).parse()
        return self._root

    @property
    def size(self) -> int:
        """RFC822.SIZE: the message with every line ending as CRLF."""
        if self._root is None:
            d = self.data
            return len(d) + d.count(b"\n") - d.count(b"\r\n")
        r = self._root
        return r.hdr_vsize + r.body_vsize

    def find_part(self, path: tuple[int, ...]) -> Part | None:
        """The part a section number names, as Dovecot finds it (None: no such part).

        `1` of a non-multipart message (or part) is the message (part) itself;
        a path continues inside a message/rfc822 part into its message.
        """
        part: Part | None = self.root
        for i, num in enumerate(path):
            assert part is not None
            more = i + 1 < len(path)
            if part.flags & MULTIPART:
                kids = part.children
                idx = max(num, 1) - 1
                part = kids[idx] if idx < len(kids) else None
            elif num != 1 or (more and not part.flags & RFC822):
                part = None
            if part is None:
                return None
            if more and part.flags & RFC822 and part.children:
                part = part.children[0]
        return part

    # -- header fields -----------------------------------------------------------

    def _fields(self, part: Part, name: bytes) -> list[Field]:
        lname = name.lower()
        return [f for f in part.fields if f.lname == lname]

    def field_value(self, f: Field) -> bytes | None:
        """A field's value as Dovecot's header parser gives it (folded lines joined by LF)."""
        if f.colon < 0:
            return None
        return _header_value(self.data, f.colon + 1, f.end)

    def raw_header_values(self, name: str | bytes, part: Part | None = None) -> list[bytes]:
        """Every value of the named field in the part's header (default: the message header)."""
        if isinstance(name, str):
            name = name.encode("latin-1")
        part = part or self.root
        out = []
        for f in self._fields(part, name):
            v = self.field_value(f)
            if v is not None:
                out.append(v)
        return out

    # -- Content-* data ------------------------------------------------------------

    def header_fields(self, name: str | bytes, part: Part | None = None) -> list[str]:
        """Every value of the named field, RFC 2047 words decoded, as text."""
        return [decode_header(v) for v in self.raw_header_values(name, part)]

    @property
    def search_data(self) -> SearchData:
        """The normalized texts SEARCH compares with (see textsearch.SearchData)."""
        if self._search is None:
            self._search = SearchData(self)
        return self._search

    def _info(self, part: Part) -> _PartInfo:
        if part._info is not None:
            return part._info
        info = _PartInfo()
        if part.flags & IS_MIME:
            data = self.data
            for f in part.fields:
                ln = f.lname
                if not ln.startswith(b"content-") or f.colon < 0:
                    continue
                what = ln[8:]
                raw = _header_value(data, f.colon + 1, f.end)
                if what == b"type":
                    if info.content_type is None:
                        self._parse_content_type(info, raw)
                elif what == b"transfer-encoding":
                    if info.cte is None:
                        p = Parser(raw)
                        p.skip_lwsp()
                        tok = bytearray()
                        if p.parse_mime_token(tok) >= 0 and p.skip_lwsp() == 0 and tok:
                            info.cte = bytes(tok)
                elif what == b"id":
                    if info.content_id is None:
                        info.content_id = _strdup(raw)
                elif what == b"md5":
                    if info.md5 is None:
                        info.md5 = _strdup(raw)
                elif what == b"description":
                    if info.description is None:
                        info.description = _strdup(raw)
                elif what == b"location":
                    if info.location is None:
                        info.location = _strdup(raw)
                elif what == b"language":
                    if info.language is None:
                        p = Parser(raw)
                        langs = []
                        p.skip_lwsp()
                        while True:
                            tok = bytearray()
                            if p.parse_atom(tok) < 0:
                                break
                            langs.append(bytes(tok))
                            if p.pos >= p.end or p.data[p.pos] != 0x2C:
                                break
                            p.pos += 1
                            p.skip_lwsp()
                        if langs:
                            info.language = langs
                elif what == b"disposition":
                    if info.disposition_params is None:
                        p = Parser(raw)
                        p.skip_lwsp()
                        tok = bytearray()
                        if p.parse_mime_token(tok) >= 0:
                            info.disposition = bytes(tok)
                            params = rfc2231_parse(p)
                            info.disposition_params = params or None
        if part.flags & OVERFLOW:
            info.content_type, info.content_subtype = b"application", b"octet-stream"
        part._info = info
        return info

    @staticmethod
    def _parse_content_type(info: _PartInfo, raw: bytes) -> None:
        p = Parser(raw)
        p.skip_lwsp()
        buf = bytearray()
        ret = p.parse_content_type(buf)
        value = bytes(buf)
        slash = value.find(b"/")
        if slash >= 0:
            info.content_type = value[:slash]
            info.content_subtype = value[slash + 1 :]
        else:
            info.content_type = value
        if ret < 0:
            return
        params = rfc2231_parse(p)
        info.type_params = params or None

    def content_type(self, part: Part | None = None) -> tuple[str, str]:
        """(type, subtype) in lower case as BODYSTRUCTURE shows them."""
        part = part or self.root
        if part.flags & RFC822:
            return "message", "rfc822"
        if part.flags & MULTIPART:
            info = self._info(part)
            return "multipart", (info.content_subtype or b"").decode("latin-1").lower()
        info = self._info(part)
        if info.content_type is None:
            return "text", "plain"
        return (
            info.content_type.decode("latin-1").lower(),
            (info.content_subtype or b"").decode("latin-1").lower(),
        )

    def content_param(self, name: str, part: Part | None = None) -> bytes | None:
        part = part or self.root
        info = self._info(part)
        lname = name.lower().encode("latin-1")
        for k, v in info.type_params or ():
            if k.lower() == lname:
                return v
        return None

    def transfer_encoding(self, part: Part | None = None) -> str | None:
        """The transfer encoding BINARY decodes (Dovecot's reading): "7bit",
        "binary", "base64", "quoted-printable", or None when unknown.

        Like Dovecot, this reads the header from the part's start to the first
        blank line even past a MIME boundary, the last Content-Transfer-Encoding
        field wins, and a folded one counts as unknown (its continuation line is
        read as a value of its own, an empty one)."""
        part = part or self.root
        return self._cte_of(_scan_header(self.data, part.pos)[0])

    def _cte_of(self, fields: list[tuple[bytes, int, int, int]]) -> str | None:
        result: str | None = _cte.CTE_78BIT
        data = self.data
        for name, start, colon, end in fields:
            if name == b"content-transfer-encoding" and colon >= 0:
                lf = data.find(b"\n", start, end)
                if 0 <= lf < end - 1:
                    result = None
                else:
                    result = _cte.parse_cte(_header_value(data, colon + 1, end))
        return result

    # -- ENVELOPE ------------------------------------------------------------------

    def _envelope_of(self, part: Part) -> bytes:
        data = self.data
        strings: dict[bytes, bytes] = {}
        addrs: dict[bytes, list[Address]] = {}
        for f in part.fields:
            ln = f.lname
            if f.colon < 0:
                continue
            if ln in (b"date", b"subject", b"message-id", b"in-reply-to"):
                strings[ln] = _strdup(_header_value(data, f.colon + 1, f.end))
            elif ln in (b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc"):
                lst = addrs.setdefault(ln, [])
                lst.extend(parse_addresses(_header_value(data, f.colon + 1, f.end)))

        def addr_list(key: bytes, fallback: bytes | None = None) -> bytes:
            lst = addrs.get(key)
            if not lst and fallback is not None:
                lst = addrs.get(fallback)
            if not lst:
                return b"NIL"
            out = [b"("]
            for a in lst:
                out.append(b"(")
                out.append(b"NIL" if a.name is None else imap_string_for_humans(a.name))
                out.append(b" ")
                out.append(imap_nstring(a.route))
                out.append(b" ")
                out.append(imap_nstring(a.mailbox))
                out.append(b" ")
                out.append(imap_nstring(a.domain))
                out.append(b")")
            out.append(b")")
            return b"".join(out)

        subject = strings.get(b"subject")
        return b" ".join(
            [
                imap_nstring_nolf(strings.get(b"date")),
                b"NIL" if subject is None else imap_string_for_humans(subject),
                addr_list(b"from"),
                addr_list(b"sender", b"from"),
                addr_list(b"reply-to", b"from"),
                addr_list(b"to"),
                addr_list(b"cc"),
                addr_list(b"bcc"),
                imap_nstring_nolf(strings.get(b"in-reply-to")),
                imap_nstring_nolf(strings.get(b"message-id")),
            ]
        )

    def envelope(self) -> bytes:
        """The parenthesized ENVELOPE."""
        if self._envelope is None:
            self._envelope = b"(" + self._envelope_of(self.root) + b")"
        return self._envelope

    def addresses(self, name: str, part: Part | None = None) -> list[Address]:
        """The parsed address list of every `name` field (From, To, ...)."""
        out: list[Address] = []
        for v in self.raw_header_values(name, part):
            out.extend(parse_addresses(v))
        return out

    # -- BODYSTRUCTURE / BODY ------------------------------------------------------------

    def bodystructure(self) -> bytes:
        if self._bodystructure is None:
            out: list[bytes] = []
            self._write_part(self.root, out, True)
            self._bodystructure = b"(" + b"".join(out) + b")"
        return self._bodystructure

    def body(self) -> bytes:
        if self._body is None:
            out: list[bytes] = []
            self._write_part(self.root, out, False)
            self._body = b"(" + b"".join(out) + b")"
        return self._body

    @staticmethod
    def _params(params: list | None, out: list[bytes], default_charset: bool) -> None:
        if not params and not default_charset:
            out.append(b"NIL")
            return
        items = []
        seen_charset = False
        for k, v in params or ():
            if default_charset and k.lower() == b"charset":
                seen_charset = True
            items.append(imap_string(k) + b" " + imap_string(v))
        if default_charset and not seen_charset:
            items.append(b'"charset" "us-ascii"')
        out.append(b"(" + b" ".join(items) + b")")

    def _write_common(self, info: _PartInfo, out: list[bytes]) -> None:
        out.append(b" ")
        if info.disposition is None:
            out.append(b"NIL")
        else:
            out.append(b"(" + imap_string(info.disposition) + b" ")
            self._params(info.disposition_params, out, False)
            out.append(b")")
        out.append(b" ")
        if info.language is None:
            out.append(b"NIL")
        else:
            out.append(b"(" + b" ".join(imap_string(x) for x in info.language) + b")")
        out.append(b" ")
        out.append(imap_nstring_nolf(info.location))

    def _write_part(self, part: Part, out: list[bytes], extended: bool) -> None:
        info = self._info(part)
        if part.flags & MULTIPART:
            if part.children:
                for child in part.children:
                    out.append(b"(")
                    self._write_part(child, out, extended)
                    out.append(b")")
            elif extended:
                out.append(b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)')
            else:
                out.append(b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)')
            out.append(b" ")
            out.append(imap_string(info.content_subtype or b""))
            if not extended:
                return
            out.append(b" ")
            self._params(info.type_params, out, False)
            self._write_common(info, out)
            return
        if part.flags & RFC822:
            out.append(b'"message" "rfc822"')
            text = False
        elif info.content_type is None:
            text = True
            out.append(b'"text" "plain"')
        else:
            text = info.content_type.lower() == b"text"
            out.append(imap_string(info.content_type) + b" " + imap_string(info.content_subtype or b""))
        out.append(b" ")
        self._params(info.type_params, out, text)
        out.append(b" ")
        out.append(imap_nstring_nolf(info.content_id))
        out.append(b" ")
        out.append(imap_nstring_nolf(info.description))
        out.append(b" ")
        out.append(imap_string(info.cte) if info.cte is not None else b'"7bit"')
        out.append(b" %d" % part.body_vsize)
        if text:
            out.append(b" %d" % part.body_lines)
        elif part.flags & RFC822 and part.children:
            child = part.children[0]
            out.append(b" (")
            out.append(self._envelope_of(child))
            out.append(b") (")
            self._write_part(child, out, extended)
            out.append(b")")
            out.append(b" %d" % part.body_lines)
        if not extended:
            return
        out.append(b" ")
        out.append(imap_nstring_nolf(info.md5))
        self._write_common(info, out)

    # -- sections ------------------------------------------------------------------

    def _raw(self, a: int, b: int) -> bytes:
        return to_crlf(self.data[a:b])

    def header_bytes(self, part: Part | None = None) -> bytes:
        """The part's header as sent (CRLF), blank line included."""
        part = part or self.root
        return self._raw(part.pos, part.pos + part.hdr_size)

    def body_bytes(self, part: Part | None = None) -> bytes:
        part = part or self.root
        return self._raw(part.body_pos, part.end)

    def _filtered_header(self, part: Part, names: tuple[str, ...], exclude: bool, cached: bool = False) -> bytes:
        """The header with only (or without) the named fields, as Dovecot sends it.

        HEADER.FIELDS of the message itself (Dovecot answers it from its header
        cache): the named fields, each line ending in CRLF, then a blank line.
        Otherwise (HEADER.FIELDS.NOT, or HEADER.FIELDS of an attached message):
        the header's own lines with the fields left out or kept, and the blank
        line only if the header had one. Lines without a colon match no name."""
        wanted = {n.lower().encode("latin-1") for n in names}
        data = self.data
        out = []
        if not cached:
            # Dovecot's header filter reads from the part's start to the first blank
            # line, knowing nothing of MIME boundaries
            fields, eoh = _scan_header(data, part.pos)
            for name, start, colon, end in fields:
                if (colon >= 0 and name in wanted) != exclude:
                    out.append(data[start:end])
            if eoh:
                out.append(b"\r\n")
            return to_crlf(b"".join(out))
        for f in part.fields:
            if f.lname in wanted and f.colon >= 0:
                chunk = data[f.start : f.end]
                out.append(chunk if chunk.endswith(b"\n") else chunk + b"\r\n")
        out.append(b"\r\n")
        return to_crlf(b"".join(out))

    def section(self, section: Section, partial: tuple[int, int] | None = None) -> bytes:
        """The data of BODY[section] (or BODY[section]<start.length> with `partial`),
        exactly as Dovecot sends it in the literal: CRLF, NUL as 0x80.

        A part that does not exist gives b"" (Dovecot answers an empty string)."""
        data = self._section(section)
        if partial is not None:
            start, length = partial
            data = data[start : start + length]
        return for_body_literal(data)

    def _section(self, section: Section) -> bytes:
        text = section.text
        if section.part:
            part = self.find_part(section.part)
            if part is None:
                return b""
            if text is None:
                return self.body_bytes(part)
            if text == "MIME":
                return self.header_bytes(part)
            if not part.flags & RFC822 or not part.children:
                return b""
            part = part.children[0]
        else:
            part = self.root
            if text is None:
                return to_crlf(self.data)
        if text == "HEADER":
            return self.header_bytes(part)
        if text == "TEXT":
            return self.body_bytes(part)
        if text == "HEADER.FIELDS":
            return self._filtered_header(part, section.fields, False, cached=not section.part)
        if text == "HEADER.FIELDS.NOT":
            return self._filtered_header(part, section.fields, True)
        if text == "MIME":  # BODY[MIME] is not valid IMAP; the parser refuses it
            return self.header_bytes(part)
        raise ValueError(f"unknown section text {text!r}")

    # -- BINARY --------------------------------------------------------------------

    def binary(self, part_path: tuple[int, ...] = ()) -> bytes:
        """BINARY[part_path]: the part's body with its transfer encoding undone; for a
        multipart or message part, its body with every leaf decoded and each decoded
        part's header saying `Content-Transfer-Encoding: binary`. Raw NULs are kept
        (for the literal8), except when Dovecot does not count the result as binary
        (nothing decoded and no NUL in a header or a plain leaf): NUL is then 0x80.

        As in Dovecot, when no body needed decoding the part is sent as it is (in the
        length the conversion would have had). An unknown transfer encoding anywhere
        in the part wins over invalid encoded data.

        Raises UnknownCTE (NO [UNKNOWN-CTE]) or BinaryParseError (NO [PARSE])."""
        if not part_path:
            part: Part | None = self.root
            include_hdr = True
        else:
            part = self.find_part(part_path)
            include_hdr = False
            if part is None:
                return b""
        out: list[bytes] = []
        state = [False, False, False]  # [converted, invalid, has NULs]
        self._binary_part(part, include_hdr, out, state)
        converted, invalid, has_nuls = state
        if invalid:
            raise BinaryParseError("Invalid data in MIME part")
        result = b"".join(out)
        if not converted:
            # Dovecot then sends the original octets from the part's start, as many
            # as the conversion produced (which may run past the part's end)
            start = part.pos if include_hdr else part.body_pos
            result = self._raw(start, start + len(result))[: len(result)]
        if not converted and not has_nuls:
            # not "binary" content for Dovecot: sent as a plain literal, NUL as 0x80
            result = for_body_literal(result)
        return result

    def binary_size(self, part_path: tuple[int, ...] = ()) -> int:
        """BINARY.SIZE[part_path] (RFC 3516: the length BINARY would return)."""
        return len(self.binary(part_path))

    def _binary_part(self, part: Part, include_hdr: bool, out: list[bytes], state: list[bool]) -> None:
        data = self.data
        fields, eoh = _scan_header(data, part.pos)
        cte = self._cte_of(fields)
        if cte is None:
            raise UnknownCTE("Unknown Content-Transfer-Encoding")
        hdr_end = fields[-1][3] if fields else part.pos
        if b"\x00" in data[part.pos : hdr_end]:
            state[2] = True
        if include_hdr:
            if cte in (_cte.CTE_QP, _cte.CTE_BASE64):
                hdr = []
                for name, start, colon, end in fields:
                    if name != b"content-transfer-encoding" or colon < 0:
                        hdr.append(to_crlf(data[start:end]))
                if eoh:
                    hdr.append(b"Content-Transfer-Encoding: binary\r\n\r\n")
                out.append(b"".join(hdr))
            else:
                out.append(self._raw(part.pos, part.body_pos))
        if part.children:
            pos = part.body_pos
            for child in part.children:
                out.append(self._raw(pos, child.pos))
                self._binary_part(child, True, out, state)
                pos = child.end
            out.append(self._raw(pos, part.end))
            return
        if part.body_size == 0:
            return
        body = data[part.body_pos : part.end]
        if cte == _cte.CTE_QP:
            dec, ok = _cte.decode_qp(body)
        elif cte == _cte.CTE_BASE64:
            dec, ok = _cte.decode_base64(body)
        else:
            if b"\x00" in data[part.pos : part.end]:
                state[2] = True
            out.append(to_crlf(body))
            return
        state[0] = True
        if not ok:
            state[1] = True
        out.append(dec)

"""RFC 822/2822/2045 tokens, MIME parameters and address lists, read the way Dovecot reads them.

Everything here works on `bytes` (header values as they are in the message, 8-bit
included) and reproduces Dovecot 2.3's lenient readings, which the oracle in
/work/shared/conformance/oracle records: comments and folding anywhere, a broken
Content-Type kept as far as it parsed, RFC 2231 continuations merged but not
decoded, `MISSING_DOMAIN` / `SYNTAX_ERROR` placeholders in ENVELOPE addresses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Dovecot's replacement for NUL inside comments, quoted strings and parameters.
NUL_REPLACEMENT = "\ufffd".encode()

# atext (RFC 2822) = 1, alphanumerics and 8-bit = 2, atext that is a MIME tspecial = 4.
_ATEXT = bytearray(256)
for _c in b"!#$%&'*+-^_`{|}~":
    _ATEXT[_c] = 1
for _c in b"/=?":
    _ATEXT[_c] = 4
for _c in range(0x30, 0x3A):
    _ATEXT[_c] = 2
for _c in range(0x41, 0x5B):
    _ATEXT[_c] = 2
for _c in range(0x61, 0x7B):
    _ATEXT[_c] = 2
for _c in range(0x80, 0x100):
    _ATEXT[_c] = 2
ATEXT = bytes(_ATEXT)
# token chars of MIME (atext minus tspecials) plus '.'
_TOKEN = bytes(1 if (ATEXT[c] & 3) or c == 0x2E else 0 for c in range(256))
_ATEXT_OR_DOT = bytes(1 if ATEXT[c] or c == 0x2E else 0 for c in range(256))

SP, TAB, CR, LF = 0x20, 0x09, 0x0D, 0x0A


class Parser:
    """A cursor over a header value (Dovecot's rfc822_parser_context).

    Methods return 1 (more data follows), 0 (end of data) or -1 (syntax error),
    as Dovecot's do; callers rely on these three outcomes.
    """

    __slots__ = ("data", "pos", "end", "last_comment", "nul_replacement")

    def __init__(self, data: bytes, last_comment: bool = False) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.last_comment: bytearray | None = bytearray() if last_comment else None
        self.nul_replacement: bytes | None = None

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < self.end else -1

    def skip_comment(self) -> int:
        data, end = self.data, self.end
        lc = self.last_comment
        if lc is not None:
            del lc[:]
        self.pos += 1
        start = self.pos
        level = 1
        while self.pos < end:
            c = data[self.pos]
            if c == 0:
                if lc is not None and self.nul_replacement is not None:
                    lc += data[start : self.pos]
                    lc += self.nul_replacement
                    start = self.pos + 1
            elif c == 0x28:
                level += 1
            elif c == 0x29:
                level -= 1
                if level == 0:
                    if lc is not None:
                        lc += data[start : self.pos]
                    self.pos += 1
                    return 1 if self.pos < end else 0
            elif c == LF:
                if lc is not None:
                    stop = self.pos
                    if stop > start and data[stop - 1] == CR:
                        stop -= 1
                    lc += data[start:stop]
                    start = self.pos + 1
            elif c == 0x5C:
                self.pos += 1
                if self.pos >= end:
                    return -1
                if data[self.pos] in (CR, LF, 0):
                    self.pos -= 1
                else:
                    if lc is not None:
                        lc += data[start : self.pos - 1]
                    start = self.pos
            self.pos += 1
        return -1

    def skip_lwsp(self) -> int:
        data, end = self.data, self.end
        while self.pos < end:
            c = data[self.pos]
            if c in (SP, TAB, CR, LF):
                self.pos += 1
                continue
            if c != 0x28:
                break
            if self.skip_comment() < 0:
                return -1
        return 1 if self.pos < self.end else 0

    def _run(self, table: bytes, out: bytearray) -> int:
        data, end = self.data, self.end
        start = self.pos
        p = start
        while p < end and table[data[p]]:
            p += 1
        out += data[start:p]
        self.pos = p
        if p < end:
            return self.skip_lwsp()
        return 0

    def parse_atom(self, out: bytearray) -> int:
        if self.pos >= self.end or not ATEXT[self.data[self.pos]]:
            return -1
        return self._run(ATEXT, out)

    def parse_dot_atom(self, out: bytearray) -> int:
        data, end = self.data, self.end
        if self.pos >= end or not ATEXT[data[self.pos]]:
            return -1
        start = self.pos
        self.pos += 1
        while self.pos < end:
            if ATEXT[data[self.pos]]:
                self.pos += 1
                continue
            if start == self.pos:
                return -1
            out += data[start : self.pos]
            ret = self.skip_lwsp()
            if ret <= 0:
                return ret
            if data[self.pos] != 0x2E:
                return 1
            self.pos += 1
            out.append(0x2E)
            if self.skip_lwsp() <= 0:
                return -1
            start = self.pos
        out += data[start : self.pos]
        return 0

    def parse_mime_token(self, out: bytearray) -> int:
        return self._run(_TOKEN, out)

    def parse_quoted_string(self, out: bytearray) -> int:
        data, end = self.data, self.end
        self.pos += 1
        start = self.pos
        while self.pos < end:
            c = data[self.pos]
            if c == 0:
                if self.nul_replacement is not None:
                    out += data[start : self.pos]
                    out += self.nul_replacement
                    start = self.pos + 1
            elif c == 0x22:
                out += data[start : self.pos]
                self.pos += 1
                return self.skip_lwsp()
            elif c == LF:
                stop = self.pos
                if stop > start and data[stop - 1] == CR:
                    stop -= 1
                out += data[start:stop]
                start = self.pos + 1
            elif c == 0x5C:
                self.pos += 1
                if self.pos >= end:
                    return -1
                if data[self.pos] in (CR, LF, 0):
                    self.pos -= 1
                else:
                    out += data[start : self.pos - 1]
                    start = self.pos
            self.pos += 1
        return -1

    def parse_phrase(self, out: bytearray) -> int:
        if self.pos >= self.end:
            return 0
        if self.data[self.pos] == 0x2E:
            return -1
        while True:
            if self.data[self.pos] == 0x22:
                ret = self.parse_quoted_string(out)
            else:
                ret = self._run(_ATEXT_OR_DOT, out)
            if ret <= 0:
                return ret
            c = self.data[self.pos]
            if not ATEXT[c] and c not in (0x22, 0x2E):
                break
            out.append(SP)
        return self.skip_lwsp()

    def parse_domain_literal(self, out: bytearray) -> int:
        data, end = self.data, self.end
        start = self.pos
        self.pos += 1
        while self.pos < end:
            c = data[self.pos]
            if c == 0:
                if self.nul_replacement is not None:
                    out += data[start : self.pos]
                    out += self.nul_replacement
                    start = self.pos + 1
            elif c == 0x5B:
                return -1
            elif c == 0x5D:
                out += data[start : self.pos + 1]
                self.pos += 1
                return self.skip_lwsp()
            elif c == LF:
                stop = self.pos
                if stop > start and data[stop - 1] == CR:
                    stop -= 1
                out += data[start:stop]
                start = self.pos + 1
            elif c == 0x5C:
                self.pos += 1
                if self.pos >= end:
                    return -1
                if data[self.pos] in (CR, LF, 0):
                    out += data[start : self.pos]
                    start = self.pos
                    self.pos -= 1
            self.pos += 1
        return -1

    def parse_domain(self, out: bytearray) -> int:
        # at '@'
        self.pos += 1
        if self.skip_lwsp() <= 0:
            return -1
        if self.data[self.pos] == 0x5B:
            return self.parse_domain_literal(out)
        return self.parse_dot_atom(out)

    def parse_content_type(self, out: bytearray) -> int:
        """type "/" subtype into `out` ("" when unreadable; "type" alone kept)."""
        mark = len(out)
        if self.skip_lwsp() <= 0:
            return -1
        if self.parse_mime_token(out) <= 0 or len(out) == mark:
            return -1
        if self.data[self.pos] != 0x2F:
            del out[mark:]
            return -1
        self.pos += 1
        if self.skip_lwsp() <= 0:
            del out[mark:]
            return -1
        out.append(0x2F)
        mark2 = len(out)
        ret = self.parse_mime_token(out)
        if ret < 0 or len(out) == mark2 or (self.pos != self.end and self.data[self.pos] != 0x3B):
            del out[mark:]
            return -1
        return ret

    def parse_content_param(self) -> tuple[int, bytes | None, bytes]:
        if self.pos >= self.end:
            return 0, None, b""
        if self.data[self.pos] != 0x3B:
            return -1, None, b""
        self.pos += 1
        if self.skip_lwsp() <= 0:
            return -1, None, b""
        key = bytearray()
        if self.parse_mime_token(key) <= 0:
            return -1, None, b""
        if self.data[self.pos] != 0x3D:
            return -1, None, b""
        self.pos += 1
        value = bytearray()
        ret = self.skip_lwsp()
        if ret <= 0:
            pass
        elif self.data[self.pos] == 0x22:
            ret = self.parse_quoted_string(value)
        elif self.data[self.pos] == 0x3D:
            data, end = self.data, self.end
            p = self.pos
            while p < end and data[p] not in (0x3B, SP, TAB, CR, LF):
                p += 1
            value += data[self.pos : p]
            self.pos = p
        else:
            ret = self.parse_mime_token(value)
        return (-1 if ret < 0 else 1), bytes(key), bytes(value)


def _ascii_casefold(b: bytes) -> bytes:
    return b.lower()  # bytes.lower() only touches ASCII letters, like strcasecmp


def rfc2231_parse(p: Parser) -> list[tuple[bytes, bytes]]:
    """Parameters after the value, RFC 2231 continuations merged (key*0, key*1 ... -> key or key*),
    values not charset-decoded (Dovecot 2.3 passes `key*` values through as they are)."""
    saved = p.nul_replacement
    p.nul_replacement = NUL_REPLACEMENT
    result: list[tuple[bytes, bytes]] = []
    ext: list[tuple[bytes, int, bool, bytes]] = []  # key, idx, extended, value
    idx = 0
    while True:
        ret, key, value = p.parse_content_param()
        if ret == 0:
            break
        if ret < 0:
            if p.pos >= p.end:
                break
            p.pos += 1
            continue
        assert key is not None
        star = key.find(b"*")
        if star >= 0:
            q = star
            if q + 1 < len(key):
                q += 1
                idx = 0
                while q < len(key) and 0x30 <= key[q] <= 0x39:
                    idx = idx * 10 + key[q] - 0x30
                    q += 1
            # (a lone trailing "*" keeps the previous index, as Dovecot does)
            extended = q < len(key) and key[q] == 0x2A
            if extended:
                q += 1
            if q == len(key):
                ext.append((key[:star], idx, extended, value))
                continue
        result.append((key, value))
    p.nul_replacement = saved
    if not ext:
        return result
    ext.sort(key=lambda e: (e[0], e[1]))
    i = 0
    n = len(ext)
    while i < n:
        ok = True
        have_extended = False
        next_idx = 0
        j = i
        lkey = _ascii_casefold(ext[i][0])
        while j < n and _ascii_casefold(ext[j][0]) == lkey:
            if ext[j][1] != next_idx:
                ok = False
            if ext[j][2]:
                have_extended = True
            next_idx += 1
            j += 1
        if not ok:
            for k in range(i, j):
                key, kidx, extended, value = ext[k]
                result.append((key + b"*%d" % kidx + (b"*" if extended else b""), value))
        else:
            val = bytearray()
            if not ext[i][2] and have_extended:
                val += b"''"
            for k in range(i, j):
                if not ext[k][2] and have_extended:
                    val += ext[k][3].replace(b"%", b"%25")
                else:
                    val += ext[k][3]
            result.append((ext[i][0] + (b"*" if have_extended else b""), bytes(val)))
        i = j
    return result


# -- addresses ------------------------------------------------------------------------


@dataclass
class Address:
    """One entry of an address list as ENVELOPE shows it.

    A group start is (name=None, route=None, mailbox=group name, domain=None);
    a group end is all None.
    """

    name: bytes | None = None
    route: bytes | None = None
    mailbox: bytes | None = None
    domain: bytes | None = None
    invalid: bool = False


class _AddrParser:
    def __init__(self, data: bytes, fill_missing: bool = True, strict_dots: bool = False) -> None:
        self.p = Parser(data, last_comment=True)
        self.p.nul_replacement = NUL_REPLACEMENT
        self.fill = fill_missing
        self.strict_dots = strict_dots
        self.out: list[Address] = []
        self.addr = Address()
        self.str = bytearray()  # Dovecot's shared scratch string: partial reads leak into names

    def _add(self) -> None:
        self.out.append(self.addr)
        self.addr = Address()

    def _local_part(self) -> int:
        p = self.p
        buf = self.str
        del buf[:]
        if p.data[p.pos] == 0x22:
            ret = p.parse_quoted_string(buf)
        elif self.strict_dots:
            ret = p.parse_dot_atom(buf)
        else:
            ret = self._nonstrict_dot_atom(buf)
        if ret < 0:
            return -1
        self.addr.mailbox = bytes(buf)
        return ret

    def _nonstrict_dot_atom(self, buf: bytearray) -> int:
        """Dots anywhere ("a..b", ".a", "a."), but no blank after a dot."""
        p = self.p
        data, end = p.data, p.end
        ret = -1
        while True:
            while p.pos < end and data[p.pos] == 0x2E:
                buf.append(0x2E)
                p.pos += 1
                if p.pos == end:
                    return 0
                ret = 1
            if p.pos < end and data[p.pos] == 0x40:
                break
            ret = p.parse_atom(buf)
            if not (ret > 0 and p.pos < end and data[p.pos] == 0x2E):
                break
        return ret

    def _domain(self) -> int:
        buf = self.str
        del buf[:]
        ret = self.p.parse_domain(buf)
        if ret < 0:
            return -1
        self.addr.domain = bytes(buf)
        return ret

    def _domain_list(self) -> int:
        p = self.p
        buf = self.str
        del buf[:]
        while True:
            if p.pos >= p.end:
                return 0
            if p.data[p.pos] != 0x40:
                break
            if buf:
                buf.append(0x2C)
            buf.append(0x40)
            ret = p.parse_domain(buf)
            if ret <= 0:
                return ret
            while p.skip_lwsp() > 0 and p.data[p.pos] == 0x2C:
                p.pos += 1
        self.addr.route = bytes(buf)
        return 1

    def _angle_addr(self) -> int:
        p = self.p
        p.pos += 1  # '<'
        if p.skip_lwsp() <= 0:
            return -1
        if p.data[p.pos] == 0x40:
            if self._domain_list() > 0 and p.data[p.pos] == 0x3A:
                p.pos += 1
            else:
                if self.fill:
                    self.addr.route = b"INVALID_ROUTE"
                if p.pos >= p.end:
                    return -1
            if p.skip_lwsp() <= 0:
                return -1
        if p.data[p.pos] == 0x3E:
            pass  # <> is not a valid address
        else:
            if self._local_part() <= 0:
                return -1
            if p.data[p.pos] == 0x40:
                if self._domain() <= 0:
                    return -1
        if p.data[p.pos] != 0x3E:
            return -1
        p.pos += 1
        return p.skip_lwsp()

    def _name_addr(self) -> int:
        p = self.p
        buf = self.str
        del buf[:]
        if p.parse_phrase(buf) <= 0 or p.data[p.pos] != 0x3C:
            return -1
        self.addr.name = bytes(buf) if buf else None
        if self._angle_addr() < 0:
            if self.fill:
                self.addr.domain = b"SYNTAX_ERROR"
            self.addr.invalid = True
        return 1 if p.pos < p.end else 0

    def _addr_spec(self) -> int:
        p = self.p
        assert p.last_comment is not None
        del p.last_comment[:]
        quoted = p.data[p.pos] == 0x22
        ret2 = -2
        ret = self._local_part()
        if ret <= 0:
            self.addr.invalid = True
        if ret != 0 and p.pos < p.end and p.data[p.pos] == 0x40:
            ret2 = self._domain()
            if ret2 <= 0:
                ret = ret2
        if p.last_comment:
            self.addr.name = bytes(p.last_comment)
        elif ret2 == -2:
            # a single word so far: a mailbox if alone, else the start of a display name
            buf = self.str
            buf.append(SP)
            mark = len(buf)
            p.parse_phrase(buf)
            if len(buf) != mark:
                self.addr.mailbox = None
                self.addr.name = bytes(buf)
            elif not quoted:
                self.addr.domain = b""
            self.addr.invalid = True
            ret = -1
        return ret

    def _add_fixed(self) -> None:
        a = self.addr
        if a.mailbox is None:
            a.mailbox = b"MISSING_MAILBOX" if self.fill else b""
            a.invalid = True
        if not a.domain:
            a.domain = b"MISSING_DOMAIN" if self.fill else b""
            a.invalid = True
        self._add()

    def _mailbox(self) -> int:
        p = self.p
        start = p.pos
        ret = self._name_addr()
        if ret < 0:
            p.pos = start
            self.addr = Address()
            ret = self._addr_spec()
            a = self.addr
            if a.invalid and a.name is None and a.mailbox is not None and a.domain is None:
                a.name, a.mailbox = a.mailbox, None
        if ret < 0:
            self.addr.invalid = True
        self._add_fixed()
        return ret

    def _group(self) -> int:
        p = self.p
        buf = self.str
        del buf[:]
        if p.parse_phrase(buf) <= 0 or p.data[p.pos] != 0x3A:
            return -1
        p.pos += 1
        ret = p.skip_lwsp()
        if ret <= 0:
            self.addr.invalid = True
        self.addr.mailbox = bytes(buf)
        self._add()
        if ret > 0 and p.data[p.pos] != 0x3B:
            while True:
                self._mailbox()
                if p.pos >= p.end or p.data[p.pos] != 0x2C:
                    break
                p.pos += 1
                if p.skip_lwsp() <= 0:
                    ret = -1
                    break
        if ret >= 0:
            if p.pos >= p.end or p.data[p.pos] != 0x3B:
                ret = -1
            else:
                p.pos += 1
                ret = p.skip_lwsp()
        if ret < 0:
            self.addr.invalid = True
        self._add()
        return 0 if ret == 0 else 1

    def _address(self) -> int:
        p = self.p
        start = p.pos
        saved = len(self.out)
        ret = self._group()
        if ret < 0:
            p.pos = start
            del self.out[saved:]
            self.addr = Address()
            ret = self._mailbox()
        return ret

    def parse(self) -> list[Address]:
        p = self.p
        if p.skip_lwsp() <= 0:
            return self.out
        while True:
            if self._address() == 0:
                break
            if p.pos >= p.end or p.data[p.pos] != 0x2C:
                break
            p.pos += 1
            ret = p.skip_lwsp()
            if ret <= 0:
                if ret < 0:
                    self._add_fixed()
                break
        return self.out


def parse_addresses(value: bytes, fill_missing: bool = True, strict_dots: bool = False) -> list[Address]:
    """An address-list header value -> ENVELOPE address entries (Dovecot's reading).

    The local part takes dots anywhere (as Dovecot reads it for ENVELOPE and
    SEARCH) unless strict_dots."""
    return _AddrParser(value, fill_missing, strict_dots).parse()


# -- IMAP strings ---------------------------------------------------------------------


_NEEDS_CARE = re.compile(rb'[\x00\r\n\x80-\xff"\\]')


def imap_string(s: bytes) -> bytes:
    """A quoted string, or a literal when it holds CR, LF, NUL, 8-bit octets or many quotes."""
    if not _NEEDS_CARE.search(s):
        return b'"' + s + b'"'
    escapes = s.count(b'"') + s.count(b"\\")
    if escapes > 4 or any(c in s for c in (b"\r", b"\n", b"\x00")) or max(s) >= 0x80:
        return b"{%d}\r\n" % len(s) + s
    return b'"' + s.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def imap_nstring(s: bytes | None) -> bytes:
    return b"NIL" if s is None else imap_string(s)


def remove_newlines(s: bytes) -> bytes:
    """CR/LF dropped; a space put in where a line break joined two non-blank characters."""
    if CR not in s and LF not in s:
        return s
    out = bytearray()
    n = len(s)
    for i, c in enumerate(s):
        if c != CR and c != LF:
            out.append(c)
        elif i + 1 < n and s[i + 1] not in (SP, TAB, CR, LF):
            out.append(SP)
    return bytes(out)


def imap_nstring_nolf(s: bytes | None) -> bytes:
    return b"NIL" if s is None else imap_string(remove_newlines(s))


_BLANKS = re.compile(rb"[ \t\r\n]+")


def for_humans(s: bytes) -> bytes:
    """Dovecot's cleanup of display text: runs of SP, TAB, CR and LF -> one space,
    leading and trailing ones removed, NUL -> 0x80."""
    s = _BLANKS.sub(b" ", s).strip(b" ")
    return s.replace(b"\x00", b"\x80") if b"\x00" in s else s


def imap_string_for_humans(s: bytes) -> bytes:
    return imap_string(for_humans(s))

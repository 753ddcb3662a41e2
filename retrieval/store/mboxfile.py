"""The Unix mbox format: bytes in, structures out.

No store or index knowledge lives here: the functions find messages in mbox
bytes, read the status headers Dovecot keeps in them, show a message the way
an IMAP/POP3 client must see it, and produce the bytes to append or rewrite.

Conventions we follow, and why:

* **Separators.**  Postfix and procmail end every message with an empty
  line, so ``\\n\\nFrom `` separates messages and the empty line belongs to
  the separator, not to the message.  Some writers omit it (procmail for a
  message that already ends in an empty line; old tools); like Dovecot and
  mutt we then accept ``\\nFrom `` too, but only when the line is a valid
  From_ line with a date, so prose starting with "From " does not split.
* **Quoting.**  We write mboxrd (``>*From `` gets one more ``>``) and read
  by removing one ``>`` from ``>+From `` lines.  For mboxo writers (Postfix,
  procmail: only ``From `` is quoted) this is right except for a body line
  that originally began with ``>From `` (it loses its ``>``), the ambiguity
  every mbox reader lives with.
* **Content-Length** (Solaris mail, old Dovecot) is honoured only if it
  lands exactly on a separator or the end of file; a wrong one is ignored.
* **Status headers** as Dovecot keeps them: ``Status`` (R = \\Seen, O = not
  recent), ``X-Status`` (A F T D), ``X-Keywords``, ``X-UID`` and, in the
  first message, ``X-IMAPbase: <uidvalidity> <uidnext> [keywords...]``.
  Clients never see them, nor ``X-IMAP`` and ``Content-Length``.
* **Line ends.**  Stored mbox data is LF.  CRLF in a message is turned into
  LF when appending; clients are told sizes in CRLF octets.
"""

from __future__ import annotations

import datetime as _dt
import io
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, Final

__all__ = [
    "HIDDEN_HEADERS",
    "MboxEntry",
    "client_message",
    "client_size_crlf",
    "format_for_append",
    "format_from_line",
    "parse_from_line",
    "read_raw",
    "rewrite_headers",
    "scan",
    "scan_file",
    "separator_padding",
    "split_header",
]

SEEN: Final = "\\Seen"
ANSWERED: Final = "\\Answered"
FLAGGED: Final = "\\Flagged"
DRAFT: Final = "\\Draft"
DELETED: Final = "\\Deleted"
RECENT: Final = "\\Recent"

#: X-Status letters, in the order Dovecot writes them.
_XSTATUS: Final = (("A", ANSWERED), ("F", FLAGGED), ("T", DRAFT), ("D", DELETED))
_SYSTEM_FLAGS: Final = {f.lower(): f for f in (SEEN, ANSWERED, FLAGGED, DRAFT, DELETED)}

#: Header fields a client never sees (lower case).
HIDDEN_HEADERS: Final = frozenset(
    {b"status", b"x-status", b"x-keywords", b"x-uid", b"x-imapbase", b"x-imap", b"content-length"}
)
#: The fields :func:`rewrite_headers` owns and replaces.
_STATUS_HEADERS: Final = frozenset({b"status", b"x-status", b"x-keywords", b"x-uid", b"x-imapbase"})

DEFAULT_CHUNK_SIZE: Final = 4 << 20
#: A header longer than this is not searched further for its end; the
#: message is then treated as header-only (only broken mail gets here).
MAX_HEADER: Final = 4 << 20
#: A From_ line longer than this is not a From_ line.
_MAX_FROM_LINE: Final = 4096
_MAILER_DAEMON: Final = "MAILER-DAEMON"


@dataclass
class MboxEntry:
    """One message found in an mbox.

    Offsets are absolute file offsets.  The message itself (what
    :func:`client_message` takes) is ``[header_offset, end_offset)``;
    ``end_offset`` excludes the separator's empty line.  ``next_offset`` is
    where the next From_ line starts, or the end of the scanned data: a
    later incremental scan resumes there.
    """

    from_offset: int
    from_line: bytes
    header_offset: int
    body_offset: int
    end_offset: int
    next_offset: int
    sender: str = ""
    #: INTERNALDATE from the From_ line (Unix time); None if unparseable.
    date: int | None = None
    #: IMAP system flags from Status / X-Status (never \\Recent).
    flags: set[str] = field(default_factory=set)
    #: False once a Status header carries O (Dovecot's "not recent").
    recent: bool = True
    keywords: list[str] = field(default_factory=list)
    uid: int | None = None
    #: (uidvalidity, uidnext) from X-IMAPbase (or UW-IMAP's X-IMAP).
    imapbase: tuple[int, int] | None = None
    #: The keyword list that follows uidnext in X-IMAPbase (Dovecot's order).
    mailbox_keywords: list[str] = field(default_factory=list)
    #: UW-IMAP/pine's "DON'T DELETE THIS MESSAGE" pseudo message (X-IMAP):
    #: folder metadata, to be hidden from clients.
    pseudo: bool = False
    #: Content-Length header value if present (honoured or not).
    content_length: int | None = None

    @property
    def size(self) -> int:
        """Size of the stored message bytes (LF, still quoted, with status headers)."""
        return self.end_offset - self.header_offset


# --------------------------------------------------------------------------
# From_ line

_MONTHS: Final = {
    m: i
    for i, m in enumerate(
        (b"jan", b"feb", b"mar", b"apr", b"may", b"jun", b"jul", b"aug", b"sep", b"oct", b"nov", b"dec"),
        start=1,
    )
}
_WEEKDAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# asctime() form, with the variants Dovecot accepts: no seconds, a numeric
# or named zone before the year, a numeric zone after it, junk after that.
_ASCTIME: Final = re.compile(
    rb"[A-Za-z]{3} +(?P<mon>[A-Za-z]{3}) +(?P<day>\d{1,2}) +"
    rb"(?P<H>\d\d):(?P<M>\d\d)(?::(?P<S>\d\d))? +"
    rb"(?:(?P<tz1>[+-]\d{4}) +|(?P<tzname>[A-Za-z][^ \d]*) +)?"
    rb"(?P<Y>\d{4})(?![0-9])(?: +(?P<tz2>[+-]\d{4})(?![0-9]))?"
)
# RFC 822 form some tools write: "Thu, 9 Nov 2002 22:33:52 +0000".
_RFC822: Final = re.compile(
    rb"[A-Za-z]{3}, +(?P<day>\d{1,2}) +(?P<mon>[A-Za-z]{3}) +(?P<Y>\d{4}) +"
    rb"(?P<H>\d\d):(?P<M>\d\d)(?::(?P<S>\d\d))?(?![0-9])(?: +(?P<tz2>[+-]\d{4})(?![0-9]))?"
)


def _timestamp(m: re.Match[bytes]) -> int | None:
    mon = _MONTHS.get(m["mon"].lower())
    if mon is None:
        return None
    year, day, hour, minute = int(m["Y"]), int(m["day"]) or 1, int(m["H"]), int(m["M"])
    sec = int(m["S"] or 0)
    try:
        _dt.datetime(year, mon, day, hour, minute, min(sec, 59))
    except ValueError:
        return None
    groups = m.groupdict()
    tz = groups.get("tz1") or groups.get("tz2")
    try:
        if tz is not None:
            off = (int(tz[1:3]) * 60 + int(tz[3:5])) * 60
            if tz[:1] == b"-":
                off = -off
            utc = _dt.datetime(year, mon, day, hour, minute, tzinfo=_dt.timezone.utc)
            return int(utc.timestamp()) + sec - off
        # No zone: local time, as Postfix, procmail and Dovecot write it.
        return int(time.mktime((year, mon, day, hour, minute, sec, 0, 0, -1)))
    except (OverflowError, ValueError, OSError):
        return None


def _sender_end(rest: bytes) -> int:
    """End of the sender token; a quoted local part may contain spaces."""
    i = 0
    if rest.startswith(b'"'):
        i, esc = 1, False
        while i < len(rest) and (rest[i] != 0x22 or esc):
            esc = rest[i] == 0x5C and not esc
            i += 1
        i += 1
    j = rest.find(b" ", i)
    return len(rest) if j < 0 else j


def parse_from_line(line: bytes) -> tuple[str, int | None]:
    """``From sender Www Mmm dd hh:mm:ss yyyy`` -> (sender, unix time).

    Accepts what Dovecot's mbox_from_parse() accepts (missing seconds,
    time zones before or after the year, RFC 822 dates, a quoted sender)
    and anything after the year; an unparseable date gives None."""
    rest = line[5:] if line.startswith(b"From ") else line
    rest = rest.rstrip(b"\r\n")
    end = _sender_end(rest)
    sender = rest[:end]
    start = end
    while start < len(rest) and rest[start] == 0x20:
        start += 1
    m = _ASCTIME.match(rest, start) or _RFC822.match(rest, start)
    if m is None:
        # No sender at all ("From Mon Jan ..."), or an unquoted sender with
        # spaces: take the first date found after a space.
        for cand in _ASCTIME.finditer(rest):
            if cand.start() == 0 or rest[cand.start() - 1] == 0x20:
                m = cand
                sender = rest[: cand.start()].strip(b" ")
                break
    date = _timestamp(m) if m is not None else None
    return sender.decode("utf-8", "replace"), date


def _clean_sender(sender: str) -> bytes:
    """Envelope sender for a From_ line: never empty, never more than one
    word (whitespace and controls become ``_``)."""
    s = "".join("_" if (c.isspace() or ord(c) < 32 or ord(c) == 127) else c for c in sender)
    return (s or _MAILER_DAEMON).encode("utf-8", "replace")


def format_from_line(sender: str, when: float) -> bytes:
    """``From sender  Www Mmm dd hh:mm:ss yyyy`` (no newline), local time.

    Two spaces and asctime()'s space-padded day, exactly as Postfix writes
    it; local time because Postfix, procmail and Dovecot all read a zoneless
    From_ date as local time."""
    tm = time.localtime(when)
    stamp = "%s %s %2d %02d:%02d:%02d %04d" % (
        _WEEKDAYS[tm.tm_wday],
        _MONTH_NAMES[tm.tm_mon - 1],
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        tm.tm_year,
    )
    return b"From " + _clean_sender(sender) + b"  " + stamp.encode("ascii")


def _valid_from_line(line: bytes) -> bool:
    return parse_from_line(line)[1] is not None


# --------------------------------------------------------------------------
# header helpers (shared by reader and writer so both agree on boundaries)


def _header_end(msg: bytes) -> tuple[int, int]:
    """(start of the empty line ending the header, start of the body).

    The empty line may be LF or CRLF.  Without one, the whole message is
    header: (len, len)."""
    if msg.startswith(b"\n"):
        return 0, 1
    if msg.startswith(b"\r\n"):
        return 0, 2
    i = msg.find(b"\n\n")
    j = msg.find(b"\n\r\n", 0, (i + 3) if i >= 0 else len(msg))
    if j >= 0 and (i < 0 or j < i):
        return j + 1, j + 3
    if i >= 0:
        return i + 1, i + 2
    return len(msg), len(msg)


def split_header(msg: bytes) -> tuple[bytes, bytes]:
    """(header including its last line end, rest from the empty line on)."""
    hb, _ = _header_end(msg)
    return msg[:hb], msg[hb:]


_FIELD_NAME: Final = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")


def _fields(header: bytes) -> Iterator[tuple[bytes | None, bytes]]:
    """Yield (lower-case name or None, raw field bytes incl. continuation
    lines) for each field of ``header``; lines that are not fields come out
    with name None, so joining everything gives ``header`` back."""
    name: bytes | None = None
    cur: list[bytes] = []
    pos = 0
    n = len(header)
    while pos < n:
        nl = header.find(b"\n", pos)
        end = n if nl < 0 else nl + 1
        line = header[pos:end]
        if cur and line[:1] in (b" ", b"\t"):
            cur.append(line)
        else:
            if cur:
                yield name, b"".join(cur)
            m = _FIELD_NAME.match(line)
            name = m.group(1).lower() if m else None
            cur = [line]
        pos = end
    if cur:
        yield name, b"".join(cur)


def _strip_fields(header: bytes, names: frozenset[bytes]) -> bytes:
    return b"".join(raw for name, raw in _fields(header) if name not in names)


_QUOTED_FROM: Final = re.compile(rb"^>(>*From )", re.M)
_TO_QUOTE: Final = re.compile(rb"^(>*From )", re.M)


def _unquote(data: bytes) -> bytes:
    return _QUOTED_FROM.sub(rb"\1", data) if b">From " in data else data


def _quote(data: bytes) -> bytes:
    return _TO_QUOTE.sub(rb">\1", data) if b"From " in data else data


# --------------------------------------------------------------------------
# status headers


_HIDDEN_FIELD: Final = re.compile(
    rb"^(status|x-status|x-keywords|x-uid|x-imapbase|x-imap|content-length)[ \t]*:"
    rb"([^\n]*(?:\n[ \t][^\n]*)*)",
    re.I | re.M,
)


def _meta(header: bytes, entry: MboxEntry) -> None:
    """Fill the entry's flags/keywords/uid/imapbase from its header.

    A regex finds just the hidden fields: this runs once per message of
    a possibly huge mbox, so it must not walk every header line in Python."""
    seen: set[bytes] = set()
    for m in _HIDDEN_FIELD.finditer(header):
        name = m.group(1).lower()
        if name in seen:
            continue
        seen.add(name)  # the first occurrence wins, as in Dovecot
        value = b" ".join(m.group(2).split())
        if name == b"status":
            if b"R" in value:
                entry.flags.add(SEEN)
            if b"O" in value:
                entry.recent = False
        elif name == b"x-status":
            for letter, flag in _XSTATUS:
                if letter.encode() in value:
                    entry.flags.add(flag)
        elif name == b"x-keywords":
            entry.keywords = [k.decode("utf-8", "replace") for k in value.split()]
        elif name == b"x-uid":
            tok = value.split()[:1]
            if tok and tok[0].isdigit() and int(tok[0]) > 0:
                entry.uid = int(tok[0])
        elif name in (b"x-imapbase", b"x-imap"):
            if name == b"x-imap":
                entry.pseudo = True
            toks = value.split()
            if (
                entry.imapbase is None
                and len(toks) >= 2
                and toks[0].isdigit()
                and toks[1].isdigit()
            ):
                entry.imapbase = (int(toks[0]), int(toks[1]))
                entry.mailbox_keywords = [k.decode("utf-8", "replace") for k in toks[2:]]
        elif name == b"content-length":
            if value.isdigit():
                entry.content_length = int(value)


def _check_keyword(k: str) -> bytes:
    b = k.encode("utf-8")
    if not b or any(c <= 0x20 or c == 0x7F for c in b):
        raise ValueError(f"keyword {k!r} cannot be stored in X-Keywords")
    return b


def _status_block(
    flags: Iterable[str],
    keywords: Iterable[str],
    uid: int | None,
    recent: bool,
    imapbase: tuple[int, int] | None,
    mailbox_keywords: Iterable[str],
) -> bytes:
    """The status header fields, only those that carry something, in the
    order Dovecot writes them."""
    system: set[str] = set()
    for f in flags:
        canon = _SYSTEM_FLAGS.get(f.lower())
        if canon is None:
            if f.lower() == RECENT.lower():
                continue  # session state, never stored
            raise ValueError(f"unknown system flag {f!r} (keywords go in keywords=)")
        system.add(canon)
    out: list[bytes] = []
    if imapbase is not None:
        validity, uidnext = imapbase
        kws = b"".join(b" " + _check_keyword(k) for k in mailbox_keywords)
        out.append(b"X-IMAPbase: %d %010d%s\n" % (validity, uidnext, kws))
    if uid is not None:
        if uid <= 0:
            raise ValueError(f"UID must be positive, not {uid}")
        out.append(b"X-UID: %d\n" % uid)
    status = ("R" if SEEN in system else "") + ("" if recent else "O")
    if status:
        out.append(b"Status: " + status.encode() + b"\n")
    xstatus = "".join(letter for letter, flag in _XSTATUS if flag in system)
    if xstatus:
        out.append(b"X-Status: " + xstatus.encode() + b"\n")
    kw = list(dict.fromkeys(_check_keyword(k) for k in keywords))
    if kw:
        out.append(b"X-Keywords: " + b" ".join(kw) + b"\n")
    return b"".join(out)


# --------------------------------------------------------------------------
# client view


def client_message(raw_message: bytes) -> bytes:
    """The message as an IMAP/POP3 client sees it.

    ``raw_message`` is ``[header_offset, end_offset)`` of an entry.  Hidden
    header fields go (with their continuation lines), one ``>`` goes from
    each ``>+From `` line; line ends stay as stored."""
    hb, _ = _header_end(raw_message)
    header = _strip_fields(raw_message[:hb], HIDDEN_HEADERS)
    return _unquote(header + raw_message[hb:])


def client_size_crlf(client_bytes: bytes) -> int:
    """RFC822.SIZE / POP3 octets: every bare LF counts as CRLF."""
    return len(client_bytes) + client_bytes.count(b"\n") - client_bytes.count(b"\r\n")


# --------------------------------------------------------------------------
# writing


def _normalize(message: bytes) -> bytes:
    msg = message.replace(b"\r\n", b"\n")
    return msg if msg.endswith(b"\n") else msg + b"\n"


def format_for_append(
    message: bytes,
    *,
    sender: str,
    when: float,
    flags: Iterable[str] = (),
    keywords: Iterable[str] = (),
    uid: int | None = None,
    recent: bool = True,
) -> bytes:
    """The bytes to append to an mbox for one message.

    From_ line, the message with CRLF turned into LF and a final LF added
    if missing, any status/hidden headers it carried removed (a sender must
    not set our flags or UIDs), ours inserted at the end of the header,
    mboxrd quoting, then the separating empty line.  Use
    :func:`separator_padding` first if the mbox may not end in an empty
    line.  An empty ``sender`` becomes MAILER-DAEMON."""
    msg = _normalize(message)
    hb, _ = _header_end(msg)
    header = _strip_fields(msg[:hb], HIDDEN_HEADERS)
    status = _status_block(flags, keywords, uid, recent, None, ())
    body = _quote(header + status + msg[hb:])
    return format_from_line(sender, when) + b"\n" + body + b"\n"


def rewrite_headers(
    raw_message: bytes,
    *,
    flags: Iterable[str],
    keywords: Iterable[str],
    uid: int | None,
    imapbase: tuple[int, int] | None = None,
    mailbox_keywords: Sequence[str] = (),
    recent: bool = False,
) -> bytes:
    """Replace the status headers of one stored message.

    ``raw_message`` is ``[header_offset, end_offset)``; Status, X-Status,
    X-Keywords, X-UID and X-IMAPbase are removed and the new ones inserted
    at the end of the header; everything else (other headers, their order,
    quoting, body, line ends, Content-Length whose body it still measures)
    stays byte-identical.  Pass ``imapbase`` for the first message only."""
    hb, _ = _header_end(raw_message)
    header = _strip_fields(raw_message[:hb], _STATUS_HEADERS)
    if header and not header.endswith(b"\n"):
        header += b"\n"  # a header-only message without final newline
    status = _status_block(flags, keywords, uid, recent, imapbase, mailbox_keywords)
    return header + status + raw_message[hb:]


def separator_padding(last_bytes: bytes) -> bytes:
    """What to write before appending, given the mbox's last two bytes, so
    the new From_ line follows an empty line (b"" for an empty file)."""
    if not last_bytes or last_bytes.endswith(b"\n\n"):
        return b""
    if last_bytes.endswith(b"\n"):
        return b"" if len(last_bytes) == 1 else b"\n"
    return b"\n\n"


# --------------------------------------------------------------------------
# scanning


class _Window:
    """A sliding read window over a seekable binary file.

    Keeps only what the scanner still needs, so a 1 GB mbox is scanned in
    chunk-sized memory."""

    def __init__(self, f: BinaryIO, start: int, chunk: int) -> None:
        self.f = f
        self.chunk = chunk
        self.buf = bytearray()
        self.base = start
        self.eof = False

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    def fill(self) -> bool:
        if self.eof:
            return False
        self.f.seek(self.end)
        data = self.f.read(self.chunk)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def ensure(self, end: int) -> bool:
        """Make the window reach ``end``; False if the file is shorter."""
        while self.end < end:
            if not self.fill():
                return False
        return True

    def get(self, a: int, b: int) -> bytes:
        assert a >= self.base, "window already released"
        self.ensure(b)
        return bytes(self.buf[a - self.base : max(a, b) - self.base])

    def byte(self, off: int) -> int | None:
        if off < self.base or not self.ensure(off + 1):
            return None
        return self.buf[off - self.base]

    def pread(self, off: int, n: int) -> bytes:
        """Read without moving the window (Content-Length probes far ahead)."""
        if self.base <= off and off + n <= self.end:
            return bytes(self.buf[off - self.base : off - self.base + n])
        self.f.seek(off)
        return self.f.read(n)

    def release(self, off: int) -> None:
        """Forget everything before ``off`` (may jump past the window)."""
        if off >= self.end:
            self.buf.clear()
            self.base = off
        elif off > self.base:
            del self.buf[: off - self.base]
            self.base = off

    def find(self, pat: bytes, start: int, limit: int | None = None, *, keep: int | None = None) -> int:
        """Absolute offset of ``pat`` at or after ``start`` (ending before
        ``limit``), reading on as needed; -1 if absent.  With ``keep``,
        data more than ``keep`` bytes before the search point is dropped."""
        pos = start
        while True:
            stop = self.end if limit is None else min(self.end, limit)
            if stop - pos >= len(pat):
                i = self.buf.find(pat, pos - self.base, stop - self.base)
                if i >= 0:
                    return i + self.base
            if limit is not None and self.end >= limit:
                return -1
            pos = max(pos, self.end - len(pat) + 1)
            if keep is not None:
                self.release(pos - keep)
            if not self.fill():
                return -1

    def size(self) -> int:
        """File size, for the EOF probe of an honoured Content-Length."""
        self.f.seek(0, io.SEEK_END)
        return self.f.tell()


def _blank_before(w: _Window, i: int) -> int:
    """Length of the empty line ending at ``i`` (the LF of ``\\nFrom ``),
    0 if the line before the From_ line is not empty."""
    prev = w.byte(i - 1)
    if prev == 0x0A:
        return 1
    if prev == 0x0D and w.byte(i - 2) == 0x0A:
        return 2
    return 0


def _from_line_at(w: _Window, off: int) -> bytes:
    nl = w.find(b"\n", off, off + _MAX_FROM_LINE)
    if nl < 0:
        w.ensure(off + _MAX_FROM_LINE)
        end = min(w.end, off + _MAX_FROM_LINE)
        return w.get(off, end)
    return w.get(off, nl)


def _next_separator(
    w: _Window, start: int, limit: int | None, *, keep: int | None = None
) -> tuple[int, int] | None:
    """First separator whose LF is at or after ``start`` (before ``limit``):
    (end of the previous message, offset of the From_ line)."""
    pos = start
    while True:
        i = w.find(b"\nFrom ", pos, None if limit is None else limit + 6, keep=keep)
        if i < 0:
            return None
        blank = _blank_before(w, i)
        if blank:
            return i + 1 - blank, i + 1
        if _valid_from_line(_from_line_at(w, i + 1).rstrip(b"\r")):
            return i + 1, i + 1
        pos = i + 1


def _content_length_end(w: _Window, body: int, length: int) -> tuple[int, int | None] | None:
    """(message end, next From_ offset or None at EOF) if a Content-Length
    lands on a separator or the end of file, else None."""
    p = body + length
    probe = w.pread(p, 7)
    if probe == b"":
        return (p, None) if w.size() == p else None
    if probe in (b"\n", b"\r\n"):
        return p, None  # the final separator line, then EOF
    if probe.startswith(b"\nFrom "):
        return p, p + 1
    if probe.startswith(b"\r\nFrom "):
        return p, p + 2
    if probe.startswith(b"From ") and p > 0 and w.pread(p - 1, 1) == b"\n":
        return p, p
    return None


def _first_from(w: _Window, start: int) -> int | None:
    """The first From_ line at or after ``start``; junk before it is skipped."""
    if w.get(start, start + 5) == b"From ":
        return start
    i = w.find(b"\nFrom ", start, keep=8)
    return None if i < 0 else i + 1


def _scan(f: BinaryIO, start: int, chunk: int, bias: int) -> Iterator[MboxEntry]:
    w = _Window(f, start, chunk)
    from_off = _first_from(w, start)
    while from_off is not None:
        w.release(from_off)
        nl = w.find(b"\n", from_off, from_off + _MAX_FROM_LINE)
        if nl < 0 and w.eof and w.end < from_off + _MAX_FROM_LINE:
            # A From_ line ending at EOF: an empty last message.
            eof = w.end
            yield _entry(from_off, w.get(from_off, eof).rstrip(b"\r"), eof, eof, eof, eof, b"", bias)
            return
        if nl < 0:  # absurdly long "From_ line": not ours to judge, cut it
            from_line = w.get(from_off, from_off + _MAX_FROM_LINE)
            nl = w.find(b"\n", from_off + _MAX_FROM_LINE, keep=8)
            if nl < 0:
                eof = _file_end(w)
                yield _entry(from_off, from_line, eof, eof, eof, eof, b"", bias)
                return
        else:
            from_line = w.get(from_off, nl).rstrip(b"\r")
        hdr = nl + 1

        # Header end: the first empty line, looked for within MAX_HEADER.
        limit = hdr + MAX_HEADER
        w.ensure(hdr + 2)
        head2 = w.get(hdr, hdr + 2)
        if head2[:1] == b"\n":
            blank, body = hdr, hdr + 1
        elif head2 == b"\r\n":
            blank, body = hdr, hdr + 2
        else:
            i = w.find(b"\n\n", hdr, limit)
            j = w.find(b"\n\r\n", hdr, (i + 3) if i >= 0 else limit)
            if j >= 0 and (i < 0 or j < i):
                blank, body = j + 1, j + 3
            elif i >= 0:
                blank, body = i + 1, i + 2
            else:
                blank = body = -1

        # A separator before the body starts: a message without body.
        sep = _next_separator(w, hdr - 1, body - 1 if blank >= 0 else limit)
        if sep is not None:
            end, nxt = sep
            header = w.get(hdr, min(end, limit))
            yield _entry(from_off, from_line, hdr, end, end, nxt, header, bias)
            from_off = nxt
            continue

        end: int
        nxt: int | None
        if blank < 0:
            # No empty line within MAX_HEADER nor a separator: broken mail,
            # all header; it ends at the next separator or EOF.
            entry = _entry(from_off, from_line, hdr, hdr, hdr, hdr, w.get(hdr, min(limit, w.end)), bias)
            sep = None
            if not (w.eof and w.end <= limit):
                sep = _next_separator(w, limit + 1, None, keep=8)
            end, nxt = sep if sep is not None else (_eof_end(w, hdr), None)
            body = end
        else:
            entry = _entry(from_off, from_line, hdr, body, body, body, w.get(hdr, blank), bias)
            cl = None
            if entry.content_length is not None:
                cl = _content_length_end(w, body, entry.content_length)
            if cl is not None:
                end, nxt = cl
            else:
                sep = _next_separator(w, body, None, keep=8)
                end, nxt = sep if sep is not None else (_eof_end(w, hdr), None)
        entry.body_offset = min(body, end) + bias
        entry.end_offset = end + bias
        entry.next_offset = (nxt if nxt is not None else w.size()) + bias
        yield entry
        from_off = nxt


def _file_end(w: _Window) -> int:
    while w.fill():
        w.release(w.end - 8)
    return w.end


def _eof_end(w: _Window, hdr: int) -> int:
    """End of the last message: EOF minus the final separator's empty line
    (which may directly follow the From_ line's LF at ``hdr - 1``)."""
    eof = _file_end(w)
    if eof - 2 >= hdr - 1 and w.pread(eof - 2, 2) == b"\n\n":
        return eof - 1
    if eof - 3 >= hdr - 1 and w.pread(eof - 3, 3) == b"\n\r\n":
        return eof - 2
    return eof


def _entry(
    from_off: int,
    from_line: bytes,
    hdr: int,
    body: int,
    end: int,
    nxt: int,
    header: bytes,
    bias: int,
) -> MboxEntry:
    sender, date = parse_from_line(from_line)
    e = MboxEntry(
        from_offset=from_off + bias,
        from_line=from_line,
        header_offset=hdr + bias,
        body_offset=min(body, end) + bias,
        end_offset=end + bias,
        next_offset=nxt + bias,
        sender=sender,
        date=date,
    )
    _meta(header, e)
    return e


def scan_file(
    f: BinaryIO, start_offset: int = 0, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Iterator[MboxEntry]:
    """Scan a seekable binary file from ``start_offset`` (a From_ line, or
    the start of the file), reading ``chunk_size`` bytes at a time.

    Memory stays around one chunk plus one message header whatever the
    file size.  Bytes before the first From_ line are skipped.  The caller
    holds at least a shared lock; the file position is left undefined."""
    if chunk_size < 16:
        raise ValueError("chunk_size must be at least 16 bytes")
    return _scan(f, start_offset, chunk_size, 0)


def scan(data: bytes, base_offset: int = 0) -> list[MboxEntry]:
    """Scan mbox bytes held in memory; offsets are ``base_offset`` + index."""
    return list(_scan(io.BytesIO(data), 0, max(len(data), 16), base_offset))


def read_raw(f: BinaryIO, entry: MboxEntry) -> bytes:
    """The stored message bytes of ``entry`` (input to :func:`client_message`)."""
    f.seek(entry.header_offset)
    return f.read(entry.end_offset - entry.header_offset)

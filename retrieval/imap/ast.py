"""What the IMAP parser produces and the session consumes: plain data, no I/O.

The parser (`parser.py`) turns a complete command (line plus literals) into
a `Command`; the session dispatches on `Command.name`. Every argument is
already checked against RFC 3501's grammar (and the extensions'), so the
session deals in meaning only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Union

# -- sequence sets --------------------------------------------------------------

STAR = -1  # "*" in a sequence set: the largest number in use


@dataclass(frozen=True)
class SeqSet:
    """RFC 3501 sequence-set: ranges of (low, high), either may be STAR; or "$" (SEARCHRES)."""

    ranges: tuple[tuple[int, int], ...] = ()
    saved: bool = False  # "$": the saved search result (RFC 5182)

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Ranges with STAR replaced by `largest`, each (low <= high)."""
        out = []
        for a, b in self.ranges:
            a = largest if a == STAR else a
            b = largest if b == STAR else b
            out.append((min(a, b), max(a, b)))
        return out

    def contains(self, number: int, largest: int) -> bool:
        return any(a <= number <= b for a, b in self.resolve(largest))


# -- search keys ----------------------------------------------------------------
# A search program is a tree of tuples; strings are already decoded from the
# CHARSET to str, dates are datetime.date, numbers int, flags canonical.
#
#   ("ALL",) ("ANSWERED",) ("DELETED",) ("DRAFT",) ("FLAGGED",) ("NEW",) ("OLD",)
#   ("RECENT",) ("SEEN",) ("UNANSWERED",) ("UNDELETED",) ("UNDRAFT",) ("UNFLAGGED",)
#   ("UNSEEN",)
#   ("KEYWORD", flag) ("UNKEYWORD", flag)
#   ("BCC"|"CC"|"FROM"|"TO"|"SUBJECT"|"BODY"|"TEXT", str)
#   ("HEADER", field_name, str)          empty str: message has the field
#   ("BEFORE"|"ON"|"SINCE"|"SENTBEFORE"|"SENTON"|"SENTSINCE", date)
#   ("LARGER"|"SMALLER", int)
#   ("UID", SeqSet) ("SEQ", SeqSet)
#   ("NOT", key) ("OR", key, key) ("AND", (key, key, ...))
#   ("MODSEQ", int)                       CONDSTORE (entry name/type ignored)
#   ("OLDER"|"YOUNGER", seconds)          WITHIN
#   ("SAVEDBEFORE"|"SAVEDON"|"SAVEDSINCE", date)  SAVEDATE; ("SAVEDATESUPPORTED",)

SearchKey = tuple


@dataclass(frozen=True)
class SearchProgram:
    key: SearchKey  # ("AND", (...)) of the top-level keys
    charset: str = "US-ASCII"  # "US-ASCII", "UTF-8", or the client's name upper-cased
    # ESEARCH (RFC 4731): RETURN (MIN MAX ALL COUNT SAVE); None = plain SEARCH response
    returns: tuple[str, ...] | None = None


# -- FETCH --------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """BODY[...] / BINARY[...] section: part path and what of it."""

    part: tuple[int, ...] = ()
    # None (whole part), "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"
    text: str | None = None
    fields: tuple[str, ...] = ()  # upper-cased header field names for HEADER.FIELDS(.NOT)


@dataclass(frozen=True)
class FetchAtt:
    """One FETCH data item.

    name: ENVELOPE FLAGS INTERNALDATE RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT
          BODY BODYSTRUCTURE UID MODSEQ SAVEDATE
          BODY[] (section set, peek for BODY.PEEK) BINARY[] BINARY.SIZE[]
    partial: (start, length) for <start.length>
    """

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None


@dataclass(frozen=True)
class FetchRequest:
    atts: tuple[FetchAtt, ...]
    changed_since: int | None = None  # CONDSTORE
    vanished: bool = False  # QRESYNC


# -- other arguments ------------------------------------------------------------------


@dataclass(frozen=True)
class StoreRequest:
    mode: str  # "set" | "add" | "remove"
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None


@dataclass(frozen=True)
class AppendMessage:
    flags: tuple[str, ...]
    internaldate: dt.datetime | None
    data: bytes
    binary: bool = False  # sent as literal8 (~{n})


@dataclass(frozen=True)
class ListRequest:
    reference: str
    patterns: tuple[str, ...]
    select_options: tuple[str, ...] = ()  # SUBSCRIBED REMOTE RECURSIVEMATCH SPECIAL-USE
    return_options: tuple[str, ...] = ()  # SUBSCRIBED CHILDREN SPECIAL-USE
    status_items: tuple[str, ...] = ()  # LIST-STATUS: RETURN (STATUS (...))


@dataclass(frozen=True)
class SelectParams:
    condstore: bool = False  # CONDSTORE given explicitly (QRESYNC alone leaves it False)
    # QRESYNC (uidvalidity, modseq, known uids, (seq match, uid match))
    qresync: tuple[int, int, SeqSet | None, tuple[SeqSet, SeqSet] | None] | None = None


Arg = Union[str, bytes, int, SeqSet, SearchProgram, FetchRequest, StoreRequest, ListRequest, SelectParams, tuple, None]


@dataclass(frozen=True)
class Command:
    """A parsed command. `name` is upper case; `uid` is True for UID FETCH/STORE/...

    args per name (mailbox names are decoded from modified UTF-7 to str):
      CAPABILITY NOOP LOGOUT STARTTLS CHECK CLOSE EXPUNGE UNSELECT IDLE NAMESPACE: ()
      LOGIN: (user: str, password: str)   (UTF-8; undecodable bytes kept via surrogateescape)
      AUTHENTICATE: (mechanism: str, initial_response: bytes | None)
      SELECT / EXAMINE: (mailbox, SelectParams)
      CREATE: (mailbox, special_use: tuple[str, ...]) ; DELETE SUBSCRIBE UNSUBSCRIBE: (mailbox,)
      RENAME: (old, new)
      LIST: (ListRequest,) ; LSUB: (reference, pattern)
        (patterns and names are INBOX-normalised as whole names; the reference is not;
        return_options holds "STATUS" when RETURN (STATUS (...)) was given)
      STATUS: (mailbox, items: tuple[str, ...])  e.g. MESSAGES UIDNEXT SIZE HIGHESTMODSEQ
      APPEND: (mailbox, messages: tuple[AppendMessage, ...])   (MULTIAPPEND: several)
      SEARCH: (SearchProgram,)
      FETCH: (SeqSet, FetchRequest) ; STORE: (SeqSet, StoreRequest)
      COPY / MOVE: (SeqSet, mailbox)
      EXPUNGE with uid=True (UID EXPUNGE): (SeqSet,)
      ENABLE: (capabilities: tuple[str, ...]) ; ID: (params: tuple[tuple[str, str|None], ...] | None)
      GETQUOTAROOT etc. are not parsed (BAD unknown command)
    """

    tag: str
    name: str
    args: tuple = ()
    uid: bool = False


@dataclass(frozen=True)
class ParseError:
    """The command is malformed: answer `tag BAD text` (tag may be "*" if unreadable)."""

    tag: str
    text: str
    # "TOOBIG": an oversized literal (or line plus literals); "BADCHARSET": SEARCH
    # CHARSET unknown (answer NO [BADCHARSET (parser.SUPPORTED_CHARSETS)])
    code: str | None = None


@dataclass
class Continuation:
    """The parser needs a synchronizing literal: send `+ text` and wait for it."""

    text: str = "Ready for literal data"


@dataclass
class Limits:
    max_line: int = 64 * 1024
    max_literal: int = 50 * 1024 * 1024
    max_command: int = 64 * 1024 * 1024  # all literals of one command together
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RawLine:
    """A line read in raw mode (IDLE's DONE, AUTHENTICATE responses), CRLF stripped."""

    data: bytes


# The reader the parser module provides (sans-IO, used by the session):
#
#   reader = CommandReader(limits, literal_plus=True, binary=True)
#   events = reader.feed(data)   # -> list[Command | ParseError | Continuation | RawLine]
#   reader.resume(raw=True)      # go on; next line comes back as RawLine (IDLE, AUTHENTICATE)
#   reader.paused                # True while the reader waits for resume()
#   reader.clear()               # drop buffered input (after STARTTLS)
#
# - Synchronizing literal {n}: a Continuation event is returned when the line
#   announcing it is complete; the literal bytes follow in later feeds.
# - LITERAL+ {n+}: no continuation. literal8 ~{n} for APPEND (BINARY).
# - A line longer than max_line: ParseError("BAD", line too long) for that command,
#   the rest of the line is discarded, parsing goes on with the next line.
# - A literal larger than max_literal: ParseError(code="TOOBIG") without a
#   continuation; for {n+} the n bytes are skipped without being kept.
# - feed() returns every complete event found; the session queues commands and
#   runs them in order (pipelining), pausing while a slow one is in a thread.
# - After an IDLE, AUTHENTICATE or STARTTLS command the reader stops (returns
#   nothing more, keeps the bytes) until the session calls reader.resume(raw=...):
#   raw=True for IDLE/AUTHENTICATE; after STARTTLS the session calls clear()
#   then resume(). resume() returns the events now available from the buffer.
# - In raw mode the reader also pauses after every RawLine (and after a
#   ParseError("*", "Line too long") for a raw line): the session calls
#   resume(raw=True) for the next SASL response, or resume(raw=False) once
#   IDLE/AUTHENTICATE is over. So "DONE\r\nA2 NOOP\r\n" in one packet gives
#   RawLine(b"DONE"), then, after resume(raw=False), the NOOP command.
#   Setting `reader.raw_mode = True` directly works too (same pausing).
# - Lines may end in CRLF or a bare LF; empty lines between commands are ignored.
#   Literals outside APPEND count against max_line (a LOGIN literal can't be 50 MB).
#   A literal for an unknown command, a bad tag or a command without arguments
#   gets a ParseError and no Continuation.

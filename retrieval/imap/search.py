"""SEARCH: evaluate the key tree of ast.py against one message, as Dovecot 2.3 does.

The session builds one `SearchContext` per message (everything the index knows,
plus a loader for the message itself) and calls `matches()`. The message is
loaded only when a key needs its content (`needs_message()` says whether any
key of a program does), and then once for all keys.

Dovecot's readings followed here (no full-text search plugin):
* string keys are a case-insensitive substring match on decoded text (RFC 2047
  words, quoted-printable/base64 bodies, charsets converted to UTF-8, then
  Dovecot's decomposed-titlecase normalization on both sides); an empty string
  matches every message that has the field (HEADER, FROM, SUBJECT ...) or every
  message (BODY, TEXT);
* FROM/TO/CC/BCC compare with the address list rewritten as `Name <a@b>`;
  SUBJECT with its blanks squeezed; HEADER with the raw unfolded value;
* BODY/TEXT look only at text/* and message/* parts; TEXT adds every header;
* BEFORE/ON/SINCE compare the INTERNALDATE's calendar date in the server's
  time zone (`time.localtime`, TZ=UTC for the oracle); SENT* the Date field's
  own calendar date, a missing or unreadable Date being 1 January 1970 (the
  first Date field counts; its timestamp wraps as Dovecot's 32-bit cache does);
* OLDER n: INTERNALDATE <= now - n; YOUNGER n: INTERNALDATE >= now - n;
* keywords compare case-insensitively.
"""

from __future__ import annotations

import calendar
import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Callable

from retrieval.imap.ast import SearchKey, SeqSet
from retrieval.mime.encoded import normalize
from retrieval.mime.message import Message

__all__ = ["SearchContext", "matches", "needs_message", "normalize_key"]

_SEEN, _ANSWERED, _FLAGGED, _DELETED, _DRAFT = "\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"

# keys answered from the index alone
_META_KEYS = frozenset(
    "ALL ANSWERED DELETED DRAFT FLAGGED NEW OLD RECENT SEEN UNANSWERED UNDELETED UNDRAFT UNFLAGGED UNSEEN "
    "KEYWORD UNKEYWORD BEFORE ON SINCE LARGER SMALLER UID SEQ MODSEQ OLDER YOUNGER SAVEDBEFORE SAVEDON "
    "SAVEDSINCE SAVEDATESUPPORTED".split()
)
_CONTENT_KEYS = frozenset("BCC CC FROM TO SUBJECT BODY TEXT HEADER SENTBEFORE SENTON SENTSINCE".split())


@dataclass
class SearchContext:
    """What one message offers to SEARCH.

    internaldate / savedate are POSIX timestamps; `message` loads the content
    (called at most once, only when a key needs it).
    """

    seq: int
    uid: int
    flags: frozenset[str]
    size: int
    internaldate: float
    savedate: float | None
    modseq: int
    recent: bool
    message: Callable[[], Message]
    _loaded: Message | None = field(default=None, repr=False)
    _flags_lower: frozenset[str] | None = field(default=None, repr=False)

    def msg(self) -> Message:
        if self._loaded is None:
            self._loaded = self.message()
        return self._loaded

    def has_flag(self, flag: str) -> bool:
        if flag in self.flags:
            return True
        if self._flags_lower is None:
            self._flags_lower = frozenset(f.lower() for f in self.flags)
        return flag.lower() in self._flags_lower


def needs_message(key: SearchKey) -> bool:
    """True when evaluating `key` needs the message content (not only flags, sizes, dates, numbers)."""
    if not isinstance(key, tuple) or not key:
        return False
    name = key[0]
    if name == "AND":
        return any(needs_message(k) for k in key[1])
    if name in ("NOT", "OR"):
        return any(needs_message(k) for k in key[1:])
    return name in _CONTENT_KEYS


def normalize_key(s: str) -> str:
    """The search string as it is compared (Dovecot's decomposed titlecase)."""
    return normalize(s)


def _local_day(ts: float) -> dt.date:
    t = time.localtime(ts)
    return dt.date(t.tm_year, t.tm_mon, t.tm_mday)


def _date_cmp(kind: str, day: dt.date, ref: dt.date) -> bool:
    if kind == "BEFORE":
        return day < ref
    if kind == "ON":
        return day == ref
    return day >= ref  # SINCE


def _sent_match(kind: str, ctx: SearchContext, ref: dt.date) -> bool:
    sent = ctx.msg().search_data.sent_date()
    if sent is None:
        local = 0
    else:
        ts, tz = sent
        # Dovecot caches the sent date as an unsigned 32-bit number: dates before
        # 1970 wrap to the 2100s, dates after 2106 wrap around too
        local = (ts % 2**32) + tz * 60
    start = calendar.timegm(ref.timetuple())
    if kind == "BEFORE":
        return local < start
    if kind == "ON":
        return start <= local < start + 86400
    return local >= start


def _string_match(key: SearchKey, ctx: SearchContext) -> bool:
    name = key[0]
    data = ctx.msg().search_data
    if name in ("BODY", "TEXT"):
        needle = key[1]
        if needle == "":
            return True
        needle = normalize(needle)
        return any(needle in t for t in data.part_texts(name == "TEXT"))
    if name == "HEADER":
        field_name, needle = key[1], key[2]
        kind = "plain"
    else:
        field_name, needle = name, key[1]
        kind = "compress" if name == "SUBJECT" else "address"
    values = data.header_texts(field_name, kind)
    if values is None:
        return False
    if needle == "":
        return True
    needle = normalize(needle)
    return any(needle in v for v in values)


def matches(key: SearchKey, ctx: SearchContext, largest_seq: int, largest_uid: int, now: float) -> bool:
    """Does the message of `ctx` match `key` (a node of ast.py's search tree)?"""
    name = key[0]
    if name == "AND":
        return all(matches(k, ctx, largest_seq, largest_uid, now) for k in key[1])
    if name == "NOT":
        return not matches(key[1], ctx, largest_seq, largest_uid, now)
    if name == "OR":
        return matches(key[1], ctx, largest_seq, largest_uid, now) or matches(
            key[2], ctx, largest_seq, largest_uid, now
        )
    if name == "ALL":
        return True
    if name == "SEEN":
        return _SEEN in ctx.flags
    if name == "UNSEEN":
        return _SEEN not in ctx.flags
    if name == "ANSWERED":
        return _ANSWERED in ctx.flags
    if name == "UNANSWERED":
        return _ANSWERED not in ctx.flags
    if name == "FLAGGED":
        return _FLAGGED in ctx.flags
    if name == "UNFLAGGED":
        return _FLAGGED not in ctx.flags
    if name == "DELETED":
        return _DELETED in ctx.flags
    if name == "UNDELETED":
        return _DELETED not in ctx.flags
    if name == "DRAFT":
        return _DRAFT in ctx.flags
    if name == "UNDRAFT":
        return _DRAFT not in ctx.flags
    if name == "RECENT":
        return ctx.recent
    if name == "OLD":
        return not ctx.recent
    if name == "NEW":
        return ctx.recent and _SEEN not in ctx.flags
    if name == "KEYWORD":
        return ctx.has_flag(key[1])
    if name == "UNKEYWORD":
        return not ctx.has_flag(key[1])
    if name == "SEQ":
        s: SeqSet = key[1]
        return s.contains(ctx.seq, largest_seq)
    if name == "UID":
        s = key[1]
        return s.contains(ctx.uid, largest_uid)
    if name == "LARGER":
        return ctx.size > key[1]
    if name == "SMALLER":
        return ctx.size < key[1]
    if name in ("BEFORE", "ON", "SINCE"):
        return _date_cmp(name, _local_day(ctx.internaldate), key[1])
    if name in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
        if ctx.savedate is None:
            return False
        return _date_cmp(name[5:], _local_day(ctx.savedate), key[1])
    if name == "SAVEDATESUPPORTED":
        return True
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        return _sent_match(name[4:], ctx, key[1])
    if name == "OLDER":
        return ctx.internaldate <= now - key[1]
    if name == "YOUNGER":
        return ctx.internaldate >= now - key[1]
    if name == "MODSEQ":
        return ctx.modseq >= key[1]
    if name in _CONTENT_KEYS:
        return _string_match(key, ctx)
    raise ValueError(f"unknown search key {name!r}")

"""Tests for retrieval.store.mboxfile: the mbox format without a store.

What the round trip normalizes (documented in format_for_append): CRLF
becomes LF, a missing final LF is added (an empty message becomes "\\n"),
and status/hidden header fields the message carried are dropped.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from retrieval.store.mboxfile import (
    MboxEntry,
    client_message,
    client_size_crlf,
    format_for_append,
    format_from_line,
    parse_from_line,
    read_raw,
    rewrite_headers,
    scan,
    scan_file,
    separator_padding,
    split_header,
)

WHEN = 1_700_000_000  # Tue Nov 14 2023, far from any DST switch

# --------------------------------------------------------------------------
# helpers


def normalized(message: bytes) -> bytes:
    msg = message.replace(b"\r\n", b"\n")
    return msg if msg.endswith(b"\n") else msg + b"\n"


def views(data: bytes) -> list[bytes]:
    return [client_message(data[e.header_offset : e.end_offset]) for e in scan(data)]


_HIDDEN_LINE = re.compile(
    rb"(?i)(status|x-status|x-keywords|x-uid|x-imapbase|x-imap|content-length)[ \t]*:"
)


def has_hidden_field(message: bytes) -> bool:
    return any(_HIDDEN_LINE.match(line) for line in normalized(message).split(b"\n"))


# --------------------------------------------------------------------------
# strategies

TRICKY_LINES = [
    b"From ",
    b"From me to you",
    b"From someone@example.org Mon Jan  1 00:00:00 2024",
    b">From ",
    b">From quoted once",
    b">>From quoted twice",
    b">>>From x Tue Feb  2 10:00:00 2021",
    b"",
    b"",
    b" ",
    b"From",
    b">From",
    b"Subject: in the body",
    b"Status: RO",
    b"X-UID: 12",
    b"\r",
    b"\x00\xff binary \x1b",
    b"--boundary",
]
HEADER_LINES = [
    b"Subject: hello",
    b"From: Alice <alice@example.org>",
    b"To: bob@example.org",
    b"Received: from mx by mx2; Mon, 1 Jan 2024 00:00:00 +0000",
    b"\tcontinued",
    b" folded",
    b"X-Other: 1",
    b"From x Mon Jan  1 00:00:00 2024",
    b">From y",
    b"not a field line",
    b"Content-Type: text/plain",
]

line = st.one_of(
    st.sampled_from(TRICKY_LINES),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
)
header_line = st.one_of(
    st.sampled_from(HEADER_LINES),
    st.from_regex(rb"\A[A-Za-z][A-Za-z0-9-]{0,12}: [ -~]{0,30}\Z"),
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from([b"\n", b"\r\n"]))
    shape = draw(st.sampled_from(["full", "header-only", "body-only", "raw"]))
    if shape == "raw":
        msg = draw(st.binary(max_size=200))
    else:
        hdr = draw(st.lists(header_line, max_size=6)) if shape != "body-only" else []
        body = draw(st.lists(line, max_size=12))
        parts = hdr if shape == "header-only" else hdr + [b""] + body
        msg = eol.join(parts)
        if draw(st.booleans()):
            msg += eol
    assume(not has_hidden_field(msg))
    return msg


flag_sets = st.sets(st.sampled_from(["\\Seen", "\\Answered", "\\Flagged", "\\Draft", "\\Deleted"]))
keyword_lists = st.lists(st.from_regex(r"\A[A-Za-z$][A-Za-z0-9_]{0,8}\Z"), max_size=3, unique=True)
stored = st.tuples(
    messages(),
    flag_sets,
    keyword_lists,
    st.one_of(st.none(), st.integers(1, 2**32 - 1)),
    st.booleans(),
)

FAST = settings(max_examples=int(os.environ.get("MBOX_EXAMPLES", "40")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def build(items: list[tuple[bytes, set[str], list[str], int | None, bool]]) -> bytes:
    return b"".join(
        format_for_append(
            msg, sender="s@x", when=WHEN + n, flags=fl, keywords=kw, uid=uid, recent=recent
        )
        for n, (msg, fl, kw, uid, recent) in enumerate(items)
    )


# --------------------------------------------------------------------------
# round trip properties


@FAST
@given(st.lists(stored, max_size=6))
def test_round_trip(items: list[tuple[bytes, set[str], list[str], int | None, bool]]) -> None:
    data = build(items)
    entries = scan(data)
    assert len(entries) == len(items)
    for e, (msg, fl, kw, uid, recent) in zip(entries, items):
        raw = data[e.header_offset : e.end_offset]
        view = client_message(raw)
        assert view == normalized(msg)
        assert e.flags == fl
        assert e.keywords == kw
        assert e.uid == uid
        assert e.recent == recent
        assert e.date == WHEN + entries.index(e)
        assert e.sender == "s@x"
        assert e.header_offset <= e.body_offset <= e.end_offset < e.next_offset
        assert client_size_crlf(view) == len(view.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    if entries:
        assert entries[0].from_offset == 0
        assert entries[-1].next_offset == len(data)
        for a, b in zip(entries, entries[1:]):
            assert a.next_offset == b.from_offset


@FAST
@given(st.lists(stored, max_size=5), st.integers(16, 64), st.integers(0, 10_000))
def test_scan_file_matches_scan(items, chunk: int, base: int) -> None:
    data = build(items)
    expected = scan(data)
    assert list(scan_file(io.BytesIO(data), chunk_size=chunk)) == expected
    shifted = scan(data, base_offset=base)
    assert [e.from_offset - base for e in shifted] == [e.from_offset for e in expected]
    assert [e.end_offset - base for e in shifted] == [e.end_offset for e in expected]
    # resuming at any entry gives the tail
    for k, e in enumerate(expected):
        assert list(scan_file(io.BytesIO(data), e.from_offset, chunk_size=chunk)) == expected[k:]


@FAST
@given(st.lists(stored, min_size=1, max_size=5), flag_sets, keyword_lists, st.integers(1, 10**6))
def test_rewrite_headers_round_trip(items, flags, keywords, uid) -> None:
    data = build(items)
    entries = scan(data)
    out = bytearray()
    for k, e in enumerate(entries):
        out += data[e.from_offset : e.header_offset]
        out += rewrite_headers(
            data[e.header_offset : e.end_offset],
            flags=flags,
            keywords=keywords,
            uid=uid + k,
            imapbase=(1234, uid + len(entries)) if k == 0 else None,
            mailbox_keywords=keywords if k == 0 else (),
        )
        out += data[e.end_offset : e.next_offset]
    again = scan(bytes(out))
    assert len(again) == len(entries)
    for k, (old, new) in enumerate(zip(entries, again)):
        assert client_message(out[new.header_offset : new.end_offset]) == client_message(
            data[old.header_offset : old.end_offset]
        )
        assert new.flags == flags and new.keywords == keywords and new.uid == uid + k
        assert new.recent is False
        if k == 0:
            assert new.imapbase == (1234, uid + len(entries))
            assert new.mailbox_keywords == keywords
        else:
            assert new.imapbase is None


@FAST
@given(messages())
def test_crlf_size_counts_bare_lf_twice(msg: bytes) -> None:
    assert client_size_crlf(msg) == len(re.sub(rb"(?<!\r)\n", b"\r\n", msg))


# --------------------------------------------------------------------------
# writing


def test_format_for_append_layout() -> None:
    out = format_for_append(
        b"Subject: x\r\nStatus: RO\r\nX-UID: 99\r\n  folded\r\nX-Keywords: evil\r\n"
        b"Content-Length: 3\r\nX-IMAPbase: 1 2\r\n\r\nFrom here\r\n>From there\r\nend",
        sender="",
        when=WHEN,
        flags=["\\Seen", "\\answered", "\\Deleted", "\\Recent"],
        keywords=["$Forwarded", "Junk"],
        uid=7,
        recent=False,
    )
    lines = out.split(b"\n")
    assert lines[0] == format_from_line("MAILER-DAEMON", WHEN)
    assert lines[0].startswith(b"From MAILER-DAEMON  ")
    assert out.endswith(b"end\n\n")
    assert b"\r" not in out
    header, body = split_header(out[len(lines[0]) + 1 :])
    assert header == (
        b"Subject: x\n"
        b"X-UID: 7\n"
        b"Status: RO\n"
        b"X-Status: AD\n"
        b"X-Keywords: $Forwarded Junk\n"
    )
    assert body == b"\n>From here\n>>From there\nend\n\n"


def test_format_for_append_writes_nothing_for_defaults() -> None:
    out = format_for_append(b"Subject: a\n\nb\n", sender="u@x", when=WHEN)
    assert out == format_from_line("u@x", WHEN) + b"\nSubject: a\n\nb\n\n"


def test_format_for_append_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        format_for_append(b"x\n", sender="a", when=WHEN, flags=["\\Bogus"])
    with pytest.raises(ValueError):
        format_for_append(b"x\n", sender="a", when=WHEN, keywords=["two words"])
    with pytest.raises(ValueError):
        format_for_append(b"x\n", sender="a", when=WHEN, uid=0)


def test_sender_is_one_word() -> None:
    line = format_from_line("a b\r\nc", WHEN)
    assert line.startswith(b"From a_b__c  ")
    assert parse_from_line(line) == ("a_b__c", WHEN)


def test_separator_padding() -> None:
    assert separator_padding(b"") == b""
    assert separator_padding(b"\n\n") == b""
    assert separator_padding(b"x\n") == b"\n"
    assert separator_padding(b"\n") == b""  # a file holding only an empty line
    assert separator_padding(b"xy") == b"\n\n"


def test_append_after_sloppy_tail() -> None:
    old = b"From a  Mon Jan  1 00:00:00 2024\nSubject: a\n\nno final newline"
    new = format_for_append(b"Subject: b\n\nb\n", sender="b", when=WHEN)
    data = old + separator_padding(old[-2:]) + new
    assert views(data) == [b"Subject: a\n\nno final newline\n", b"Subject: b\n\nb\n"]


def test_rewrite_headers_keeps_everything_else() -> None:
    raw = (
        b"Received: x\nX-IMAPbase: 1 0000000005 a\nStatus: O\nSubject: s\n"
        b"X-Keywords: old\n  more\nContent-Length: 9\nX-UID: 3\nX-Status: F\n\n>From body\r\n"
    )
    out = rewrite_headers(raw, flags={"\\Seen"}, keywords=["new"], uid=3)
    assert out == (
        b"Received: x\nSubject: s\nContent-Length: 9\n"
        b"X-UID: 3\nStatus: RO\nX-Keywords: new\n\n>From body\r\n"
    )
    out = rewrite_headers(raw, flags=(), keywords=(), uid=None, imapbase=(7, 42), recent=True)
    assert out.startswith(b"Received: x\nSubject: s\nContent-Length: 9\nX-IMAPbase: 7 0000000042\n\n")


# --------------------------------------------------------------------------
# parsing the status headers


def test_status_headers_parsed() -> None:
    data = (
        b"From MAILER-DAEMON Fri Jul  8 12:08:34 2011\n"
        b"Date: Fri, 08 Jul 2011 12:08:34 +0000\n"
        b"From: Mail System Internal Data <MAILER-DAEMON@example.org>\n"
        b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
        b"X-IMAP: 1310126914 0000000003 $Junk\n"
        b"Status: RO\n"
        b"\n"
        b"This text is part of the internal format of your mail folder.\n"
        b"\n"
        b"From alice@example.org  Fri Jul  8 12:09:00 2011\n"
        b"X-IMAPbase: 1310126914 0000000003 $Junk NonJunk\n"
        b"Subject: one\n"
        b"Status: O\n"
        b"X-Status: AFTD\n"
        b"X-Keywords: $Junk\n"
        b"   NonJunk\n"
        b"X-UID: 1\n"
        b"Content-Length: 5\n"
        b"\n"
        b"body\n"
        b"\n"
        b"From bob@example.org  Fri Jul  8 12:10:00 2011\n"
        b"Subject: two\n"
        b"status: R\n"
        b"x-uid: junk\n"
        b"\n"
        b"two\n"
        b"\n"
    )
    pseudo, one, two = scan(data)
    assert pseudo.pseudo and pseudo.imapbase == (1310126914, 3)
    assert pseudo.mailbox_keywords == ["$Junk"]
    assert pseudo.flags == {"\\Seen"} and not pseudo.recent
    assert not one.pseudo
    assert one.imapbase == (1310126914, 3)
    assert one.mailbox_keywords == ["$Junk", "NonJunk"]
    assert one.flags == {"\\Answered", "\\Flagged", "\\Draft", "\\Deleted"}
    assert one.recent is False
    assert one.keywords == ["$Junk", "NonJunk"]
    assert one.uid == 1
    assert one.content_length == 5
    assert one.sender == "alice@example.org"
    assert two.flags == {"\\Seen"} and two.recent is True
    assert two.uid is None and two.imapbase is None and two.keywords == []
    assert client_message(data[one.header_offset : one.end_offset]) == (
        b"Subject: one\n\nbody\n"
    )
    assert client_message(data[two.header_offset : two.end_offset]) == b"Subject: two\n\ntwo\n"
    assert data[one.body_offset : one.end_offset] == b"body\n"


def test_hidden_headers_hidden_with_continuations() -> None:
    raw = (
        b"Status: RO\n\tcontinued status\nSubject: keep\n  keep fold\n"
        b"X-Status: A\nX-Keywords: a\n b\nX-UID : 4\nX-IMAPbase: 1 2\nX-IMAP: 1 2\n"
        b"Content-Length: 10\nCONTENT-LENGTH: 11\nX-Status-Other: keep\n\n"
        b"Status: body lines are not headers\n>From x\n"
    )
    assert client_message(raw) == (
        b"Subject: keep\n  keep fold\nX-Status-Other: keep\n\n"
        b"Status: body lines are not headers\nFrom x\n"
    )


# --------------------------------------------------------------------------
# From_ lines


def local(y: int, mo: int, d: int, h: int, mi: int, s: int) -> int:
    return int(time.mktime((y, mo, d, h, mi, s, 0, 0, -1)))


@pytest.mark.parametrize(
    ("line", "sender", "date"),
    [
        # Dovecot's test-mbox-from.c vectors
        (b"From user@domain Thu Nov 29 23:33:09 1973 +0200", "user@domain", 123456789),
        (b"From user@domain Thu Nov 29 19:33:09 1973 -0200", "user@domain", 123456789),
        (b'From "user name"@domain  Fri Jan  2 10:13:52 UTC 1970 +0000', '"user name"@domain', 123232),
        (b"From user  Fri Jan  2 10:14 1970 +0000", "user", 123240),
        (b"From user Fri, 2 Jan 1970 10:14:00 +0000", "user", 123240),
        (b"From user Fri, 2 Jan 1970 10:14 +0000", "user", 123240),
        (b"From  Fri Jan  2 10:14 1970 +0000", "", 123240),
        (b"From user  Fri Jan  2 10:14:00 +0100 1970", "user", 123240 - 3600),
        (b"From user Fri, 2 Foo 1970 10:14:00", "user", None),
        (b"From user  Fri Jan  x 10:14 1970 +0000", "user", None),
        (b"From user  Fri Jan  2 0:14 1970 +0000", "user", None),
        (b"From user  Fri Jan  2 xx:14 1970 +0000", "user", None),
        (b"From user  Fri Jan  2 10:xx 1970 +0000", "user", None),
        (b"From user  Fri Jan 32 10:14 1970", "user", None),
        # zoneless: local time, as Postfix and procmail write it
        (b"From MAILER-DAEMON  Mon Jan  1 12:00:00 2024", "MAILER-DAEMON", local(2024, 1, 1, 12, 0, 0)),
        (b"From a@b  Mon Jan 01 12:00:00 2024\r", "a@b", local(2024, 1, 1, 12, 0, 0)),
        (b"From a@b Mon Jan  1 12:00:00 EST 2024", "a@b", local(2024, 1, 1, 12, 0, 0)),
        (b"From a@b Mon Jan  1 12:00:00 2024 remote from uucphost", "a@b", local(2024, 1, 1, 12, 0, 0)),
        # tolerated junk
        (b"From unquoted name@x Mon Jan  1 12:00:00 2024", "unquoted name@x", local(2024, 1, 1, 12, 0, 0)),
        (b"From Mon Jan  1 12:00:00 2024", "", local(2024, 1, 1, 12, 0, 0)),
        (b"From someone", "someone", None),
        (b"From ", "", None),
        (b"From me to you, with love", "me", None),
    ],
)
def test_parse_from_line(line: bytes, sender: str, date: int | None) -> None:
    assert parse_from_line(line) == (sender, date)


def test_format_from_line_is_asctime() -> None:
    assert format_from_line("u", WHEN) == b"From u  " + time.asctime(time.localtime(WHEN)).encode()
    assert parse_from_line(format_from_line("u", WHEN)) == ("u", WHEN)


# --------------------------------------------------------------------------
# separators and Content-Length


def test_from_without_blank_line_needs_a_date() -> None:
    data = (
        b"From a  Mon Jan  1 00:00:00 2024\nSubject: 1\n\nline\nFrom here on, prose.\nline\n"
        b"From b  Mon Jan  1 00:00:01 2024\nSubject: 2\n\nbody\n"
    )
    assert views(data) == [
        b"Subject: 1\n\nline\nFrom here on, prose.\nline\n",
        b"Subject: 2\n\nbody\n",
    ]


def test_blank_line_then_from_always_separates() -> None:
    data = b"From a  Mon Jan  1 00:00:00 2024\nS: 1\n\nx\n\nFrom whatever\nS: 2\n\ny\n"
    es = scan(data)
    assert [e.from_line for e in es] == [b"From a  Mon Jan  1 00:00:00 2024", b"From whatever"]
    assert es[1].date is None and es[1].sender == "whatever"
    assert views(data) == [b"S: 1\n\nx\n", b"S: 2\n\ny\n"]


def test_message_without_body_and_empty_messages() -> None:
    data = (
        b"From a  Mon Jan  1 00:00:00 2024\nSubject: only header\n"
        b"From b  Mon Jan  1 00:00:00 2024\n\n"
        b"From c  Mon Jan  1 00:00:00 2024\nSubject: h\n\n"
        b"From d  Mon Jan  1 00:00:00 2024\n"
    )
    es = scan(data)
    assert [client_message(data[e.header_offset : e.end_offset]) for e in es] == [
        b"Subject: only header\n",
        b"",
        b"Subject: h\n",
        b"",
    ]
    assert all(e.body_offset == e.end_offset for e in es)


def test_junk_before_first_from_and_empty_input() -> None:
    assert scan(b"") == []
    assert scan(b"\n\n") == []
    assert scan(b"not an mbox\n") == []
    es = scan(b"junk\nFrom a  Mon Jan  1 00:00:00 2024\nS: x\n\nb\n")
    assert len(es) == 1 and es[0].from_offset == 5


def test_crlf_mbox() -> None:
    data = (
        b"From a  Mon Jan  1 00:00:00 2024\r\nS: 1\r\nStatus: R\r\n\r\nx\r\n\r\n"
        b"From b  Mon Jan  1 00:00:00 2024\r\nS: 2\r\n\r\ny\r\n\r\n"
    )
    es = scan(data)
    assert [e.from_line for e in es] == [
        b"From a  Mon Jan  1 00:00:00 2024",
        b"From b  Mon Jan  1 00:00:00 2024",
    ]
    assert es[0].flags == {"\\Seen"}
    assert views(data) == [b"S: 1\r\n\r\nx\r\n", b"S: 2\r\n\r\ny\r\n"]


SOLARIS_BODY = b"first\n\nFrom evil  Mon Jan  1 00:00:00 2024\nnot a message\n"


def solaris(length: int, tail: bytes) -> bytes:
    return (
        b"From a  Mon Jan  1 00:00:00 2024\nSubject: cl\nContent-Length: %d\n\n" % length
        + SOLARIS_BODY
        + tail
    )


@pytest.mark.parametrize(
    "tail",
    [
        b"\nFrom b  Mon Jan  1 00:00:01 2024\nSubject: next\n\nz\n",
        b"From b  Mon Jan  1 00:00:01 2024\nSubject: next\n\nz\n",
        b"\r\nFrom b  Mon Jan  1 00:00:01 2024\nSubject: next\n\nz\n",
    ],
)
def test_content_length_honoured(tail: bytes) -> None:
    data = solaris(len(SOLARIS_BODY), tail)
    es = scan(data)
    assert len(es) == 2
    assert client_message(data[es[0].header_offset : es[0].end_offset]) == (
        b"Subject: cl\n\n" + SOLARIS_BODY
    )
    assert list(scan_file(io.BytesIO(data), chunk_size=16)) == es


@pytest.mark.parametrize("tail", [b"", b"\n"])
def test_content_length_honoured_at_eof(tail: bytes) -> None:
    data = solaris(len(SOLARIS_BODY), tail)
    es = scan(data)
    assert len(es) == 1
    assert es[0].end_offset == len(data) - len(tail)
    assert es[0].next_offset == len(data)


def test_content_length_may_count_the_separator_line() -> None:
    data = solaris(len(SOLARIS_BODY) + 1, b"\nFrom b  Mon Jan  1 00:00:01 2024\nS: n\n\nz\n")
    es = scan(data)
    assert len(es) == 2
    assert client_message(data[es[0].header_offset : es[0].end_offset]).endswith(SOLARIS_BODY + b"\n")


@pytest.mark.parametrize("delta", [-1, 2, 10_000, -len(SOLARIS_BODY)])
def test_content_length_ignored_when_wrong(delta: int) -> None:
    data = solaris(len(SOLARIS_BODY) + delta, b"\nFrom b  Mon Jan  1 00:00:01 2024\nS: n\n\nz\n")
    es = scan(data)
    assert [e.from_line[:6] for e in es] == [b"From a", b"From e", b"From b"]
    assert client_message(data[es[0].header_offset : es[0].end_offset]) == b"Subject: cl\n\nfirst\n"


# --------------------------------------------------------------------------
# what real MDAs write


POSTFIX_MBOX = (
    # Postfix local(8): From_ with two spaces, Return-Path, X-Original-To,
    # Delivered-To prepended; mboxo quoting of "From " only; empty line after.
    b"From alice@example.org  Mon Jan  1 09:00:00 2024\n"
    b"Return-Path: <alice@example.org>\n"
    b"X-Original-To: bob@example.org\n"
    b"Delivered-To: bob@example.org\n"
    b"Received: by mx.example.org (Postfix, from userid 1000)\n"
    b"\tid 4F2B3C; Mon,  1 Jan 2024 09:00:00 +0000 (UTC)\n"
    b"Subject: hello\n"
    b"\n"
    b">From the start\n"
    b">From another line\n"
    b"\n"
    b"From: not a header here\n"
    b"\n"
    b"From MAILER-DAEMON  Mon Jan  1 09:05:00 2024\n"
    b"Return-Path: <>\n"
    b"Subject: Undelivered Mail\n"
    b"\n"
    b"bounce\n"
    b"\n"
)


def test_postfix_mboxo() -> None:
    es = scan(POSTFIX_MBOX)
    assert [e.sender for e in es] == ["alice@example.org", "MAILER-DAEMON"]
    assert [e.date for e in es] == [local(2024, 1, 1, 9, 0, 0), local(2024, 1, 1, 9, 5, 0)]
    first, second = views(POSTFIX_MBOX)
    assert first.endswith(b"\n\nFrom the start\nFrom another line\n\nFrom: not a header here\n")
    assert first.startswith(b"Return-Path: <alice@example.org>\n")
    assert second == b"Return-Path: <>\nSubject: Undelivered Mail\n\nbounce\n"
    assert all(e.recent and not e.flags and e.uid is None for e in es)


PROCMAIL_MBOX = (
    # procmail: no empty line added when the message already ends in one,
    # so the next From_ may follow a non-empty line only if it had none.
    b"From bob@example.org  Sat Nov 28 02:27:48 2026\n"
    b"Subject: hi\n\nbody\n>From the start\n\n"
    b"From bob@example.org  Sat Nov 28 02:27:49 2026\n"
    b"Subject: two\n\nbody2\n\n"
    b"From bob@example.org  Sat Nov 28 02:27:49 2026\n"
    b"Subject: no final newline\n\nend\n"
    b"From bob@example.org  Sat Nov 28 02:27:50 2026\n"
    b"Subject: last\n\nx\n\n"
)


def test_procmail_style_fixture() -> None:
    assert views(PROCMAIL_MBOX) == [
        b"Subject: hi\n\nbody\nFrom the start\n",
        b"Subject: two\n\nbody2\n",
        b"Subject: no final newline\n\nend\n",
        b"Subject: last\n\nx\n",
    ]


@pytest.mark.skipif(shutil.which("procmail") is None, reason="procmail is not installed")
def test_real_procmail_delivery(tmp_path) -> None:
    mbox = tmp_path / "mbox"
    rc = tmp_path / "rc"
    rc.write_text("LOCKSLEEP=1\n")
    msgs = [
        b"Subject: one\n\nFrom the start\n>From quoted\nplain\n",
        b"Subject: two\n\nends with empty line\n\n",
        b"Subject: three\n\nno final newline",
        b"Subject: four\nX-Extra: y\n\nFrom here\n\nFrom there\n",
    ]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)}
    for m in msgs:
        subprocess.run(
            ["procmail", "-m", "-f", "sender@example.org", f"DEFAULT={mbox}", f"ORGMAIL={mbox}", str(rc)],
            input=m,
            env=env,
            cwd=tmp_path,
            check=True,
            timeout=30,
        )
    data = mbox.read_bytes()
    es = scan(data)
    assert [e.sender for e in es] == ["sender@example.org"] * 4
    assert all(e.date is not None and abs(e.date - time.time()) < 600 for e in es)
    got = views(data)
    # procmail quotes mboxo-style: a body line ">From " cannot be told from
    # a quoted "From " and comes back without its ">"
    assert got[0] == b"Subject: one\n\nFrom the start\nFrom quoted\nplain\n"
    assert got[1] == b"Subject: two\n\nends with empty line\n"
    assert got[2] == b"Subject: three\n\nno final newline\n"
    assert got[3] == msgs[3]


# --------------------------------------------------------------------------
# big files


def test_scan_file_memory_is_bounded(tmp_path) -> None:
    """A large mbox (one 12 MB message among small ones) is scanned in
    chunk-sized memory, never loaded whole."""
    path = tmp_path / "big"
    big_body = (b"x" * 99 + b"\n") * 120_000  # 12 MB
    with open(path, "wb") as f:
        for n in range(200):
            f.write(format_for_append(b"Subject: %d\n\nsmall\n" % n, sender="a", when=WHEN, uid=n + 1))
        f.write(format_for_append(b"Subject: big\n\n" + big_body, sender="a", when=WHEN, uid=1000))
        for n in range(200):
            f.write(format_for_append(b"Subject: t%d\n\nsmall\n" % n, sender="a", when=WHEN, uid=n + 2000))
    size = path.stat().st_size
    with open(path, "rb") as f:
        tracemalloc.start()
        try:
            es = list(scan_file(f, chunk_size=256 * 1024))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert len(es) == 401
        assert peak < 3 * 1024 * 1024, peak
        big = es[200]
        assert big.uid == 1000
        assert big.end_offset - big.body_offset == len(big_body)
        assert es[-1].next_offset == size
        assert client_message(read_raw(f, es[-1])) == b"Subject: t199\n\nsmall\n"


def test_entry_is_a_plain_dataclass() -> None:
    e = MboxEntry(0, b"From x", 7, 7, 7, 7)
    assert e.size == 0 and e.flags == set() and e.recent


# --------------------------------------------------------------------------
# arbitrary (foreign, broken) mbox bytes

MBOX_LINES = [
    b"From a  Mon Jan  1 00:00:00 2024",
    b"From b Mon Jan  1 00:00:00 2024 +0100",
    b"From junk",
    b"From ",
    b">From x",
    b"",
    b"\r",
    b"Subject: s",
    b"Status: RO",
    b"X-UID: 5",
    b"X-IMAPbase: 1 2 kw",
    b"Content-Length: 0",
    b"Content-Length: 3",
    b"Content-Length: 30",
    b"body",
    b" folded",
]


@FAST
@given(
    st.lists(st.one_of(st.sampled_from(MBOX_LINES), line), max_size=40),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
    st.integers(16, 40),
)
def test_any_bytes_scan_consistently(lines, eol: bytes, final: bool, chunk: int) -> None:
    data = eol.join(lines) + (eol if final else b"")
    entries = scan(data)
    assert list(scan_file(io.BytesIO(data), chunk_size=chunk)) == entries
    for a, b in zip(entries, entries[1:]):
        assert a.next_offset == b.from_offset
    for e in entries:
        assert data[e.from_offset :].startswith(b"From ")
        assert e.from_offset < e.header_offset <= e.body_offset <= e.end_offset <= e.next_offset
        client_message(data[e.header_offset : e.end_offset])
    if entries:
        assert entries[-1].next_offset == len(data)

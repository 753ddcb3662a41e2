"""retrieval.imap.search: SEARCH keys evaluated the way Dovecot 2.3 evaluates them.

Expected results were checked against a private Dovecot 2.3.19 while writing;
tests/test_mime_oracle.py runs the oracle's 57 searches over its corpus.
"""

from __future__ import annotations

import calendar
import datetime as dt

import pytest

from retrieval.imap.ast import STAR, SeqSet
from retrieval.imap.search import SearchContext, matches, needs_message, normalize_key
from retrieval.mime.message import Message

NOON = calendar.timegm((2020, 2, 15, 12, 0, 0))


def ctx(data: bytes = b"Subject: x\n\nbody\n", **kw) -> SearchContext:
    calls = []

    def load() -> Message:
        calls.append(1)
        return Message(data)

    c = SearchContext(
        seq=kw.get("seq", 3),
        uid=kw.get("uid", 30),
        flags=frozenset(kw.get("flags", ())),
        size=kw.get("size", Message(data).size),
        internaldate=kw.get("internaldate", NOON),
        savedate=kw.get("savedate"),
        modseq=kw.get("modseq", 7),
        recent=kw.get("recent", False),
        message=load,
    )
    c.calls = calls  # type: ignore[attr-defined]
    return c


def m(key, c, largest_seq=10, largest_uid=100, now=NOON + 3600):
    return matches(key, c, largest_seq, largest_uid, now)


# -- index-only keys ---------------------------------------------------------------------


def test_flags_and_keywords_never_load_the_message():
    c = ctx(flags={"\\Seen", "\\Flagged", "$Oracle"})
    assert m(("SEEN",), c) and not m(("UNSEEN",), c)
    assert m(("FLAGGED",), c) and not m(("ANSWERED",), c) and m(("UNANSWERED",), c)
    assert not m(("DELETED",), c) and m(("UNDELETED",), c)
    assert not m(("DRAFT",), c) and m(("UNDRAFT",), c) and not m(("UNFLAGGED",), c)
    assert m(("KEYWORD", "$Oracle"), c) and m(("KEYWORD", "$oracle"), c)
    assert not m(("KEYWORD", "$Later"), c) and m(("UNKEYWORD", "$Later"), c)
    assert m(("ALL",), c)
    assert c.calls == []  # type: ignore[attr-defined]


def test_recent_new_old():
    c = ctx(recent=True)
    assert m(("RECENT",), c) and m(("NEW",), c) and not m(("OLD",), c)
    assert not m(("NEW",), ctx(recent=True, flags={"\\Seen"}))
    assert m(("OLD",), ctx())


def test_numbers():
    c = ctx(seq=3, uid=30)
    assert m(("SEQ", SeqSet(((1, 5),))), c)
    assert not m(("SEQ", SeqSet(((4, STAR),))), c)
    assert m(("SEQ", SeqSet(((STAR, 3),))), c, largest_seq=3)
    assert m(("UID", SeqSet(((30, 30),))), c)
    assert m(("UID", SeqSet(((STAR, STAR),))), c, largest_uid=30)
    assert not m(("UID", SeqSet(((STAR, STAR),))), c, largest_uid=31)


def test_sizes_and_modseq():
    c = ctx(size=1000, modseq=7)
    assert m(("LARGER", 999), c) and not m(("LARGER", 1000), c)
    assert m(("SMALLER", 1001), c) and not m(("SMALLER", 1000), c)
    assert m(("MODSEQ", 7), c) and not m(("MODSEQ", 8), c)


def test_internaldate_keys_use_the_calendar_date(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    import time

    time.tzset()
    try:
        c = ctx(internaldate=NOON)
        day = dt.date(2020, 2, 15)
        assert m(("ON", day), c) and m(("SINCE", day), c) and not m(("BEFORE", day), c)
        assert m(("BEFORE", dt.date(2020, 2, 16)), c)
        assert not m(("SINCE", dt.date(2020, 2, 16)), c)
        assert not m(("SAVEDON", day), c)  # no save date known
        assert m(("SAVEDON", day), ctx(savedate=NOON))
        assert m(("SAVEDATESUPPORTED",), c)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_older_younger():
    c = ctx(internaldate=NOON)
    assert m(("OLDER", 3600), c, now=NOON + 3600)
    assert not m(("OLDER", 3601), c, now=NOON + 3600)
    assert m(("YOUNGER", 3600), c, now=NOON + 3600)
    assert not m(("YOUNGER", 3599), c, now=NOON + 3600)


def test_and_or_not():
    c = ctx(flags={"\\Seen"}, size=500)
    assert m(("AND", (("SEEN",), ("SMALLER", 600))), c)
    assert not m(("AND", (("SEEN",), ("LARGER", 600))), c)
    assert m(("OR", ("LARGER", 600), ("SEEN",)), c)
    assert m(("NOT", ("FLAGGED",)), c)


def test_needs_message():
    assert not needs_message(("AND", (("SEEN",), ("OR", ("LARGER", 5), ("UID", SeqSet(((1, 2),)))))))
    assert needs_message(("AND", (("SEEN",), ("NOT", ("SUBJECT", "x")))))
    assert needs_message(("SENTON", dt.date(2020, 1, 1)))
    assert needs_message(("OR", ("SEEN",), ("HEADER", "X-Mailer", "")))


# -- header keys ---------------------------------------------------------------------------

MSG = (
    b"From: =?utf-8?q?Alexandr_Suvorov_=D0=A1=D1=83=D0=B2=D0=BE=D1=80=D0=BE=D0=B2?= <suvorov@example.com>\n"
    b"To: \"Fouch\xc3\xa9, Joseph\" <jf@example.org>, group: a@b.c;\n"
    b"Cc: (comment) cc@example.net\n"
    b"Subject: Re:   pr\xc3\xa9pare\n\tthe  meeting\n"
    b"X-Mailer: mutt\n"
    b"X-Empty:\n"
    b"Date: Sun, 25 Mar 2007 23:30:00 +0200\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: multipart/mixed; boundary=b\n\n"
    b"--b\nContent-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
    b"Das Wetter ist hei=DFe heute.\n"
    b"--b\nContent-Type: application/octet-stream\n\nsecretword in an attachment\n"
    b"--b\nContent-Type: text/html; charset=koi8-r\nContent-Transfer-Encoding: base64\n\n"
    b"0NLJ18XUINPMz9fP\n--b--\n"
)


@pytest.mark.parametrize(
    "key,found",
    [
        (("FROM", "suvorov@"), True),
        (("FROM", "Суворов"), True),  # RFC 2047 name decoded
        (("FROM", "СУВОРОВ"), True),  # case-insensitive
        (("FROM", "alexandr suvorov"), True),
        (("TO", "Fouché"), True),
        (("TO", '"Fouché, Joseph" <jf@'), True),  # compared with the rewritten address list
        (("TO", "group: <a@b.c>;"), True),  # every address is written in <>
        (("TO", "group: a@b.c;"), False),
        (("FROM", "Суворов <suvorov@"), True),
        (("CC", "<cc@example.net>"), True),
        (("CC", "comment"), False),  # a comment before the address is not a name
        (("BCC", ""), False),  # no Bcc field
        (("FROM", ""), True),  # empty string: the field exists
        (("SUBJECT", "re: prépare the meeting"), True),  # blanks squeezed, folding undone
        (("SUBJECT", "PREPARE"), False),  # accents are not folded away
        (("HEADER", "X-Mailer", "MUTT"), True),
        (("HEADER", "x-empty", ""), True),
        (("HEADER", "X-Other", ""), False),
        (("HEADER", "Subject", "pr\u00e9pare"), True),
    ],
)
def test_header_keys(key, found):
    assert m(key, ctx(MSG)) is found


def test_8bit_non_utf8_header_does_not_match_utf8():
    c = ctx(b"Subject: pr\xe9pare\n\nx\n")
    assert not m(("SUBJECT", "prépare"), c)
    assert m(("SUBJECT", "pr"), c)


def test_unknown_charset_words_are_not_normalized():
    # Dovecot appends such a word as it is while the key is normalized (upper case):
    # "ABC" is not found in "abc", but "DEF" (normalized with the rest) is
    c = ctx(b"Subject: =?x-unknown?q?abc?= def\n\nx\n")
    assert not m(("SUBJECT", "abc"), c)
    assert m(("SUBJECT", "def"), c)


# -- body and text ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,found",
    [
        (("BODY", "heiße"), True),  # quoted-printable, ISO-8859-1
        (("BODY", "HEISSE"), False),  # no ß -> SS folding
        (("BODY", "привет"), True),  # base64, KOI8-R, in a text/html part
        (("BODY", "secretword"), False),  # application/* is not searched
        (("BODY", "multipart"), False),  # headers are not body
        (("TEXT", "multipart/mixed"), True),  # TEXT: headers of every part too
        (("TEXT", "content-transfer-encoding: quoted-printable"), True),
        (("TEXT", "heiße"), True),
        (("BODY", ""), True),
    ],
)
def test_body_and_text(key, found):
    assert m(key, ctx(MSG)) is found


def test_body_of_message_without_content_type():
    assert m(("BODY", "hello"), ctx(b"Subject: x\n\nsay Hello there\n"))
    assert not m(("BODY", "subject"), ctx(b"Subject: x\n\nsay Hello there\n"))
    assert m(("TEXT", "subject: x"), ctx(b"Subject: x\n\nsay Hello there\n"))


def test_message_loaded_once():
    c = ctx(MSG)
    assert m(("AND", (("BODY", "heiße"), ("SUBJECT", "meeting"), ("FROM", "suvorov"))), c)
    assert c.calls == [1]  # type: ignore[attr-defined]


# -- sent dates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "date_field,key,found",
    [
        (b"Sun, 25 Mar 2007 23:30:00 +0200", ("SENTON", dt.date(2007, 3, 25)), True),  # its own zone's date
        (b"Sun, 25 Mar 2007 23:30:00 +0200", ("SENTBEFORE", dt.date(2007, 3, 26)), True),
        (b"Sun, 25 Mar 2007 01:30:00 -0300", ("SENTON", dt.date(2007, 3, 25)), True),
        (b"Sun, 25 Mar 2007 01:30:00 -0300", ("SENTSINCE", dt.date(2007, 3, 26)), False),
        (b"bogus", ("SENTBEFORE", dt.date(1970, 1, 2)), True),  # unreadable: 1 January 1970
        (None, ("SENTON", dt.date(1970, 1, 1)), True),  # missing: 1 January 1970
        # Dovecot keeps the sent date in 32 bits: 1969 wraps to 2105, 3609 to 1976
        (b"Thu, 13 Feb 1969 23:32:54 -0330", ("SENTSINCE", dt.date(2005, 1, 1)), True),
        (b"Mon, 30 Jun 3609 15:33:50 +0600", ("SENTBEFORE", dt.date(2000, 1, 1)), True),
    ],
)
def test_sent_dates(date_field, key, found):
    head = b"Date: " + date_field + b"\n" if date_field is not None else b""
    assert m(key, ctx(head + b"Subject: x\n\nbody\n")) is found


def test_first_date_field_counts():
    c = ctx(b"Date: 1 Jan 2001 00:00:00 +0000\nDate: 1 Jan 2010 00:00:00 +0000\n\nx")
    assert m(("SENTON", dt.date(2001, 1, 1)), c)


def test_normalize_key():
    assert normalize_key("Fouché") == normalize_key("FOUCHÉ")


def test_body_decoding_edge_cases():
    b64 = b"MIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
    broken = ctx(b64 + b"aGVsbG8gd29y!bGQ=\n")  # what decodes before the invalid octet is searched
    assert m(("BODY", "hello"), broken) and m(("BODY", "wor"), broken) and not m(("BODY", "world"), broken)
    unknown = b"MIME-Version: 1.0\nContent-Type: text/plain\nContent-Transfer-Encoding: x-unknown\n\nhello\n"
    assert not m(("BODY", "hello"), ctx(unknown))  # an unknown encoding: the body is skipped
    no_subtype = b"MIME-Version: 1.0\nContent-Type: text; charset=utf-8\n\nhello\n"
    assert not m(("BODY", "hello"), ctx(no_subtype))  # "text" without "/" is not text/*
    status = b"MIME-Version: 1.0\nContent-Type: message/delivery-status\n\nAction: failed\n"
    assert m(("BODY", "failed"), ctx(status))  # message/* bodies are searched

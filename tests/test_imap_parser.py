"""The IMAP command grammar without sockets: one test per RFC example and per edge case."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.imap import parser as P
from retrieval.imap import wire
from retrieval.imap.ast import (
    STAR,
    AppendMessage,
    Command,
    Continuation,
    FetchAtt,
    FetchRequest,
    Limits,
    ListRequest,
    ParseError,
    RawLine,
    SearchProgram,
    Section,
    SelectParams,
    SeqSet,
    StoreRequest,
)
from retrieval.imap.parser import CommandReader


@pytest.fixture(autouse=True)
def strict(monkeypatch):
    """Internal errors must surface in tests, not turn into a polite BAD."""
    monkeypatch.setattr(P, "_STRICT", True)


def pump(reader: CommandReader, events: list, new: list) -> None:
    """Play the session: resume after IDLE/AUTHENTICATE (raw) and after raw lines / STARTTLS."""
    events.extend(new)
    while reader.paused:
        last = events[-1]
        raw = isinstance(last, Command) and last.name in ("IDLE", "AUTHENTICATE")
        events.extend(reader.resume(raw=raw))


def run(data: bytes, reader: CommandReader | None = None, chunk: int | None = None) -> list:
    reader = reader or CommandReader()
    events: list = []
    if chunk is None:
        pump(reader, events, reader.feed(data))
    else:
        for i in range(0, len(data), chunk):
            pump(reader, events, reader.feed(data[i : i + chunk]))
    return events


def one(line: bytes | str, **kw):
    """The single event for one command (CRLF added; sync literals' Continuations dropped)."""
    if isinstance(line, str):
        line = line.encode()
    line += b"\r\n"
    events = [e for e in run(line, CommandReader(**kw)) if not isinstance(e, Continuation)]
    assert len(events) == 1, events
    return events[0]


def args(line, **kw) -> tuple:
    event = one(line, **kw)
    assert isinstance(event, Command), event
    return event.args


def bad(line, **kw) -> ParseError:
    event = one(line, **kw)
    assert isinstance(event, ParseError), event
    return event


def seq(*ranges) -> SeqSet:
    return SeqSet(tuple(r if isinstance(r, tuple) else (r, r) for r in ranges))


def search(line) -> tuple:
    (program,) = args(line)
    assert isinstance(program, SearchProgram)
    return program.key[1]


# -- RFC 3501 section 6 examples -----------------------------------------------------------


@pytest.mark.parametrize(
    "line, tag, name",
    [
        ("abcd CAPABILITY", "abcd", "CAPABILITY"),
        ("a002 NOOP", "a002", "NOOP"),
        ("A023 LOGOUT", "A023", "LOGOUT"),
        ("FXXZ CHECK", "FXXZ", "CHECK"),
        ("A341 CLOSE", "A341", "CLOSE"),
        ("A202 EXPUNGE", "A202", "EXPUNGE"),
        ("A342 UNSELECT", "A342", "UNSELECT"),  # RFC 3691
        ("A001 NAMESPACE", "A001", "NAMESPACE"),  # RFC 2342
    ],
)
def test_commands_without_arguments(line, tag, name):
    assert one(line) == Command(tag, name, ())


def test_no_argument_command_with_argument_is_bad():
    assert bad("a NOOP now").tag == "a"
    assert bad("a CAPABILITY ").tag == "a"


def test_starttls_example_6_2_1_pauses_the_reader():
    r = CommandReader()
    events = r.feed(b"a001 CAPABILITY\r\na002 STARTTLS\r\na003 CAPABILITY\r\n")
    assert events == [Command("a001", "CAPABILITY"), Command("a002", "STARTTLS")]
    assert r.paused
    assert r.feed(b"a004 LOGIN joe password\r\n") == []
    r.clear()  # what was sent before the handshake must not be executed
    assert r.resume() == []
    assert r.feed(b"a003 CAPABILITY\r\na004 LOGIN joe password\r\n") == [
        Command("a003", "CAPABILITY"),
        Command("a004", "LOGIN", ("joe", "password")),
    ]


def test_authenticate_example_6_2_2_raw_lines():
    r = CommandReader()
    assert r.feed(b"A001 AUTHENTICATE GSSAPI\r\n") == [Command("A001", "AUTHENTICATE", ("GSSAPI", None))]
    assert r.paused
    assert r.feed(b"YIIB+wYJKoZIhvcSAQICAQBuggHqMIIB5qADAgEFoQMCAQ6iBw\r\n") == []
    assert r.resume(raw=True) == [RawLine(b"YIIB+wYJKoZIhvcSAQICAQBuggHqMIIB5qADAgEFoQMCAQ6iBw")]
    assert r.paused  # one raw line at a time
    assert r.feed(b"\r\n") == []
    assert r.resume(raw=True) == [RawLine(b"")]  # an empty SASL response is meaningful
    assert r.resume(raw=True) == []
    assert r.feed(b"*\r\nA002 NOOP\r\n") == [RawLine(b"*")]
    assert r.resume(raw=False) == [Command("A002", "NOOP")]
    assert not r.paused


def test_login_example_6_2_3():
    assert args("a001 LOGIN SMITH SESAME") == ("SMITH", "SESAME")


def test_login_quoted_and_literal_password():
    assert args(b'a LOGIN "fred smith" "p\\\\a\\"ss"') == ("fred smith", 'p\\a"ss')
    assert args(b"a LOGIN {4}\r\nfred {6+}\r\nh\xc3\xa9llo\r\n") == ("fred", "h\u00e9llo")
    # undecodable bytes survive (surrogateescape)
    user, password = args(b"a LOGIN fred {2+}\r\n\xff\xfe\r\n")
    assert password.encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_login_missing_password():
    assert bad("a LOGIN fred").text.endswith("Missing argument")


def test_select_examine_6_3_1_and_6_3_2():
    assert args("A142 SELECT INBOX") == ("INBOX", SelectParams())
    assert one("A932 EXAMINE blurdybloop") == Command("A932", "EXAMINE", ("blurdybloop", SelectParams()))


def test_inbox_is_case_insensitive_but_only_as_a_whole_name():
    assert args("a SELECT inbox")[0] == "INBOX"
    assert args('a SELECT "InBoX"')[0] == "INBOX"
    assert args("a SELECT {5}\r\niNbOx")[0] == "INBOX"
    assert args("a SELECT inbox.sub")[0] == "inbox.sub"
    assert args("a SELECT INBOXES")[0] == "INBOXES"


def test_create_delete_rename_subscribe_6_3_3_to_6_3_7():
    assert args("A003 CREATE owatagusiam/") == ("owatagusiam/", ())
    assert args("A004 CREATE owatagusiam/blurdybloop") == ("owatagusiam/blurdybloop", ())
    assert args("A683 DELETE blurdybloop") == ("blurdybloop",)
    assert args("A685 DELETE foo/bar") == ("foo/bar",)
    assert args("A683 RENAME blurdybloop sarasota") == ("blurdybloop", "sarasota")
    assert args("A684 RENAME foo zowie") == ("foo", "zowie")
    assert one("A002 SUBSCRIBE #news.comp.mail.mime") == Command("A002", "SUBSCRIBE", ("#news.comp.mail.mime",))
    assert one("A002 UNSUBSCRIBE #news.comp.mail.mime") == Command("A002", "UNSUBSCRIBE", ("#news.comp.mail.mime",))


def test_list_examples_6_3_8():
    assert args('A101 LIST "" ""') == (ListRequest("", ("",)),)
    assert args('A102 LIST #news.comp.mail.misc ""') == (ListRequest("#news.comp.mail.misc", ("",)),)
    assert args('A103 LIST /usr/staff/jones ""') == (ListRequest("/usr/staff/jones", ("",)),)
    assert args("A202 LIST ~/Mail/ %") == (ListRequest("~/Mail/", ("%",)),)
    assert args('A682 LIST "" *') == (ListRequest("", ("*",)),)


def test_lsub_examples_6_3_9():
    assert args('A002 LSUB "#news." "comp.mail.*"') == ("#news.", "comp.mail.*")
    assert args('A003 LSUB "#news." "comp.%"') == ("#news.", "comp.%")


def test_status_example_6_3_10():
    assert args("A042 STATUS blurdybloop (UIDNEXT MESSAGES)") == ("blurdybloop", ("UIDNEXT", "MESSAGES"))
    assert args("a status INBOX (messages recent uidvalidity unseen)") == (
        "INBOX",
        ("MESSAGES", "RECENT", "UIDVALIDITY", "UNSEEN"),
    )
    assert bad("a STATUS INBOX ()").tag == "a"
    assert bad("a STATUS INBOX (MESSAGES BOGUS)").tag == "a"
    assert bad("a STATUS INBOX").tag == "a"


APPEND_MESSAGE = (
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
    b"From: Fred Foobar <foobar@Blurdybloop.COM>\r\n"
    b"Subject: afternoon meeting\r\n"
    b"To: mooch@owatagu.siam.edu\r\n"
    b"Message-Id: <B27397-0100000@Blurdybloop.COM>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
    b"\r\n"
    b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
)


def test_append_example_6_3_11():
    r = CommandReader()
    head = b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(APPEND_MESSAGE)
    assert r.feed(head) == [Continuation()]
    assert r.feed(APPEND_MESSAGE) == []
    (cmd,) = r.feed(b"\r\n")
    assert cmd == Command("A003", "APPEND", ("saved-messages", (AppendMessage(("\\Seen",), None, APPEND_MESSAGE),)))


def test_append_with_date_time():
    (mailbox, (message,)) = args(b'a APPEND INBOX (\\Seen \\Draft $Foo) " 7-Feb-1994 21:52:25 -0800" {3+}\r\nabc')
    assert message.flags == ("\\Seen", "\\Draft", "$Foo")
    assert message.internaldate == dt.datetime(1994, 2, 7, 21, 52, 25, tzinfo=dt.timezone(dt.timedelta(hours=-8)))
    assert message.data == b"abc"
    (_, (message,)) = args(b'a APPEND INBOX "17-Jul-1996 02:44:25 +0530" {0}\r\n')
    assert message.internaldate.utcoffset() == dt.timedelta(hours=5, minutes=30)
    assert message.flags == () and message.data == b""
    (_, (message,)) = args(b'a APPEND INBOX () "01-jan-2000 00:00:00 +0000" {1+}\r\nx')
    assert message.internaldate == dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    "line",
    [
        b'a APPEND INBOX "31-Feb-1994 21:52:25 -0800" {1+}\r\nx',  # no such day
        b'a APPEND INBOX "7-Feb-1994 21:52:25" {1+}\r\nx',  # no zone
        b'a APPEND INBOX "7-Foo-1994 21:52:25 +0000" {1+}\r\nx',
        b'a APPEND INBOX "7-Feb-1994 25:52:25 +0000" {1+}\r\nx',
        b"a APPEND INBOX (\\Recent) {1+}\r\nx",
        b"a APPEND INBOX (\\Bogus) {1+}\r\nx",
        b"a APPEND INBOX",
        b"a APPEND INBOX (\\Seen)",
        b"a APPEND INBOX hello",
        b"a APPEND INBOX {1+}\r\nx extra",
    ],
)
def test_append_errors(line):
    assert bad(line).tag == "a"


def test_multiappend_rfc3502():
    m1, m2 = APPEND_MESSAGE, b"Subject: second\r\n\r\nbody\r\n"
    data = (
        b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(m1)
        + m1
        + b' (\\Seen) " 1-Aug-2002 22:00:00 +0200" {%d}\r\n' % len(m2)
        + m2
        + b"\r\n"
    )
    events = run(data)
    assert events[:2] == [Continuation(), Continuation()]
    (mailbox, messages) = events[2].args
    assert mailbox == "saved-messages"
    assert [m.data for m in messages] == [m1, m2]
    assert messages[1].internaldate == dt.datetime(2002, 8, 1, 22, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert run(data, chunk=1) == events
    assert run(data, chunk=7) == events


def test_search_examples_6_4_4():
    assert search('A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"') == (
        ("FLAGGED",),
        ("SINCE", dt.date(1994, 2, 1)),
        ("NOT", ("FROM", "Smith")),
    )
    assert search('A283 SEARCH TEXT "string not in mailbox"') == (("TEXT", "string not in mailbox"),)
    utf8 = "\u00e9t\u00e9".encode()
    (program,) = args(b"A284 SEARCH CHARSET UTF-8 TEXT {%d}\r\n%s" % (len(utf8), utf8))
    assert program == SearchProgram(("AND", (("TEXT", "\u00e9t\u00e9"),)), "UTF-8")


def test_fetch_example_6_4_5():
    seqs, request = args("A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])")
    assert seqs == seq((2, 4))
    assert request == FetchRequest(
        (FetchAtt("FLAGS"), FetchAtt("BODY[]", Section((), "HEADER.FIELDS", ("DATE", "FROM")))),
    )


def test_store_example_6_4_6():
    assert args("A003 STORE 2:4 +FLAGS (\\Deleted)") == (seq((2, 4)), StoreRequest("add", False, ("\\Deleted",)))


def test_copy_example_6_4_7():
    assert one("A003 COPY 2:4 MEETING") == Command("A003", "COPY", (seq((2, 4)), "MEETING"))


def test_uid_example_6_4_8():
    cmd = one("A999 UID FETCH 4827313:4828442 FLAGS")
    assert cmd == Command("A999", "FETCH", (seq((4827313, 4828442)), FetchRequest((FetchAtt("FLAGS"),))), uid=True)


def test_x_command_6_5_1_is_unknown():
    err = bad("A442 XPIG-LATIN")
    assert err.tag == "A442" and "Unknown command" in err.text


def test_sample_session_section_8():
    data = (
        b"a001 login mrc secret\r\n"
        b"a002 select inbox\r\n"
        b"a003 fetch 12 full\r\n"
        b"a004 fetch 12 body[header]\r\n"
        b"a005 store 12 +flags \\deleted\r\n"
        b"a006 logout\r\n"
    )
    assert run(data) == [
        Command("a001", "LOGIN", ("mrc", "secret")),
        Command("a002", "SELECT", ("INBOX", SelectParams())),
        Command(
            "a003",
            "FETCH",
            (
                seq(12),
                FetchRequest(
                    tuple(FetchAtt(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"))
                ),
            ),
        ),
        Command("a004", "FETCH", (seq(12), FetchRequest((FetchAtt("BODY[]", Section((), "HEADER")),)))),
        Command("a005", "STORE", (seq(12), StoreRequest("add", False, ("\\Deleted",)))),
        Command("a006", "LOGOUT"),
    ]


# -- extensions' examples ----------------------------------------------------------------


def test_literal_plus_rfc7888_example():
    r = CommandReader()
    assert r.feed(b"A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man\r\n") == [
        Command("A001", "LOGIN", ("FRED FOOBAR", "fat man"))
    ]


def test_literal_plus_refused_when_disabled():
    r = CommandReader(literal_plus=False)
    events = r.feed(b"A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man\r\nA002 NOOP\r\n")
    assert [type(e) for e in events] == [ParseError, Command]  # the literal was skipped, not parsed
    assert events[0].tag == "A001" and events[1] == Command("A002", "NOOP")


def test_binary_rfc3516_append_literal8():
    data = b"\x00\x01binary\xff"
    r = CommandReader()
    assert r.feed(b"A003 APPEND Drafts (\\Seen $MDNSent) ~{%d}\r\n" % len(data)) == [Continuation()]
    (cmd,) = r.feed(data + b"\r\n")
    assert cmd.args == ("Drafts", (AppendMessage(("\\Seen", "$MDNSent"), None, data, binary=True),))
    (cmd,) = CommandReader().feed(b"A004 APPEND Drafts ~{2+}\r\n\x00\x00\r\n")
    assert cmd.args[1][0].binary and cmd.args[1][0].data == b"\x00\x00"


def test_binary_literal8_refused_without_binary_or_outside_append():
    r = CommandReader(binary=False)
    events = r.feed(b"A APPEND Drafts ~{2}\r\n")
    assert len(events) == 1 and isinstance(events[0], ParseError)  # no continuation
    events = r.feed(b"B APPEND Drafts ~{2+}\r\nxx\r\nC NOOP\r\n")
    assert [type(e) for e in events] == [ParseError, Command]
    events = CommandReader().feed(b"D LOGIN ~{3}\r\n")
    assert len(events) == 1 and isinstance(events[0], ParseError) and events[0].tag == "D"


def test_binary_fetch_items_rfc3516():
    _, request = args("t FETCH 1 (BINARY[2] BINARY.SIZE[2] BINARY.PEEK[1.3]<0.1024> BINARY[])")
    assert request.atts == (
        FetchAtt("BINARY[]", Section((2,))),
        FetchAtt("BINARY.SIZE[]", Section((2,))),
        FetchAtt("BINARY[]", Section((1, 3)), peek=True, partial=(0, 1024)),
        FetchAtt("BINARY[]", Section()),
    )


@pytest.mark.parametrize(
    "item", ["BINARY[HEADER]", "BINARY[1.MIME]", "BINARY[1.TEXT]", "BINARY.SIZE[1]<0.10>", "BINARY", "BINARY.PEEK"]
)
def test_binary_fetch_bad_sections(item):
    assert bad(f"t FETCH 1 ({item})").tag == "t"


def test_binary_fetch_items_unknown_without_binary():
    assert bad("t FETCH 1 BINARY[1]", binary=False).tag == "t"


def test_uidplus_rfc4315():
    assert one("A003 UID EXPUNGE 3000:3002") == Command("A003", "EXPUNGE", (seq((3000, 3002)),), uid=True)
    assert one("A005 UID COPY 305:310 meeting") == Command("A005", "COPY", (seq((305, 310)), "meeting"), uid=True)
    assert bad("A003 EXPUNGE 3000:3002").tag == "A003"
    assert bad("A003 UID EXPUNGE").tag == "A003"


def test_move_rfc6851():
    assert one("a UID MOVE 42:69 foo") == Command("a", "MOVE", (seq((42, 69)), "foo"), uid=True)
    assert one("a MOVE 1:* Trash") == Command("a", "MOVE", (seq((1, STAR)), "Trash"))


def test_idle_rfc2177():
    r = CommandReader()
    events = r.feed(b"A001 SELECT INBOX\r\nA002 IDLE\r\nDONE\r\nA003 NOOP\r\n")
    assert events == [Command("A001", "SELECT", ("INBOX", SelectParams())), Command("A002", "IDLE")]
    assert r.resume(raw=True) == [RawLine(b"DONE")]
    assert r.resume(raw=False) == [Command("A003", "NOOP")]


def test_idle_done_across_feeds():
    r = CommandReader()
    assert r.feed(b"A002 IDLE\r\n") == [Command("A002", "IDLE")]
    assert r.resume(raw=True) == []
    assert r.feed(b"DO") == []
    assert r.feed(b"NE\r") == []
    assert r.feed(b"\n") == [RawLine(b"DONE")]


def test_id_rfc2971():
    assert args('a023 ID ("name" "sodr" "version" "19.34" "vendor" "Pink Floyd Music Limited")') == (
        (("name", "sodr"), ("version", "19.34"), ("vendor", "Pink Floyd Music Limited")),
    )
    assert args("a042 ID NIL") == (None,)
    assert args('a ID ("name" NIL)') == ((("name", None),),)
    assert args("a ID ()") == ((),)
    assert bad('a ID ("name")').tag == "a"
    assert bad("a ID").tag == "a"


def test_enable_rfc5161():
    assert args("t2 ENABLE CONDSTORE X-GOOD-IDEA") == (("CONDSTORE", "X-GOOD-IDEA"),)
    assert args("t2 enable qresync") == (("QRESYNC",),)
    assert bad("t2 ENABLE").tag == "t2"


def test_sasl_ir_rfc4959():
    assert args("a01 AUTHENTICATE PLAIN dGVzdAB0ZXN0AHRlc3Q=") == ("PLAIN", b"test\x00test\x00test")
    assert args("a01 authenticate plain =") == ("PLAIN", b"")
    assert args("a01 AUTHENTICATE SCRAM-SHA-256") == ("SCRAM-SHA-256", None)
    # a trailing space is no initial response, as Dovecot reads it (mutt built with GNU SASL sends it)
    assert args("a01 AUTHENTICATE CRAM-MD5 ") == ("CRAM-MD5", None)
    for broken in ("dGVzdAB0ZXN0AHRlc3Q", "dGV*", "====", "dGVzdA==x"):
        err = bad(f"a01 AUTHENTICATE PLAIN {broken}")
        assert err.tag == "a01"


def test_condstore_rfc7162():
    assert args("a SELECT INBOX (CONDSTORE)") == ("INBOX", SelectParams(condstore=True))
    _, request = args("s100 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)")
    assert request == FetchRequest((FetchAtt("FLAGS"),), changed_since=12345)
    _, request = args("a FETCH 1:* (FLAGS MODSEQ)")
    assert request.atts == (FetchAtt("FLAGS"), FetchAtt("MODSEQ"))
    seqs, store = args("a103 UID STORE 6,4,8 (UNCHANGEDSINCE 12121230045) +FLAGS.SILENT (\\Deleted)")
    assert seqs == seq(6, 4, 8)
    assert store == StoreRequest("add", True, ("\\Deleted",), unchanged_since=12121230045)
    assert search('a SEARCH MODSEQ "/flags/\\\\draft" all 620162338') == (("MODSEQ", 620162338),)
    assert search("t SEARCH OR NOT MODSEQ 720162338 LARGER 50000") == (
        ("OR", ("NOT", ("MODSEQ", 720162338)), ("LARGER", 50000)),
    )
    assert args("A042 STATUS blurdybloop (UIDNEXT MESSAGES HIGHESTMODSEQ)") == (
        "blurdybloop",
        ("UIDNEXT", "MESSAGES", "HIGHESTMODSEQ"),
    )
    assert bad('a SEARCH MODSEQ "/flags/\\\\draft" nobody 1').tag == "a"
    assert bad("a STORE 1 (FOO 1) +FLAGS (\\Seen)").tag == "a"


def test_qresync_rfc7162():
    mailbox, params = args("A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))")
    assert params.qresync == (67890007, 20050715194045000, seq(41, (43, 211), (214, 541)), None)
    _, params = args(
        "B04 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 "
        "(5000,7500,9000,9990:9999 15000,22500,27000,29970,29973,29976,29979,29982,29985,29988,29991,29994,29997)))"
    )
    uidvalidity, modseq, known, (seqs, uids) = params.qresync
    assert known == seq((1, 29997)) and seqs == seq(5000, 7500, 9000, (9990, 9999))
    assert uids.ranges[0] == (15000, 15000) and len(uids.ranges) == 13
    _, params = args("a SELECT INBOX (QRESYNC (1 2))")
    assert params == SelectParams(qresync=(1, 2, None, None))
    _, params = args("a EXAMINE INBOX (QRESYNC (1 2 (1:3 4:6)) CONDSTORE)")
    assert params == SelectParams(condstore=True, qresync=(1, 2, None, (seq((1, 3)), seq((4, 6)))))
    _, request = args("s100 UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)")
    assert request == FetchRequest((FetchAtt("FLAGS"),), changed_since=12345, vanished=True)
    for line in (
        "s FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)",  # VANISHED only in UID FETCH
        "s UID FETCH 300:500 (FLAGS) (VANISHED)",  # VANISHED needs CHANGEDSINCE
        "s UID FETCH 1 FLAGS (CHANGEDSINCE 1 CHANGEDSINCE 2)",
        "s UID FETCH 1 FLAGS (BOGUS)",
        "a SELECT INBOX (QRESYNC (0 2))",  # uidvalidity is nz-number
        "a SELECT INBOX (QRESYNC (1 2 1:*))",  # no * in known UIDs
        "a SELECT INBOX (QRESYNC (1))",
        "a SELECT INBOX (CONDSTORE CONDSTORE)",
        "a SELECT INBOX (BOGUS)",
        "a SELECT INBOX ()",
    ):
        assert bad(line).tag in ("s", "a"), line


def test_esearch_rfc4731():
    (program,) = args('A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"')
    assert program.returns == ("MIN", "COUNT")
    assert program.key == (
        "AND",
        (("FLAGGED",), ("SINCE", dt.date(1994, 2, 1)), ("NOT", ("FROM", "Smith"))),
    )
    (program,) = args('A283 SEARCH RETURN () FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"')
    assert program.returns == ("ALL",)
    (program,) = args("A284 UID SEARCH RETURN (MIN MAX ALL COUNT) 1:5000")
    assert program.returns == ("MIN", "MAX", "ALL", "COUNT")
    (program,) = args("A285 SEARCH RETURN (ALL) CHARSET UTF-8 TEXT foo")
    assert program.charset == "UTF-8" and program.returns == ("ALL",)
    (program,) = args("A286 SEARCH UNSEEN")
    assert program.returns is None
    assert bad("A287 SEARCH RETURN (PARTIAL 1:10) ALL").tag == "A287"
    assert bad("A287 SEARCH RETURN (MIN)").tag == "A287"


def test_searchres_rfc5182():
    (program,) = args('E1 SEARCH RETURN (SAVE) SINCE 28-Oct-2006 NOT FROM "eric"')
    assert program.returns == ("SAVE",)
    seqs, request = args("E2 FETCH $ (UID INTERNALDATE FLAGS RFC822.SIZE)")
    assert seqs == SeqSet(saved=True)
    assert [a.name for a in request.atts] == ["UID", "INTERNALDATE", "FLAGS", "RFC822.SIZE"]
    assert args('E3 UID COPY $ "Other Messages"') == (SeqSet(saved=True), "Other Messages")
    assert search("A302 UID SEARCH UID $ SMALLER 4096") == (("UID", SeqSet(saved=True)), ("SMALLER", 4096))
    assert search("A303 SEARCH $") == (("SEQ", SeqSet(saved=True)),)
    assert args("A304 UID STORE $ +FLAGS (\\Seen)")[0] == SeqSet(saved=True)
    assert args("A305 UID EXPUNGE $") == (SeqSet(saved=True),)
    assert bad("A306 FETCH $,1 FLAGS").tag == "A306"


def test_list_extended_rfc5258():
    assert args('A02 LIST (SUBSCRIBED) "" "*"') == (ListRequest("", ("*",), ("SUBSCRIBED",)),)
    assert args('A03 LIST () "" "%" RETURN (CHILDREN)') == (ListRequest("", ("%",), (), ("CHILDREN",)),)
    assert args('A04 LIST (REMOTE) "" "%" RETURN (CHILDREN)') == (
        ListRequest("", ("%",), ("REMOTE",), ("CHILDREN",)),
    )
    assert args('A05 LIST (REMOTE SUBSCRIBED) "/" "*"') == (ListRequest("/", ("*",), ("REMOTE", "SUBSCRIBED")),)
    assert args('A06 LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)') == (
        ListRequest("", ("%",), ("SUBSCRIBED", "RECURSIVEMATCH"), ("CHILDREN",)),
    )
    assert args('B01 LIST "" ("INBOX" "Drafts" "Sent/%")') == (ListRequest("", ("INBOX", "Drafts", "Sent/%")),)
    assert args('B02 LIST "" % RETURN ()') == (ListRequest("", ("%",)),)
    for line in (
        'A07 LIST (RECURSIVEMATCH) "" "%"',  # RECURSIVEMATCH needs a base option
        'A08 LIST (BOGUS) "" "%"',
        'A09 LIST "" "%" RETURN (BOGUS)',
        'A10 LIST "" "%" RETURNS (CHILDREN)',
        'A11 LIST "" ()',
        "A12 LIST",
        'A13 LIST ""',
    ):
        assert isinstance(one(line), ParseError), line


def test_list_status_rfc5819():
    assert args("A01 LIST \"\" % RETURN (STATUS (MESSAGES UNSEEN))") == (
        ListRequest("", ("%",), (), ("STATUS",), ("MESSAGES", "UNSEEN")),
    )
    assert args('A02 LIST (SUBSCRIBED RECURSIVEMATCH) "" % RETURN (STATUS (MESSAGES))') == (
        ListRequest("", ("%",), ("SUBSCRIBED", "RECURSIVEMATCH"), ("STATUS",), ("MESSAGES",)),
    )
    assert args('A03 LIST "" % RETURN (CHILDREN STATUS (SIZE HIGHESTMODSEQ))')[0].status_items == (
        "SIZE",
        "HIGHESTMODSEQ",
    )
    assert bad('A04 LIST "" % RETURN (STATUS ())').tag == "A04"


def test_special_use_rfc6154():
    assert args('t1 LIST "" "%" RETURN (SPECIAL-USE)') == (ListRequest("", ("%",), (), ("SPECIAL-USE",)),)
    assert args('t3 LIST (SPECIAL-USE) "" "*"') == (ListRequest("", ("*",), ("SPECIAL-USE",)),)
    assert args("t1 CREATE MySpecialMailbox (USE (\\Drafts \\Sent))") == ("MySpecialMailbox", ("\\Drafts", "\\Sent"))
    assert args("t1 CREATE Arc (use (\\archive))") == ("Arc", ("\\Archive",))
    assert args("t1 CREATE Other (USE (\\Whatever))") == ("Other", ("\\Whatever",))  # the session says NO [USEATTR]
    assert args("t1 CREATE Plain (USE ())") == ("Plain", ())
    assert bad("t1 CREATE X (FOO (\\Drafts))").tag == "t1"
    assert bad("t1 CREATE X (USE (Drafts))").tag == "t1"


def test_status_size_rfc8438():
    assert args("t STATUS INBOX (MESSAGES SIZE UNSEEN)") == ("INBOX", ("MESSAGES", "SIZE", "UNSEEN"))


def test_savedate_rfc8514():
    _, request = args("a FETCH 1 (SAVEDATE)")
    assert request.atts == (FetchAtt("SAVEDATE"),)
    assert search("a SEARCH SAVEDSINCE 1-Jan-2019 SAVEDBEFORE 2-Jan-2019 SAVEDON 3-Jan-2019") == (
        ("SAVEDSINCE", dt.date(2019, 1, 1)),
        ("SAVEDBEFORE", dt.date(2019, 1, 2)),
        ("SAVEDON", dt.date(2019, 1, 3)),
    )
    assert search("a SEARCH SAVEDATESUPPORTED") == (("SAVEDATESUPPORTED",),)


def test_within_rfc5032():
    assert search("A001 SEARCH UNDELETED YOUNGER 259200") == (("UNDELETED",), ("YOUNGER", 259200))
    assert search("A002 SEARCH OLDER 1") == (("OLDER", 1),)
    assert bad("A003 SEARCH OLDER 0").tag == "A003"


# -- every search key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ("ALL", ("ALL",)),
        ("ANSWERED", ("ANSWERED",)),
        ("BCC x@y", ("BCC", "x@y")),
        ("BEFORE 1-Feb-1994", ("BEFORE", dt.date(1994, 2, 1))),
        ('BEFORE "01-feb-1994"', ("BEFORE", dt.date(1994, 2, 1))),
        ("BODY hello", ("BODY", "hello")),
        ('CC "a b"', ("CC", "a b")),
        ("DELETED", ("DELETED",)),
        ("DRAFT", ("DRAFT",)),
        ("FLAGGED", ("FLAGGED",)),
        ("FROM smith", ("FROM", "smith")),
        ('HEADER Message-ID "<x@y>"', ("HEADER", "Message-ID", "<x@y>")),
        ('HEADER X-Spam ""', ("HEADER", "X-Spam", "")),
        ("KEYWORD $Forwarded", ("KEYWORD", "$Forwarded")),
        ("LARGER 1000", ("LARGER", 1000)),
        ("NEW", ("NEW",)),
        ("NOT SEEN", ("NOT", ("SEEN",))),
        ("OLD", ("OLD",)),
        ("ON 31-Dec-2023", ("ON", dt.date(2023, 12, 31))),
        ("OR SEEN FLAGGED", ("OR", ("SEEN",), ("FLAGGED",))),
        ("RECENT", ("RECENT",)),
        ("SEEN", ("SEEN",)),
        ("SENTBEFORE 1-Jan-2000", ("SENTBEFORE", dt.date(2000, 1, 1))),
        ("SENTON 1-Jan-2000", ("SENTON", dt.date(2000, 1, 1))),
        ("SENTSINCE 1-Jan-2000", ("SENTSINCE", dt.date(2000, 1, 1))),
        ("SINCE 9-Sep-2009", ("SINCE", dt.date(2009, 9, 9))),
        ("SMALLER 10", ("SMALLER", 10)),
        ("SUBJECT {5}\r\nhello", ("SUBJECT", "hello")),
        ("TEXT foo", ("TEXT", "foo")),
        ("TO bar", ("TO", "bar")),
        ("UID 1:*", ("UID", seq((1, STAR)))),
        ("UNANSWERED", ("UNANSWERED",)),
        ("UNDELETED", ("UNDELETED",)),
        ("UNDRAFT", ("UNDRAFT",)),
        ("UNFLAGGED", ("UNFLAGGED",)),
        ("UNKEYWORD Junk", ("UNKEYWORD", "Junk")),
        ("UNSEEN", ("UNSEEN",)),
        ("2,4:7,*", ("SEQ", seq(2, (4, 7), STAR))),
        ("(SEEN FLAGGED)", ("AND", (("SEEN",), ("FLAGGED",)))),
        ("((SEEN))", ("AND", (("AND", (("SEEN",),)),))),
        ("MODSEQ 0", ("MODSEQ", 0)),
        ("OLDER 60", ("OLDER", 60)),
        ("YOUNGER 60", ("YOUNGER", 60)),
        ("SAVEDBEFORE 1-Jan-2020", ("SAVEDBEFORE", dt.date(2020, 1, 1))),
        ("SAVEDON 1-Jan-2020", ("SAVEDON", dt.date(2020, 1, 1))),
        ("SAVEDSINCE 1-Jan-2020", ("SAVEDSINCE", dt.date(2020, 1, 1))),
        ("SAVEDATESUPPORTED", ("SAVEDATESUPPORTED",)),
        ("seen", ("SEEN",)),
    ],
)
def test_every_search_key(text, key):
    assert search("s SEARCH " + text) == (key,)
    # and inside a list, NOT, OR
    assert search(f"s SEARCH NOT ({text})") == (("NOT", ("AND", (key,))),)
    assert search(f"s SEARCH OR {text} ALL") == (("OR", key, ("ALL",)),)


def test_search_nesting():
    assert search("a SEARCH OR (SEEN FROM x) NOT OR ANSWERED 1:3") == (
        ("OR", ("AND", (("SEEN",), ("FROM", "x"))), ("NOT", ("OR", ("ANSWERED",), ("SEQ", seq((1, 3)))))),
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        "BOGUS",
        "FROM",
        "BEFORE 1-Foo-1994",
        "BEFORE 31-Feb-1994",
        "BEFORE 1994-02-01",
        'BEFORE "1-Feb-1994',
        "LARGER x",
        "LARGER -1",
        "OR SEEN",
        "NOT",
        "()",
        "(SEEN",
        "SEEN)",
        "SEEN  FLAGGED",
        "UID",
        "UID 0",
        "KEYWORD \\Seen",
        "HEADER Subject",
        "0",
        "1:0",
        "CHARSET UTF-8",
        "ALL CHARSET UTF-8 ALL",
        "TEXT \"unterminated",
        "TEXT \"bad \\escape\"",
    ],
)
def test_bad_search(text):
    err = bad("s SEARCH " + text)
    assert err.tag == "s" and err.code is None


def test_search_too_deep_is_bad_not_a_crash():
    assert bad("a SEARCH " + "NOT " * 5000 + "ALL").tag == "a"
    assert bad("a SEARCH " + "(" * 3000 + "ALL" + ")" * 3000).tag == "a"
    assert search("a SEARCH " + "NOT " * 50 + "ALL")  # reasonable nesting is fine


def test_search_charsets():
    (program,) = args(b"a SEARCH CHARSET ISO-8859-1 SUBJECT \"caf\xe9\"")
    assert program.key == ("AND", (("SUBJECT", "caf\u00e9"),)) and program.charset == "ISO-8859-1"
    (program,) = args(b"a SEARCH CHARSET utf-8 SUBJECT \"caf\xc3\xa9\"")
    assert program.key[1] == (("SUBJECT", "caf\u00e9"),) and program.charset == "UTF-8"
    (program,) = args(b'a SEARCH CHARSET "US-ASCII" SUBJECT cafe')
    assert program.charset == "US-ASCII"
    (program,) = args(b"a SEARCH CHARSET KOI8-R BODY {2}\r\n\xf0\xd2")
    assert program.key[1] == (("BODY", "\u041f\u0440"),)
    # no CHARSET: US-ASCII, read leniently as UTF-8
    (program,) = args(b'a SEARCH SUBJECT "caf\xc3\xa9"')
    assert program.charset == "US-ASCII" and program.key[1] == (("SUBJECT", "caf\u00e9"),)


@pytest.mark.parametrize("charset", ["X-NOSUCH", "base64", "rot13", "hex", "zlib", '"UTF-99"', "undefined"])
def test_bad_charset(charset):
    err = bad(f"a SEARCH CHARSET {charset} TEXT x")
    assert err.code == "BADCHARSET" and err.tag == "a"
    assert "US-ASCII UTF-8" in err.text
    assert P.SUPPORTED_CHARSETS == ("US-ASCII", "UTF-8")


# -- FETCH --------------------------------------------------------------------------------------


def test_fetch_macros():
    names = lambda line: [a.name for a in args(line)[1].atts]  # noqa: E731
    assert names("a FETCH 1 ALL") == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"]
    assert names("a FETCH 1 fast") == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert names("a FETCH 1 FULL") == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]
    assert bad("a FETCH 1 (ALL)").tag == "a"  # macros are not attributes
    assert bad("a FETCH 1 (FLAGS FAST)").tag == "a"


def test_fetch_simple_attributes():
    simple = (
        "ENVELOPE FLAGS INTERNALDATE RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT "
        "BODY BODYSTRUCTURE UID MODSEQ SAVEDATE"
    )
    _, request = args(f"a FETCH 1 ({simple.lower()})")
    assert request.atts == tuple(FetchAtt(n) for n in simple.split())


@pytest.mark.parametrize(
    "item, att",
    [
        ("BODY[]", FetchAtt("BODY[]", Section())),
        ("BODY.PEEK[]", FetchAtt("BODY[]", Section(), peek=True)),
        ("BODY[]<0.65536>", FetchAtt("BODY[]", Section(), partial=(0, 65536))),
        ("BODY.PEEK[]<65536.65536>", FetchAtt("BODY[]", Section(), peek=True, partial=(65536, 65536))),
        ("BODY.PEEK[1.2.MIME]<0.65536>", FetchAtt("BODY[]", Section((1, 2), "MIME"), peek=True, partial=(0, 65536))),
        ("body[header]", FetchAtt("BODY[]", Section((), "HEADER"))),
        ("BODY[TEXT]", FetchAtt("BODY[]", Section((), "TEXT"))),
        ("BODY[1]", FetchAtt("BODY[]", Section((1,)))),
        ("BODY[4.2.2.1]", FetchAtt("BODY[]", Section((4, 2, 2, 1)))),
        ("BODY[3.HEADER]", FetchAtt("BODY[]", Section((3,), "HEADER"))),
        ("BODY[3.TEXT]", FetchAtt("BODY[]", Section((3,), "TEXT"))),
        ("BODY[HEADER.FIELDS (From To)]", FetchAtt("BODY[]", Section((), "HEADER.FIELDS", ("FROM", "TO")))),
        (
            'BODY.PEEK[2.HEADER.FIELDS.NOT ("Subject" {4}\r\nDate)]',
            FetchAtt("BODY[]", Section((2,), "HEADER.FIELDS.NOT", ("SUBJECT", "DATE")), peek=True),
        ),
        (
            "BODY[HEADER.FIELDS (X-Priority x-priority)]",  # echoed as asked, as Dovecot does
            FetchAtt("BODY[]", Section((), "HEADER.FIELDS", ("X-PRIORITY", "X-PRIORITY"))),
        ),
    ],
)
def test_fetch_sections(item, att):
    _, request = args(f"a FETCH 1 {item}")
    assert request.atts == (att,)


def test_thunderbird_style_fetch():
    line = (
        "6 UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS "
        "(From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups "
        "In-Reply-To Content-Type Reply-To)])"
    )
    cmd = one(line)
    assert cmd.uid and cmd.args[1].atts[3].section.fields[0] == "FROM"
    assert len(cmd.args[1].atts[3].section.fields) == 14


@pytest.mark.parametrize(
    "item",
    [
        "RFC822.PEEK",
        "BODY[MIME]",
        "BODY[0]",
        "BODY[1.]",
        "BODY[HEADER.FIELDS]",
        "BODY[HEADER.FIELDS ()]",
        "BODY[HEADER.FIELDS (From]",
        "BODY[BOGUS]",
        "BODY[]<0.0>",
        "BODY[]<0>",
        "BODY[]<.10>",
        "BODY[]<0.10",
        "BODY.PEEK",
        "BODY[",
        "BODYSTRUCTURE[]",
        "FLAGS[]",
        "()",
        "(FLAGS",
        "(FLAGS  UID)",
        "X-GM-MSGID",
    ],
)
def test_bad_fetch_items(item):
    assert bad(f"a FETCH 1 {item}").tag == "a"


@pytest.mark.parametrize(
    "seqs, expected",
    [
        ("1", seq(1)),
        ("1:*", seq((1, STAR))),
        ("*", seq(STAR)),
        ("*:4", seq((STAR, 4))),
        ("2,4:7,9,12:*", seq(2, (4, 7), 9, (12, STAR))),
        ("4294967295", seq(4294967295)),
    ],
)
def test_sequence_sets(seqs, expected):
    assert args(f"a FETCH {seqs} FLAGS")[0] == expected


@pytest.mark.parametrize("seqs", ["0", "1:0", "4294967296", "1,", ",1", "1::2", "a", "1:*:2", "-1", "$1", "1.5"])
def test_bad_sequence_sets(seqs):
    assert bad(f"a FETCH {seqs} FLAGS").tag == "a"


def test_seqset_resolve():
    s = seq((1, STAR), (7, 3))
    assert s.resolve(5) == [(1, 5), (3, 7)]
    assert s.contains(6, 5) and not s.contains(8, 5)


# -- STORE ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "att, mode, silent",
    [
        ("FLAGS", "set", False),
        ("+FLAGS", "add", False),
        ("-FLAGS", "remove", False),
        ("FLAGS.SILENT", "set", True),
        ("+flags.silent", "add", True),
        ("-FLAGS.SILENT", "remove", True),
    ],
)
def test_store_modes(att, mode, silent):
    assert args(f"a STORE 1 {att} (\\Seen)")[1] == StoreRequest(mode, silent, ("\\Seen",))


def test_store_flag_forms():
    assert args("a STORE 1 FLAGS ()")[1].flags == ()
    assert args("a STORE 1 +FLAGS \\seen \\ANSWERED $Label1")[1].flags == ("\\Seen", "\\Answered", "$Label1")
    assert args("a STORE 1 +FLAGS (\\Flagged \\Draft \\Deleted NonJunk)")[1].flags == (
        "\\Flagged",
        "\\Draft",
        "\\Deleted",
        "NonJunk",
    )


@pytest.mark.parametrize(
    "tail",
    [
        "+FLAGS (\\Recent)",
        "+FLAGS \\Recent",
        "+FLAGS (\\Foo)",
        "+FLAGS (\\*)",
        "+FLAGS",
        "+FLAGS ",
        "*FLAGS (\\Seen)",
        "FLAGS.NOISY (\\Seen)",
        "+FLAGS (\\Seen",
        "+FLAGS (\"quoted\")",
        "+FLAGS (a b) c",
        "+FLAGSX (\\Seen)",
    ],
)
def test_bad_store(tail):
    assert bad(f"a STORE 1 {tail}").tag == "a"


# -- mailbox names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wire_name, name",
    [
        ("Entw&APw-rfe", "Entw\u00fcrfe"),
        ('"&ZeVnLIqe-"', "\u65e5\u672c\u8a9e"),
        ("Tom&-Jerry", "Tom&Jerry"),
        ('"with space"', "with space"),
        ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e"),
    ],
)
def test_mailbox_modified_utf7(wire_name, name):
    assert args(f"a SELECT {wire_name}")[0] == name


@pytest.mark.parametrize("wire_name", ["&Jjo", '"&AGE-"', "&U,BTF2XlZyyKng-x&", "&ZeVnLIqe"])
def test_mailbox_invalid_modified_utf7_is_taken_as_is(wire_name):
    """Dovecot takes an ASCII name that is not valid modified UTF-7 literally (imaptest `atoms`)."""
    assert args(f"a SELECT {wire_name}")[0] == wire_name.strip('"')


def test_mailbox_8bit_is_bad():
    err = bad(b'a CREATE "Entw\xc3\xbcrfe"')
    assert "modified UTF-7" in err.text and err.tag == "a"


@given(st.text(min_size=1, max_size=30).filter(lambda s: "\x00" not in s))
@settings(max_examples=150, deadline=None)
def test_mailbox_round_trip(name):
    line = b"a SELECT " + wire.mailbox(name) + b"\r\n"
    (cmd,) = [e for e in run(line) if not isinstance(e, Continuation)]
    expected = "INBOX" if name.upper() == "INBOX" else name
    assert cmd.args[0] == expected


# -- tags and command names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, tag",
    [
        ("+ NOOP", "*"),
        ("* NOOP", "*"),
        ("A+1 NOOP", "*"),
        ('"a" NOOP', "*"),
        ("a(1 NOOP", "*"),
        (" NOOP", "*"),
        ("a{1} NOOP", "*"),
        ("\x00 NOOP", "*"),
        ("A1", "A1"),
        ("A1 ", "A1"),
        ("A1  NOOP", "A1"),
        ("A1 NO\x01OP", "A1"),
        ("A1 UID", "A1"),
        ("A1 UID LOGIN a b", "A1"),
        ("A1 UID NOOP", "A1"),
        ("A1 UID EXPUNGE", "A1"),
    ],
)
def test_bad_tags_and_names(line, tag):
    assert bad(line).tag == tag


def test_unusual_but_valid_tags():
    assert one("a]b NOOP") == Command("a]b", "NOOP")
    assert one("0 NOOP") == Command("0", "NOOP")
    assert one("$x.1 noop") == Command("$x.1", "NOOP")


def test_error_text_is_safe_to_echo():
    err = bad(b"A1 FETCH 1 (\xff\x01\x7f" + b"x" * 200 + b")")
    assert all(" " <= c <= "~" for c in err.text) and len(err.text) < 200


def test_empty_lines_are_ignored():
    assert run(b"\r\n\r\na NOOP\r\n\n") == [Command("a", "NOOP")]


def test_bare_lf_line_ends():
    assert run(b"a NOOP\nb LOGIN {3}\nabc x\n") == [
        Command("a", "NOOP"),
        Continuation(),
        Command("b", "LOGIN", ("abc", "x")),
    ]


def test_quoted_strings():
    assert args(b'a LOGIN "" "\\\\"') == ("", "\\")
    assert bad(b'a LOGIN "a\\b" x').tag == "a"  # only \\ and \" may be escaped
    assert bad(b'a LOGIN "a\rb" x').tag == "a"
    assert bad(b'a LOGIN "a\x00b" x').tag == "a"
    assert bad(b'a LOGIN "ab x').tag == "a"
    assert args(b'a LOGIN "caf\xc3\xa9" x') == ("caf\u00e9", "x")  # 8-bit in quoted is read as UTF-8


def test_nul_in_string_literal_is_bad_but_fine_in_append():
    assert bad(b"a LOGIN {3+}\r\na\x00b x\r\n").tag == "a"
    assert args(b"a APPEND INBOX {3+}\r\na\x00b\r\n")[1][0].data == b"a\x00b"


# -- literals --------------------------------------------------------------------------------


def test_literal_across_feeds():
    r = CommandReader()
    assert r.feed(b"a LOGIN {5}") == []
    assert r.feed(b"\r") == []
    assert r.feed(b"\n") == [Continuation()]
    assert r.feed(b"fr") == []
    assert r.feed(b"ed") == []
    assert r.feed(b"! sec") == []
    assert r.feed(b"ret\r\nb NOOP\r\n") == [Command("a", "LOGIN", ("fred!", "secret")), Command("b", "NOOP")]


def test_literal_may_contain_crlf_and_braces():
    assert args(b"a LOGIN {9}\r\n{3}\r\nx\r\ny {2}\r\n\r\n") == ("{3}\r\nx\r\ny", "\r\n")


def test_zero_length_literals():
    r = CommandReader()
    assert r.feed(b"a LOGIN {0}\r\n") == [Continuation()]
    assert r.feed(b" {0+}\r\n\r\n") == [Command("a", "LOGIN", ("", ""))]


def test_continuation_only_for_sync_literals():
    events = run(b"a LOGIN {1}\r\nx {1+}\r\ny\r\nb LOGIN {1+}\r\nx {1}\r\ny\r\n")
    assert events == [
        Continuation(),
        Command("a", "LOGIN", ("x", "y")),
        Continuation(),
        Command("b", "LOGIN", ("x", "y")),
    ]


def test_literal_must_end_the_line():
    assert bad(b'a LOGIN {3} "x"').tag == "a"
    assert bad(b"a LOGIN {3 x").tag == "a"


def test_literal_in_no_argument_command_is_refused_without_continuation():
    assert CommandReader().feed(b"a NOOP {3}\r\n") == [
        ParseError("a", "Error in IMAP command NOOP: unexpected literal")
    ]


def test_literal_for_unknown_command_or_bad_tag_gets_no_continuation():
    (err,) = CommandReader().feed(b"a BOGUS {3}\r\n")
    assert isinstance(err, ParseError) and err.tag == "a"
    (err,) = CommandReader().feed(b"a+ LOGIN {3}\r\n")
    assert isinstance(err, ParseError) and err.tag == "*"
    (err,) = CommandReader().feed(b"{3}\r\n")
    assert err.tag == "*"
    (err,) = CommandReader().feed(b"a UID BOGUS {3}\r\n")
    assert err.tag == "a"
    events = CommandReader().feed(b"a BOGUS {3+}\r\nabc def\r\nb NOOP\r\n")
    assert [type(e) for e in events] == [ParseError, Command]


SMALL = Limits(max_line=100, max_literal=1000, max_command=1500)


def test_oversize_sync_literal_toobig_without_continuation():
    r = CommandReader(SMALL)
    events = r.feed(b"a APPEND INBOX {1001}\r\n")
    assert events == [ParseError("a", "Message too big (limit 1000 octets)", "TOOBIG")]
    assert r.feed(b"b NOOP\r\n") == [Command("b", "NOOP")]


def test_oversize_nonsync_literal_is_skipped_without_buffering():
    r = CommandReader(SMALL)
    events = r.feed(b"a APPEND INBOX {5000+}\r\n")
    assert events == [ParseError("a", "Message too big (limit 1000 octets)", "TOOBIG")]
    for _ in range(50):
        assert r.feed(b"x" * 100) == []
        assert len(r._buf) == 0
    assert r.feed(b" (\\Seen) {3+}\r\nabc\r\nb NOOP\r\n") == [Command("b", "NOOP")]


def test_oversize_literal_in_multiappend_leaves_nothing_behind():
    r = CommandReader(SMALL)
    events = r.feed(b"a APPEND INBOX {900+}\r\n" + b"x" * 900 + b" {700+}\r\n")
    assert events == [ParseError("a", "Command too big (limit 1500 octets)", "TOOBIG")]
    assert r._literals == [] and r._segments == []
    assert r.feed(b"y" * 700 + b"\r\nb NOOP\r\n") == [Command("b", "NOOP")]


def test_literal_in_other_commands_counts_against_the_line_limit():
    r = CommandReader(SMALL)
    (err,) = r.feed(b"a LOGIN {101}\r\n")
    assert err.code == "TOOBIG" and err.tag == "a"
    (err,) = r.feed(b"a LOGIN {60}\r\n" + b"u" * 60 + b" {30}\r\n")[1:]
    assert err.code == "TOOBIG"
    assert r.feed(b"b NOOP\r\n") == [Command("b", "NOOP")]


def test_literal_limit_is_inclusive():
    r = CommandReader(SMALL)
    events = r.feed(b"a APPEND INBOX {1000+}\r\n" + b"m" * 1000 + b"\r\n")
    assert events[0].args[1][0].data == b"m" * 1000


def test_huge_literal_size():
    (err,) = CommandReader().feed(b"a APPEND INBOX {99999999999999999999}\r\n")
    assert err.code == "TOOBIG"
    events = CommandReader().feed(b"a APPEND INBOX {999999999999999999999}\r\nb NOOP\r\n")
    assert [type(e) for e in events] == [ParseError, Command]  # 21 digits: not a literal, a syntax error


# -- long lines ---------------------------------------------------------------------------------


def test_long_line_is_refused_and_the_next_command_parsed():
    r = CommandReader(SMALL)
    events = r.feed(b"a1 LOGIN " + b"x" * 200 + b" y\r\nb NOOP\r\n")
    assert events == [ParseError("a1", "Line too long"), Command("b", "NOOP")]


def test_long_line_is_refused_before_its_end_arrives():
    r = CommandReader(SMALL)
    assert r.feed(b"a1 SEARCH " + b"x" * 50) == []
    assert r.feed(b"x" * 50) == [ParseError("a1", "Line too long")]
    for _ in range(100):
        assert r.feed(b"x" * 1000) == []
        assert len(r._buf) == 0
    assert r.feed(b"\r\nb NOOP\r\n") == [Command("b", "NOOP")]


def test_line_limit_is_exact():
    limit = Limits(max_line=20)
    line = b"a LOGIN " + b"u" * 10 + b" p"  # 20 octets
    assert run(line + b"\r\n", CommandReader(limit))[0].args == ("u" * 10, "p")
    assert run(line + b"x\r\n", CommandReader(limit)) == [ParseError("a", "Line too long")]
    assert run(line + b"\r\n", CommandReader(limit), chunk=1)[0].args == ("u" * 10, "p")
    assert run(line + b"x\r\n", CommandReader(limit), chunk=1) == [ParseError("a", "Line too long")]


def test_long_line_with_unreadable_tag():
    assert run(b"x" * 300 + b"\r\n", CommandReader(SMALL)) == [ParseError("*", "Line too long")]


def test_long_line_announcing_nonsync_literal_skips_it():
    data = b"a1 APPEND INBOX " + b"(" * 200 + b" {10+}\r\n0123456789\r\nb NOOP\r\n"
    events = run(data, CommandReader(SMALL))
    assert events == [ParseError("a1", "Line too long"), Command("b", "NOOP")]
    assert run(data, CommandReader(SMALL), chunk=1) == events


def test_long_continuation_line_after_literal():
    r = CommandReader(SMALL)
    events = r.feed(b"a APPEND INBOX {3+}\r\nabc" + b" " * 150 + b"\r\nb NOOP\r\n")
    assert events == [ParseError("a", "Line too long"), Command("b", "NOOP")]


def test_long_raw_line():
    r = CommandReader(SMALL)
    assert r.feed(b"a IDLE\r\n") == [Command("a", "IDLE")]
    assert r.resume(raw=True) == []
    assert r.feed(b"D" * 150) == [ParseError("*", "Line too long")]
    assert r.paused
    assert r.resume(raw=False) == []
    assert r.feed(b"{3+}\r\nb NOOP\r\n") == [Command("b", "NOOP")]  # raw lines announce no literals


# -- pausing -------------------------------------------------------------------------------------


def test_pause_after_authenticate_with_initial_response():
    r = CommandReader()
    events = r.feed(b"a AUTHENTICATE PLAIN AGZyZWQAc2VjcmV0\r\nb NOOP\r\n")
    assert events == [Command("a", "AUTHENTICATE", ("PLAIN", b"\x00fred\x00secret"))]
    assert r.resume(raw=False) == [Command("b", "NOOP")]


def test_bad_idle_does_not_pause():
    r = CommandReader()
    assert [type(e) for e in r.feed(b"a IDLE now\r\nb NOOP\r\n")] == [ParseError, Command]
    assert not r.paused


def test_raw_mode_set_directly():
    r = CommandReader()
    r.raw_mode = True
    assert r.feed(b"abc\r\nd NOOP\r\n") == [RawLine(b"abc")]
    assert r.resume() == [Command("d", "NOOP")]


def test_paused_reader_bounds_what_it_keeps():
    r = CommandReader(Limits(max_line=10, max_literal=10))
    assert r.feed(b"a IDLE\r\n") == [Command("a", "IDLE")]
    r.feed(b"x" * 100)
    assert len(r._buf) <= 22
    events = r.resume(raw=True)
    assert isinstance(events[0], ParseError) and events[0].tag == "*"


def test_clear_drops_a_half_read_command():
    r = CommandReader()
    assert r.feed(b"a LOGIN {5}\r\nab") == [Continuation()]
    r.clear()
    assert r.feed(b"b NOOP\r\n") == [Command("b", "NOOP")]


def test_parse_command_directly():
    assert P.parse_command(b"a NOOP") == Command("a", "NOOP")
    assert P.parse_command("a LOGIN \ue000 x", [(b"u", False)]) == Command("a", "LOGIN", ("u", "x"))
    assert isinstance(P.parse_command("a LOGIN \ue000 x", []), ParseError)


# -- properties --------------------------------------------------------------------------------

CORPUS = [
    b"a001 login mrc secret\r\n",
    b"a002 select inbox (CONDSTORE)\r\n",
    b"a003 fetch 12 full\r\n",
    b"a004 UID fetch 1:* (UID BODY.PEEK[HEADER.FIELDS (From {2}\r\nTo)]<0.100>) (CHANGEDSINCE 5 VANISHED)\r\n",
    b"a005 store 12 +flags \\deleted\r\n",
    b"A003 APPEND saved-messages (\\Seen) {12}\r\nHello\r\nWorld"
    b" (\\Draft) \" 1-Aug-2002 22:00:00 +0200\" {3+}\r\nabc\r\n",
    b"A11 UID STORE $ (UNCHANGEDSINCE 7) -FLAGS.SILENT \\Seen $Junk\r\n",
    b"A12 SELECT {5}\r\ninbox (QRESYNC (1 2 1:9 (1:3 4:6)))\r\n",
    b"A13 SEARCH NOT OR HEADER {7+}\r\nSubject \"x\" KEYWORD $a BEFORE \"1-Jan-2000\" MODSEQ 5 UID 1:*\r\n",
    b"A14 CREATE \"Entw&APw-rfe\" (USE (\\Drafts))\r\nA15 ENABLE QRESYNC\r\nA16 UID EXPUNGE 1:5\r\n",
    b"A17 STATUS INBOX (MESSAGES SIZE)\r\nA18 LSUB \"\" *\r\nA19 UID MOVE 1 Trash\r\n",
    b"A20 FETCH 1 (BINARY.PEEK[1]<0.10> BINARY.SIZE[1] BODY[1.2.MIME])\r\n",
    b"A004 APPEND Drafts ~{4}\r\n\x00\x01\x02\x03\r\n",
    b"A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man\r\n",
    b"A282 SEARCH RETURN (MIN COUNT) CHARSET UTF-8 OR FLAGGED (SINCE 1-Feb-1994 NOT FROM {5}\r\nSmith) UID $\r\n",
    b"A02 LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (% INBOX.*) RETURN (CHILDREN STATUS (MESSAGES SIZE))\r\n",
    b"A05 IDLE\r\nDONE\r\n",
    b"A06 AUTHENTICATE PLAIN\r\nAGZyZWQAc2VjcmV0\r\n",
    b"A07 STARTTLS\r\n",
    b"a042 ID (\"name\" \"sodr\" \"version\" NIL)\r\n",
    b"A08 BOGUS {3+}\r\nxyz\r\n",
    b"A09 APPEND INBOX {99999+}\r\n",
    b"\r\n",
    b"A10 NOOP\n",
    b"garbage \"\x00\xff{\r\n",
]


def feed_all(data: bytes, limits: Limits | None, cuts: list[int]) -> list:
    reader = CommandReader(limits)
    events: list = []
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        pump(reader, events, reader.feed(data[last:cut]))
        last = cut
    return events


# IMAP_EXAMPLES=5000 runs the properties longer (default keeps the file fast).
EXAMPLES = int(os.environ.get("IMAP_EXAMPLES", "250"))

LIMITS = st.sampled_from([None, Limits(max_line=40, max_literal=8, max_command=12), Limits(max_line=8, max_literal=2)])


@given(
    st.lists(st.sampled_from(CORPUS), min_size=1, max_size=6).map(b"".join),
    LIMITS,
    st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_cut_anywhere_same_events(data, limits, cuts):
    whole = feed_all(data, limits, [])
    assert feed_all(data, limits, [c % (len(data) + 1) for c in cuts]) == whole
    assert feed_all(data, limits, list(range(len(data)))) == whole  # byte by byte


FRAGMENTS = st.sampled_from(
    [b"{", b"}", b"+}", b"~{", b"{3}\r\n", b"{2+}\r\n", b"~{1+}\r\n", b"{0}\r\n", b"\r\n", b"\n", b"\r", b'"', b"\\",
     b"(", b")", b"[", b"]", b"<", b">", b" ", b"a1 ", b"UID ", b"FETCH ", b"SEARCH ", b"APPEND ", b"IDLE",
     b"AUTHENTICATE ", b"STORE ", b"LIST ", b"SELECT ", b"1:*", b"$", b"NOT ", b"OR ", b"BODY[", b"CHARSET ",
     b"\x00", b"\xff", b"*", b"%", b"99999999999999999999"]  # fmt: skip
)


@given(st.lists(st.one_of(FRAGMENTS, st.binary(max_size=8)), max_size=40).map(b"".join), LIMITS, st.data())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_garbage_never_raises(data, limits, draw):
    whole = feed_all(data, limits, [])
    for event in whole:
        assert isinstance(event, (Command, ParseError, Continuation, RawLine))
        if isinstance(event, ParseError):
            assert all(" " <= c <= "~" for c in event.text)
    cuts = draw.draw(st.lists(st.integers(0, len(data)), max_size=6))
    assert feed_all(data, limits, cuts) == whole


@given(st.binary(max_size=300))
@settings(max_examples=EXAMPLES, deadline=None)
def test_random_bytes_never_raise(data):
    events = feed_all(data, Limits(max_line=64, max_literal=16), [])
    assert all(isinstance(e, (Command, ParseError, Continuation, RawLine)) for e in events)

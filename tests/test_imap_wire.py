"""IMAP response formatting helpers: values to wire bytes, checked against the parser where it applies."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.imap import wire
from retrieval.imap.parser import CommandReader


def parse_astring(data: bytes) -> str:
    """Read `data` back through the command grammar (as LOGIN's user name)."""
    reader = CommandReader()
    events = [e for e in reader.feed(b"a LOGIN " + data + b" x\r\n") if type(e).__name__ == "Command"]
    assert len(events) == 1, events
    return events[0].args[0]


def test_literal_and_literal8():
    assert wire.literal(b"") == b"{0}\r\n"
    assert wire.literal(b"a\r\nb") == b"{4}\r\na\r\nb"
    assert wire.literal("\u00e9") == b"{2}\r\n\xc3\xa9"
    assert wire.literal8(b"\x00\x01") == b"~{2}\r\n\x00\x01"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", b'""'),
        ("hello world", b'"hello world"'),
        ('say "hi"', b'"say \\"hi\\""'),
        ("back\\slash", b'"back\\\\slash"'),
        ("line\r\nbreak", b"{11}\r\nline\r\nbreak"),
        ("caf\u00e9", b"{5}\r\ncaf\xc3\xa9"),
        (b"nul\x00", b"{4}\r\nnul\x00"),
        (b"\xff", b"{1}\r\n\xff"),
    ],
)
def test_quoted(value, expected):
    assert wire.quoted(value) == expected


def test_quoted_never_gives_up_quoting_for_length_or_escapes():
    assert wire.quoted("x" * 5000) == b'"' + b"x" * 5000 + b'"'
    assert wire.quoted('"' * 10) == b'"' + b'\\"' * 10 + b'"'


@pytest.mark.parametrize(
    "value, expected",
    [
        ("", b'""'),
        ("Subject line", b'"Subject line"'),
        ("atom", b'"atom"'),  # string never yields an atom
        ('1"2"3"4"', b'"1\\"2\\"3\\"4\\""'),  # four escapes: still quoted
        ('1"2"3"4"5"', b'{10}\r\n1"2"3"4"5"'),  # five: a literal is shorter
        ("a\nb", b"{3}\r\na\nb"),
        ("\u00fc", b"{2}\r\n\xc3\xbc"),
    ],
)
def test_string(value, expected):
    assert wire.string(value) == expected


def test_string_long_values_become_literals():
    assert wire.string("x" * wire.LONG_STRING) == b'"' + b"x" * wire.LONG_STRING + b'"'
    assert wire.string("x" * (wire.LONG_STRING + 1)).startswith(b"{%d}\r\n" % (wire.LONG_STRING + 1))


@pytest.mark.parametrize(
    "value, expected",
    [
        ("fred", b"fred"),
        ("a]b", b"a]b"),
        ("NIL", b'"NIL"'),
        ("nil", b'"nil"'),
        ("", b'""'),
        ("two words", b'"two words"'),
        ("a%b", b'"a%b"'),
        ("a*b", b'"a*b"'),
        ("(x)", b'"(x)"'),
        ("{3}", b'"{3}"'),
        ("x\r\n", b"{3}\r\nx\r\n"),
    ],
)
def test_astring(value, expected):
    assert wire.astring(value) == expected


def test_nstring():
    assert wire.nstring(None) == b"NIL"
    assert wire.nstring("NIL") == b'"NIL"'
    assert wire.nstring(b"") == b'""'
    assert wire.nstring(b"a\r\n") == b"{3}\r\na\r\n"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("INBOX", b"INBOX"),
        ("inbox", b"INBOX"),
        ("Sent", b"Sent"),
        ("Sent Items", b'"Sent Items"'),
        ("Entw\u00fcrfe", b"Entw&APw-rfe"),
        ("Tom&Jerry", b"Tom&-Jerry"),
        ("\u65e5\u672c\u8a9e", b"&ZeVnLIqe-"),
        ("NIL", b'"NIL"'),
        ("100%", b'"100%"'),
        ("", b'""'),
    ],
)
def test_mailbox(name, expected):
    assert wire.mailbox(name) == expected


@given(st.text(max_size=40).filter(lambda s: "\x00" not in s))
@settings(max_examples=200, deadline=None)
def test_astring_round_trips_through_the_parser(value):
    assert parse_astring(wire.astring(value)) == value
    assert parse_astring(wire.string(value)) == value
    assert parse_astring(wire.quoted(value)) == value


def test_flag_list():
    assert wire.flag_list([]) == b"()"
    assert wire.flag_list(["\\Seen", "\\Answered", "$Forwarded"]) == b"(\\Seen \\Answered $Forwarded)"
    assert wire.flag_list((b"\\Draft",)) == b"(\\Draft)"


@pytest.mark.parametrize(
    "numbers, expected",
    [
        ([], b""),
        ([5], b"5"),
        ([1, 2, 3], b"1:3"),
        ([1, 2, 3, 5, 7, 8, 9], b"1:3,5,7:9"),
        ([9, 8, 7, 5, 3, 2, 1, 3, 3], b"1:3,5,7:9"),
        ([1, 3, 5], b"1,3,5"),
        (range(10, 0, -1), b"1:10"),
        ({4294967295, 4294967294}, b"4294967294:4294967295"),
    ],
)
def test_seqset(numbers, expected):
    assert wire.seqset(numbers) == expected


@given(st.sets(st.integers(min_value=1, max_value=200)))
@settings(max_examples=150, deadline=None)
def test_seqset_round_trips_through_the_parser(numbers):
    text = wire.seqset(numbers)
    if not numbers:
        assert text == b""
        return
    (cmd,) = CommandReader().feed(b"a FETCH " + text + b" FLAGS\r\n")
    got = set()
    for a, b in cmd.args[0].resolve(200):
        got.update(range(a, b + 1))
    assert got == numbers


def test_date_time():
    ts = dt.datetime(1994, 2, 7, 21, 52, 25, tzinfo=dt.timezone(dt.timedelta(hours=-8))).timestamp()
    assert wire.date_time(ts, -8 * 3600) == b'" 7-Feb-1994 21:52:25 -0800"'
    assert wire.date_time(ts, dt.timezone.utc) == b'" 8-Feb-1994 05:52:25 +0000"'
    assert wire.date_time(ts, dt.timezone(dt.timedelta(hours=5, minutes=30))) == b'" 8-Feb-1994 11:22:25 +0530"'
    assert wire.date_time(ts, dt.timezone(dt.timedelta(hours=-3, minutes=-30))) == b'" 8-Feb-1994 02:22:25 -0330"'
    ts = dt.datetime(2023, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc).timestamp()
    assert wire.date_time(ts, 0) == b'"31-Dec-2023 23:59:59 +0000"'
    local = wire.date_time(ts)  # local time zone: still the right shape
    assert len(local) == 28 and local[0:1] == local[-1:] == b'"'


@given(st.integers(min_value=0, max_value=4_000_000_000), st.integers(min_value=-14 * 60, max_value=14 * 60))
@settings(max_examples=150, deadline=None)
def test_date_time_round_trips_through_append(ts, offset_minutes):
    text = wire.date_time(ts, offset_minutes * 60)
    events = CommandReader().feed(b"a APPEND INBOX " + text + b" {1+}\r\nx\r\n")
    when = events[0].args[1][0].internaldate
    assert when.timestamp() == ts
    assert when.utcoffset() == dt.timedelta(minutes=offset_minutes)


def test_paren_and_number():
    assert wire.paren([]) == b"()"
    assert wire.paren([b"UID", 5, "FLAGS", wire.flag_list(["\\Seen"])]) == b"(UID 5 FLAGS (\\Seen))"
    assert wire.number(42) == b"42"


def test_text_is_safe():
    assert wire.text("ok") == b"ok"
    assert wire.text("a\r\nb\u00e9") == b"a??b?"
    assert len(wire.text("x" * 1000)) == 400

"""retrieval.mime: small handmade messages for each feature.

Expected values are Dovecot 2.3.19's answers to the same messages (checked
against a private Dovecot while writing them); tests/test_mime_oracle.py does
the same over the 339-message oracle corpus.
"""

from __future__ import annotations

import pytest

from retrieval.imap.ast import Section
from retrieval.mime import cte
from retrieval.mime.encoded import decode_header, normalize, search_header
from retrieval.mime.message import BinaryParseError, Message, UnknownCTE, for_body_literal, to_crlf
from retrieval.mime.rfc822 import Address, imap_string, parse_addresses, rfc2231_parse, Parser
from retrieval.mime.textsearch import parse_date


def sec(part=(), text=None, fields=()):
    return Section(part=tuple(part), text=text, fields=tuple(fields))


MULTI = (
    b"Subject: m\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=XX\n\n"
    b"pre\n--XX\nContent-Type: text/plain\n\npart1\n"
    b"--XX\nContent-Type: message/rfc822\n\nSubject: inner\n\ninner body\n--XX--\nepi\n"
)


# -- sizes and line ends ------------------------------------------------------------------


@pytest.mark.parametrize(
    "data,size",
    [
        (b"Subject: a\n\nbody\n", 20),
        (b"Subject: a\r\n\r\nbody\r\n", 20),
        (b"Subject: a\r\n\nbody\n", 20),
        (b"Subject: a\n\nno newline", 24),
        (b"", 0),
        (b"a\rb\n", 5),  # a lone CR stays, the LF gets its CR
    ],
)
def test_size_counts_crlf(data, size):
    m = Message(data)
    assert m.size == size  # before parsing (fast path)
    m.bodystructure()
    assert m.size == size  # and from the parsed structure


def test_to_crlf_and_nul():
    assert to_crlf(b"a\nb\r\nc\rd\n") == b"a\r\nb\r\nc\rd\r\n"
    assert for_body_literal(b"a\x00b") == b"a\x80b"


def test_lazy_parse():
    m = Message(b"Subject: x\n\nbody\n")
    assert m._root is None
    _ = m.size
    assert m._root is None
    m.envelope()
    assert m._root is not None


# -- ENVELOPE ----------------------------------------------------------------------------


def test_envelope_fields():
    m = Message(
        b"From: John Doe <john@example.com>\nFrom: jane@example.com\nSubject: first\n"
        b"Subject:  second  \n\ttry\nDate: Fri,\n 4 May 2001 14:05:44 -0400\n"
        b'To: Group: a@b.c, "Q, R" <q@r.s>;, (Only Comment) x@y.z\nCc: <@r1,@r2:u@d.e>\n'
        b"Bcc: =?utf-8?q?J=C3=B6rg?= <j@x.de>\nIn-Reply-To: <a@b>\nMessage-ID: <c@d>\n\nbody\n"
    )
    frm = b'(("John Doe" NIL "john" "example.com")(NIL NIL "jane" "example.com"))'
    assert m.envelope() == (
        b'("Fri, 4 May 2001 14:05:44 -0400" "second try" ' + frm + b" " + frm + b" " + frm + b" "
        b'((NIL NIL "Group" NIL)(NIL NIL "a" "b.c")("Q, R" NIL "q" "r.s")(NIL NIL NIL NIL)(NIL NIL "x" "y.z")) '
        b'((NIL "@r1,@r2" "u" "d.e")) (("=?utf-8?q?J=C3=B6rg?=" NIL "j" "x.de")) "<a@b>" "<c@d>")'
    )


def test_envelope_empty_and_broken_addresses():
    assert Message(b"\nbody").envelope() == b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
    m = Message(b"Subject: hi\nReply-To: justname, a@\nSender: <>\n\nx")
    assert m.envelope() == (
        b'(NIL "hi" NIL ((NIL NIL "MISSING_MAILBOX" "MISSING_DOMAIN")) '
        b'((NIL NIL "justname" "MISSING_DOMAIN")(NIL NIL "a" "MISSING_DOMAIN")) NIL NIL NIL NIL NIL)'
    )


def test_envelope_nul_becomes_replacement_char():
    m = Message(b'Subject: a\x00b\nFrom: "x\x00y" <a@b.c>\n\nhello\n')
    env = m.envelope()
    assert b"a\xef\xbf\xbdb" in env and b"x\xef\xbf\xbdy" in env


def test_envelope_local_part_dots():
    # Dovecot reads local parts with dots anywhere, but no blank after a dot
    assert parse_addresses(b"a..b@c")[0].mailbox == b"a..b"
    assert parse_addresses(b".a@c")[0].mailbox == b".a"
    a = parse_addresses(b"a . b @ c . d")[0]
    assert (a.name, a.mailbox, a.domain) == (b"a.  b", b"MISSING_MAILBOX", b"MISSING_DOMAIN")
    assert parse_addresses(b"a .b @c . d")[0].domain == b"c.d"
    strict = parse_addresses(b"a . b@c", strict_dots=True)[0]
    assert (strict.mailbox, strict.domain) == (b"a.b", b"c")


def test_address_forms():
    assert parse_addresses(b"") == []
    assert parse_addresses(b" (just a comment) ") == []
    g = parse_addresses(b"undisclosed-recipients:;")
    assert [(a.mailbox, a.domain) for a in g] == [(b"undisclosed-recipients", None), (None, None)]
    a = parse_addresses(b"user@example.com (Comment Name)")[0]
    assert (a.name, a.mailbox, a.domain) == (b"Comment Name", b"user", b"example.com")
    a = parse_addresses(b"Name <broken")[0]
    assert a.domain == b"SYNTAX_ERROR"


# -- BODYSTRUCTURE / BODY -------------------------------------------------------------------


def test_simple_text_defaults():
    m = Message(b"Subject: x\n\nhello\n")
    assert m.bodystructure() == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 7 1 NIL NIL NIL NIL)'
    assert m.body() == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 7 1)'


def test_content_headers_need_mime():
    # no MIME-Version and no Content-Type: the Content-* fields are ignored
    m = Message(b"Content-Transfer-Encoding: base64\nContent-Disposition: attachment\n\naGVsbG8=\n")
    assert m.bodystructure() == b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 1 NIL NIL NIL NIL)'


def test_first_content_type_wins_and_folding_removed():
    m = Message(
        b"Content-Type: text/plain; name=x\nContent-Type: text/html\n"
        b"Content-Description: a\n  b\n\nhello\n"
    )
    assert m.bodystructure() == (
        b'("text" "plain" ("name" "x" "charset" "us-ascii") NIL "a  b" "7bit" 7 1 NIL NIL NIL NIL)'
    )


@pytest.mark.parametrize(
    "ctype,expected",
    [
        ("text/plain foo", b'("" "" NIL NIL NIL "7bit" 7 NIL '),
        ("text", b'("text" "" ("charset" "us-ascii") NIL NIL "7bit" 7 1 NIL '),
        ("/plain", b'("" "" NIL NIL NIL "7bit" 7 NIL '),
        ("TeXt/HTML; charset=UTF-8 (c); name=\"a b\"", b'("TeXt" "HTML" ("charset" "UTF-8" "name" "a b") NIL NIL "7bit" 7 1 NIL '),
        ("image/gif; x=y z=w", b'("image" "gif" ("x" "y") NIL NIL "7bit" 7 NIL '),
        ("foo/bar; a=b; a=c", b'("foo" "bar" ("a" "b" "a" "c") NIL NIL "7bit" 7 NIL '),
    ],
)
def test_broken_content_types(ctype, expected):
    m = Message(f"MIME-Version: 1.0\nContent-Type: {ctype}\n\nhello\n".encode())
    assert m.bodystructure().startswith(expected)


def test_rfc2231_parameters_pass_through():
    def params(value: bytes):
        p = Parser(value)
        return rfc2231_parse(p)

    assert params(b"; name*=utf-8''a%20b") == [(b"name*", b"utf-8''a%20b")]
    assert params(b"; f*1=b; f*0=a; g*0=c; g*2=d") == [(b"f", b"ab"), (b"g*0", b"c"), (b"g*2", b"d")]
    assert params(b"; f*0=a; f*1*=b") == [(b"f*", b"''ab")]
    assert params(b"; name*0*=utf-8''a%20b; name*1=c%d") == [(b"name*", b"utf-8''a%20bc%25d")]
    assert params(b"; name==?utf-8?q?a?=; b=[x]; c=a/b") == [(b"name", b"=?utf-8?q?a?="), (b"b", b""), (b"c", b"a")]


def test_disposition_language_location():
    m = Message(
        b"MIME-Version: 1.0\nContent-Type: application/x\nContent-Disposition: attachment; filename=foo\n"
        b"Content-Language: en, de (x) ,fr\nContent-Location: http://x/y\nContent-ID: <id@x>\n"
        b"Content-MD5: abc\nContent-Transfer-Encoding: 8bit x\n\nhello\n"
    )
    assert m.bodystructure() == (
        b'("application" "x" NIL "<id@x>" NIL "7bit" 7 "abc" ("attachment" ("filename" "foo")) '
        b'("en" "de" "fr") "http://x/y")'
    )


def test_multipart_and_message_rfc822():
    m = Message(MULTI)
    assert m.bodystructure() == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0 NIL NIL NIL NIL)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 28 (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0 NIL NIL NIL NIL) 2 NIL NIL NIL NIL) '
        b'"mixed" ("boundary" "XX") NIL NIL NIL)'
    )
    assert m.body() == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 28 (NIL "inner" NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0) 2) "mixed")'
    )


def test_multipart_without_boundary_has_an_empty_text_part():
    m = Message(b"MIME-Version: 1.0\nContent-Type: multipart/mixed\n\nhello\n")
    assert m.bodystructure() == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL) "mixed" NIL NIL NIL NIL)'
    )


def test_message_global_is_opaque():
    m = Message(b"MIME-Version: 1.0\nContent-Type: message/global\n\nSubject: inner\n\nbody\n")
    assert m.bodystructure() == b'("message" "global" NIL NIL NIL "7bit" 24 NIL NIL NIL NIL)'


def test_digest_parts_default_to_message_rfc822():
    m = Message(
        b"MIME-Version: 1.0\nContent-Type: multipart/digest; boundary=d\n\n"
        b"--d\n\nSubject: one\n\n1\n--d\nContent-Type: text/plain\n\n2\n--d--\n"
    )
    assert m.body() == (
        b'(("message" "rfc822" NIL NIL NIL "7bit" 17 (NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0) 2)'
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 1 0) "digest")'
    )


# -- the parser's readings of broken MIME ------------------------------------------------------

PRE = b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=foo\n\n"


def test_blank_line_before_boundary_belongs_to_boundary():
    m = Message(PRE + b"--foo\nContent-Type: text/plain\n\n--foo--\n")
    assert m.section(sec([1], "MIME")) == b"Content-Type: text/plain\r\n"
    m = Message(PRE + b"--foo\nContent-Type: text/plain\n\n\n--foo--\n")
    assert m.section(sec([1], "MIME")) == b"Content-Type: text/plain\r\n\r\n"
    assert m.section(sec([1])) == b""


def test_boundary_inside_header_ends_it():
    m = Message(PRE + b"--foo\nContent-Type: text/plain\n--foo--\n")
    assert m.section(sec([1], "MIME")) == b"Content-Type: text/plain"
    assert m.bodystructure().startswith(b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 ')


def test_blank_line_moves_into_the_message_part():
    m = Message(PRE + b"--foo\nContent-Type: message/rfc822\n\nSubject: x\n\n--foo--\n")
    assert m.section(sec([1])) == b"Subject: x\r\n\r\n"
    assert m.section(sec([1, 1], "MIME")) == b"Subject: x\r\n"


def test_longest_boundary_wins_and_long_ones_are_cut_at_80():
    m = Message(
        b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        b"Content-Type: multipart/mixed; boundary=bb\n\n--bb\n\ninner\n--bb--\n--b\n\nouter\n--b--\n"
    )
    assert m.section(sec([1, 1])) == b"inner"
    assert m.section(sec([2])) == b"outer"
    long_a, long_b = "1" * 81, "1" * 82
    m = Message(
        f"Content-Type: multipart/mixed; boundary={long_b}\n\n--{long_b}\n"
        f"Content-Type: multipart/mixed; boundary={long_a}\n\n--{long_a}\n\nx\n--{long_b}\n\ny\n".encode()
    )
    # both boundaries are the same 80 octets: every line goes to the innermost part
    assert m.bodystructure().count(b'"text" "plain"') == 2
    assert m.section(sec([1, 2])) == b"y\r\n"


def test_missing_end_boundary_and_epilogue():
    m = Message(PRE + b"--foo\n\none\n--foo\n\ntwo\n")
    assert m.section(sec([2])) == b"two\r\n"
    m = Message(PRE + b"preamble\n--foo\n\none\n--foo--\nepilogue\n")
    assert m.section(sec([1])) == b"one"
    assert m.section(sec((), "TEXT")).endswith(b"--foo--\r\nepilogue\r\n")


def test_mbox_from_line_is_a_header_line():
    data = b"From MAILER-DAEMON Fri Apr 18 12:34:56 2003\nSubject: x\n\nbody\n"
    m = Message(data)
    assert m.section(sec((), "HEADER")).startswith(b"From MAILER-DAEMON")
    assert m.envelope() == b'(NIL "x" NIL NIL NIL NIL NIL NIL NIL NIL)'


# -- sections ---------------------------------------------------------------------------------


def test_sections_of_a_multipart():
    m = Message(MULTI)
    assert m.section(sec()) == to_crlf(MULTI)
    assert m.section(sec((), "HEADER")).endswith(b"boundary=XX\r\n\r\n")
    assert m.section(sec([1])) == b"part1"
    assert m.section(sec([1], "MIME")) == b"Content-Type: text/plain\r\n\r\n"
    assert m.section(sec([1], "HEADER")) == b""  # not a message/rfc822 part
    assert m.section(sec([2])) == b"Subject: inner\r\n\r\ninner body"
    assert m.section(sec([2], "HEADER")) == b"Subject: inner\r\n\r\n"
    assert m.section(sec([2], "TEXT")) == b"inner body"
    assert m.section(sec([2, 1])) == b"inner body"
    assert m.section(sec([2, 1], "MIME")) == b"Subject: inner\r\n\r\n"
    assert m.section(sec([2, 2])) == b""
    assert m.section(sec([3])) == b""
    assert m.section(sec([1, 1])) == b"part1"  # "1" of a leaf is the leaf


def test_sections_of_a_single_part_message():
    m = Message(b"Subject: test\n\nhello\x00world\n")
    assert m.section(sec([1])) == b"hello\x80world\r\n"
    assert m.section(sec([1], "MIME")) == b"Subject: test\r\n\r\n"
    assert m.section(sec([1, 1])) == b""
    assert m.section(sec([2])) == b""
    assert m.section(sec(), partial=(2, 5)) == b"bject"


def test_header_fields_of_the_message():
    m = Message(b"Subject: b\nFrom : a\nFrom:\n x\n  y\nbar\nFROM:c\n\nbody")
    assert m.section(sec((), "HEADER.FIELDS", ["SUBJECT", "FROM", "BAR"])) == (
        b"Subject: b\r\nFrom : a\r\nFrom:\r\n x\r\n  y\r\nFROM:c\r\n\r\n"
    )
    assert m.section(sec((), "HEADER.FIELDS.NOT", ["SUBJECT"])) == (
        b"From : a\r\nFrom:\r\n x\r\n  y\r\nbar\r\nFROM:c\r\n\r\n"
    )
    # without a blank line: FIELDS still ends with one, FIELDS.NOT does not
    m = Message(b"From: a\nSubject: b")
    assert m.section(sec((), "HEADER.FIELDS", ["FROM"])) == b"From: a\r\n\r\n"
    assert m.section(sec((), "HEADER.FIELDS", ["SUBJECT"])) == b"Subject: b\r\n\r\n"
    assert m.section(sec((), "HEADER.FIELDS.NOT", ["FROM"])) == b"Subject: b"
    assert m.section(sec((), "HEADER.FIELDS", ["XYZ"])) == b"\r\n"


def test_header_fields_of_an_attached_message():
    m = Message(b"Content-Type: message/rfc822\n\nSubject: s\nX: 1\n")
    assert m.section(sec([1], "HEADER.FIELDS", ["SUBJECT"])) == b"Subject: s\r\n"
    assert m.section(sec([1], "HEADER.FIELDS.NOT", ["SUBJECT"])) == b"X: 1\r\n"
    m = Message(b"Content-Type: message/rfc822\n\nX: 1\n\nbody")
    assert m.section(sec([1], "HEADER.FIELDS", ["SUBJECT"])) == b"\r\n"


# -- BINARY -----------------------------------------------------------------------------------


def test_binary_decodes_leaves_and_rewrites_their_headers():
    m = Message(
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n"
        b"Content-Transfer-Encoding: base64\n\nSubject: x\n\nhello\n--b\nContent-Type: text/plain\n"
        b"Content-Transfer-Encoding: base64\n\n--b\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n"
        b"X-A: 1\n\naGVsbG8=\n--b\nContent-Type: multipart/mixed; boundary=c\n"
        b"Content-Transfer-Encoding: quoted-printable\n\n--c\n\nhi=3D\n--c--\n--b--\n"
    )
    assert m.binary((3,)) == b"hello"
    assert m.binary((2,)) == b""
    assert m.binary((1,)) == b"Subject: x\r\n\r\nhello"
    assert m.binary((4,)) == b"--c\r\n\r\nhi=3D\r\n--c--\r\n"
    whole = m.binary()
    assert whole.count(b"Content-Transfer-Encoding: binary\r\n") == 4
    assert b"X-A: 1\r\nContent-Transfer-Encoding: binary\r\n\r\nhello\r\n--b" in whole
    assert m.binary_size((3,)) == 5


def test_binary_nothing_decoded_is_sent_as_it_is():
    m = Message(b"Content-Type: message/rfc822\n\nContent-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\nSubject: in\n\nhello\n")
    assert m.binary((1,)) == b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\nSubject: in\r\n\r\nhello\r\n"


def test_binary_qp_and_nul():
    m = Message(b"Content-Transfer-Encoding: quoted-printable\n\ncaf=C3=A9 =\nx\x00y\n")
    assert m.binary((1,)) == b"caf\xc3\xa9 x\x00y\r\n"


def test_binary_errors():
    with pytest.raises(UnknownCTE):
        Message(b"Content-Transfer-Encoding: x-uuencode\n\nbegin\n").binary((1,))
    with pytest.raises(UnknownCTE):  # folded: Dovecot reads the continuation as an empty value
        Message(b"Content-Transfer-Encoding: 7bit;\n x\n\nhello\n").binary((1,))
    with pytest.raises(BinaryParseError):
        Message(b"Content-Transfer-Encoding: base64\n\naGVsbG8=!\n").binary((1,))
    with pytest.raises(BinaryParseError):
        Message(b"Content-Transfer-Encoding: quoted-printable\n\na=ZZ\n").binary((1,))
    # an unknown encoding anywhere wins over invalid data
    both = (
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Transfer-Encoding: base64\n\n!!\n"
        b"--b\nContent-Transfer-Encoding: plain\n\nx\n--b--\n"
    )
    with pytest.raises(UnknownCTE):
        Message(both).binary()
    assert Message(b"Subject: x\n\nbody\n").binary((5,)) == b""


@pytest.mark.parametrize(
    "data,out,ok",
    [
        (b"a=3Db", b"a=b", True),
        (b"a=3db", b"a=b", True),
        (b"soft=\nbreak", b"softbreak", True),
        (b"soft= \r\nbreak", b"softbreak", True),
        (b"trail  \nx", b"trail\r\nx", True),
        (b"end  ", b"end", True),
        (b"a=ZZ", b"a=ZZ", False),
        (b"a=", b"a=", False),
        (b"a=4", b"a=4", False),
        (b"a\rb", b"a\rb", False),
        (b"x" + b" " * 80 + b"y", b"x" + b" " * 77 + b"y", False),
    ],
)
def test_qp_decoder(data, out, ok):
    assert cte.decode_qp(data) == (out, ok)


@pytest.mark.parametrize(
    "data,out,ok",
    [
        (b"aGVsbG8=", b"hello", True),
        (b"aGVs\nbG8=\n", b"hello", True),
        (b"aGVsbG8", b"hello", False),  # padding missing: what it yields, but not ok
        (b"aGVsb", b"hel", False),
        (b"aGVsbA==", b"hell", True),
        (b"aGVsbA=", b"hell", False),
        (b"aGVsbG8=x", b"hello", False),
        (b"aG!Vs", b"h", False),
        (b"", b"", True),
    ],
)
def test_base64_decoder(data, out, ok):
    assert cte.decode_base64(data) == (out, ok)


@pytest.mark.parametrize(
    "value,name",
    [
        (b" 7bit; x", "7bit"),
        (b"8bit;x", "7bit"),
        (b"8bit (c)", "7bit"),
        (b"(c) 7bit", "7bit"),
        (b"Quoted-Printable", "quoted-printable"),
        (b"base64", "base64"),
        (b"binary", "binary"),
        (b"8bit x", None),
        (b"base64 x", None),
        (b"7bit/x", None),
        (b"7bit=", None),
        (b'7bit"x"', None),
        (b"quoted printable", None),
        (b"x-uuencode", None),
        (b"", None),
    ],
)
def test_parse_cte(value, name):
    assert cte.parse_cte(value) == name


# -- encoded words, normalization, dates ---------------------------------------------------


def test_decode_header():
    assert decode_header(b"=?utf-8?q?caf=C3=A9?= =?iso-8859-1?b?6Q==?=") == "caf\u00e9\u00e9"
    assert decode_header(b"pre =?utf-8?Q?a_b?= post") == "pre a b post"
    assert decode_header(b"=?utf-8?q?bad") == "=?utf-8?q?bad"
    assert decode_header(b"\xe9t\xe9") == "\ufffdt\ufffd"
    assert decode_header(b"=?koi8-r?b?8NLJ18XU?=") == "Привет"


def test_search_header_keeps_unknown_charsets_unnormalized():
    assert search_header(b"=?bogus-charset?q?abc?= def") == "abc DEF"
    assert search_header(b"caf\xc3\xa9") == normalize("café")


def test_normalize():
    assert normalize("Straße") == "STRAßE"
    assert normalize("É") == normalize("é") == "E\u0301"
    assert normalize("ﬁle") == "fiLE"


@pytest.mark.parametrize(
    "value,result",
    [
        (b"Fri, 4 May 2001 14:05:44 -0400", (988999544, -240)),
        (b"4 May 01 14:05 EDT", (988999500, -240)),
        (b"Sun, 1 Jan 2006 00:00:00 Z", (1136073600, 0)),
        (b"Thu,\n 13\n Feb\n 1969\n 23:32\n -0330 (Newfoundland Time)", (-27723480, -210)),
        (b"Tue, 31 Feb 2004 10:00:00 GMT", None),
        (b"Sun, 1 Jan 2006 24:00:00 +0000", None),
        (b"Friday, 4 May 2001 14:05:44", None),
        (b"bogus", None),
    ],
)
def test_parse_date(value, result):
    assert parse_date(value) == result


def test_imap_string_quoting():
    assert imap_string(b"abc") == b'"abc"'
    assert imap_string(b'a"b') == b'"a\\"b"'
    assert imap_string(b"caf\xc3\xa9") == b"{5}\r\ncaf\xc3\xa9"
    assert imap_string(b"") == b'""'


def test_header_fields_helper():
    m = Message(b"Subject: =?utf-8?q?caf=C3=A9?=\nSubject: two\n\n")
    assert m.header_fields("subject") == ["café", "two"]
    assert m.addresses("From") == []
    assert isinstance(parse_addresses(b"a@b")[0], Address)


def test_lines_without_colon_name_no_field():
    # a "Content-Transfer-Encoding" line without a colon is no such field: not read,
    # not left out of a rewritten header
    m = Message(b"Subject\nFrom\nContent-Transfer-Encoding\nContent-Type: text/plain\n\nbody\n")
    assert m.binary((1,)) == b"body\r\n"
    m = Message(
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Transfer-Encoding\n"
        b"Content-Transfer-Encoding: base64\n\naGk=\n--b--\n"
    )
    assert m.binary().count(b"Content-Transfer-Encoding\r\nContent-Transfer-Encoding: binary\r\n\r\nhi") == 1

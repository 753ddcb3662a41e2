"""The sans-IO SMTP client core: reply parsing, and the command flow it produces for a given peer."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.events import Close, Send, StartTLS
from retrieval.smtp.client import (
    Finished,
    OutRecipient,
    ProtocolError,
    ReplyParser,
    SmtpClient,
    Transaction,
    dot_stuff,
    parse_ehlo,
)
from retrieval.smtp.session import Reply

# -- replies -------------------------------------------------------------------------

TABLE = [
    (b"250 ok\r\n", [Reply(250, "", "ok")]),
    (b"250\r\n", [Reply(250, "", "")]),
    (b"550 5.1.1 <b@x>: no such user\r\n", [Reply(550, "5.1.1", "<b@x>: no such user")]),
    (b"250-mx.example.org\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
     [Reply(250, "", "mx.example.org\nPIPELINING\nSIZE 1000")]),
    (b"451-4.3.0 first\r\n451-4.3.0 second\r\n451 4.3.0 third\r\n", [Reply(451, "4.3.0", "first\nsecond\nthird")]),
    (b"250 2.0.0\r\n", [Reply(250, "2.0.0", "")]),
    # a status whose class does not match the code is text, not a status
    (b"550 2.0.0 odd\r\n", [Reply(550, "", "2.0.0 odd")]),
    # bare LF line ends are tolerated
    (b"220 hi\n250 ok\n", [Reply(220, "", "hi"), Reply(250, "", "ok")]),
    (b"354 go\r\n", [Reply(354, "", "go")]),
    (b"250 caf\xc3\xa9\r\n", [Reply(250, "", "café")]),
    (b"421 4.4.2 bye\r\n250 x", [Reply(421, "4.4.2", "bye")]),  # the incomplete rest waits
]


@pytest.mark.parametrize(("data", "replies"), TABLE)
def test_reply_table(data: bytes, replies: list[Reply]) -> None:
    assert ReplyParser().feed(data) == replies


@pytest.mark.parametrize("data", [
    b"hello\r\n", b"25 ok\r\n", b"2500 ok\r\n", b"099 x\r\n", b"700 x\r\n", b"250_ok\r\n",
    b"250-one\r\n251 two\r\n", b"2" * 5000,
])
def test_bad_replies_raise(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        ReplyParser().feed(data)


reply_st = st.builds(
    lambda code, lines: (code, lines),
    st.integers(200, 599),
    st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"), max_size=30),
             min_size=1, max_size=4),
)


@given(st.lists(reply_st, min_size=1, max_size=5), st.data())
@settings(max_examples=200, deadline=None)
def test_any_split_gives_the_same_replies(replies, data) -> None:  # type: ignore[no-untyped-def]
    wire = b"".join(
        b"".join(f"{code}{'-' if i < len(lines) - 1 else ' '}{line}\r\n".encode() for i, line in enumerate(lines))
        for code, lines in replies
    )
    whole = ReplyParser().feed(wire)
    assert [r.code for r in whole] == [code for code, _ in replies]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    parser = ReplyParser()
    pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    assert [r for piece in pieces for r in parser.feed(piece)] == whole


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_dot_stuffing_is_reversible(body: bytes) -> None:
    body = body.replace(b"\r", b"").replace(b"\n", b"\r\n")
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    wire = dot_stuff(body)
    assert wire.endswith(b".\r\n")
    lines = wire[:-3].split(b"\r\n")
    assert all(not line.startswith(b".") or line.startswith(b"..") for line in lines)
    unstuffed = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)
    assert unstuffed == body


def test_ehlo_keywords() -> None:
    ext = parse_ehlo(Reply(250, "", "mx\nPIPELINING\nsize 1000\nAUTH=LOGIN PLAIN\n8bitmime"))
    assert ext == {"PIPELINING": "", "SIZE": "1000", "AUTH": "LOGIN PLAIN", "8BITMIME": ""}


# -- the flow -------------------------------------------------------------------------


def sent(events) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join(e.data for e in events if isinstance(e, Send))


def finished(events) -> Finished:  # type: ignore[no-untyped-def]
    [f] = [e for e in events if isinstance(e, Finished)]
    return f


def txn(*addresses: str, message: bytes = b"Subject: x\r\n\r\nhi\r\n") -> Transaction:
    return Transaction("a@x.test", tuple(OutRecipient(a) for a in addresses), message)


EHLO_PIPE = b"250-mx\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"


def test_pipelined_transaction() -> None:
    c = SmtpClient(txn("b@y.test", "c@y.test"), helo="relay.test")
    assert sent(c.feed(b"220 mx\r\n")) == b"EHLO relay.test\r\n"
    out = sent(c.feed(EHLO_PIPE))
    assert out == b"MAIL FROM:<a@x.test> SIZE=18\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"
    assert c.feed(b"250 ok\r\n550 5.1.1 no\r\n") == []
    assert sent(c.feed(b"250 ok\r\n354 go\r\n")) == b"Subject: x\r\n\r\nhi\r\n.\r\n"
    assert c.awaiting_data_end
    events = c.feed(b"250 2.0.0 queued\r\n")
    f = finished(events)
    assert f.host_failure is None
    assert f.results == {"b@y.test": Reply(550, "5.1.1", "no"), "c@y.test": Reply(250, "2.0.0", "queued")}
    assert sent(events) == b"QUIT\r\n" and isinstance(events[-1], Close)


def test_pipelined_354_without_recipients_sends_an_empty_message() -> None:
    """RFC 2920 3.1: a server may say 354 although every RCPT failed; end it with a lone dot."""
    c = SmtpClient(txn("b@y.test"), helo="r")
    c.feed(b"220 mx\r\n")
    c.feed(EHLO_PIPE)
    assert sent(c.feed(b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n")) == b".\r\n"
    f = finished(c.feed(b"554 5.5.1 no valid recipients\r\n"))
    assert f.results == {"b@y.test": Reply(550, "5.1.1", "no")}


def test_mail_refused_decides_everyone() -> None:
    c = SmtpClient(txn("b@y.test", "c@y.test"), helo="r")
    c.feed(b"220 mx\r\n")
    c.feed(b"250 mx\r\n")  # no extensions: lockstep
    f = finished(c.feed(b"553 5.7.1 sender refused\r\n"))
    assert set(f.results) == {"b@y.test", "c@y.test"} and f.results["b@y.test"].code == 553


def test_421_mid_transaction_leaves_recipients_undecided() -> None:
    c = SmtpClient(txn("b@y.test", "c@y.test"), helo="r")
    c.feed(b"220 mx\r\n")
    c.feed(b"250 mx\r\n")
    c.feed(b"250 ok\r\n")
    c.feed(b"550 5.1.1 no\r\n")
    f = finished(c.feed(b"421 4.3.2 shutting down\r\n"))
    assert f.results == {"b@y.test": Reply(550, "5.1.1", "no")}
    assert f.host_failure == Reply(421, "4.3.2", "shutting down")


def test_lost_connection_and_timeout_are_host_failures() -> None:
    c = SmtpClient(txn("b@y.test"), helo="r")
    c.feed(b"220 mx\r\n")
    f = finished(c.connection_lost())
    assert f.host_failure is not None and f.host_failure.code == 421 and "EHLO" in f.host_failure.text
    c = SmtpClient(txn("b@y.test"), helo="r")
    f = finished(c.timed_out())
    assert f.host_failure is not None and "greeting" in f.host_failure.text


def test_garbage_from_the_peer_is_a_host_failure() -> None:
    c = SmtpClient(txn("b@y.test"), helo="r")
    f = finished(c.feed(b"HTTP/1.1 400 Bad Request\r\n"))
    assert f.host_failure is not None and f.host_failure.status == "4.5.0" and f.results == {}


def test_starttls_then_auth_login_when_plain_is_missing() -> None:
    c = SmtpClient(txn("b@y.test"), helo="r", auth=("u", "p"))
    c.feed(b"220 mx\r\n")
    events = c.feed(b"250-mx\r\n250-AUTH LOGIN\r\n250 STARTTLS\r\n")
    assert sent(events) == b"STARTTLS\r\n"
    assert isinstance(c.feed(b"220 go\r\n")[-1], StartTLS)
    assert sent(c.tls_started()) == b"EHLO r\r\n"
    assert sent(c.feed(b"250-mx\r\n250 AUTH LOGIN\r\n")) == b"AUTH LOGIN\r\n"
    assert sent(c.feed(b"334 VXNlcm5hbWU6\r\n")) == base64.b64encode(b"u") + b"\r\n"
    assert sent(c.feed(b"334 UGFzc3dvcmQ6\r\n")) == base64.b64encode(b"p") + b"\r\n"
    assert sent(c.feed(b"235 ok\r\n")).startswith(b"MAIL FROM:<a@x.test>")


def test_refused_starttls_continues_in_plaintext_but_never_authenticates() -> None:
    c = SmtpClient(txn("b@y.test"), helo="r")
    c.feed(b"220 mx\r\n")
    c.feed(b"250-mx\r\n250 STARTTLS\r\n")
    assert sent(c.feed(b"454 4.7.0 TLS not available\r\n")).startswith(b"MAIL FROM:")
    c = SmtpClient(txn("b@y.test"), helo="r", auth=("u", "p"))
    c.feed(b"220 mx\r\n")
    c.feed(b"250-mx\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n")
    events = c.feed(b"454 4.7.0 TLS not available\r\n")
    assert b"AUTH" not in sent(events) and finished(events).host_failure.status == "4.7.0"


def test_helo_fallback_sends_no_extension_parameters() -> None:
    c = SmtpClient(Transaction("a@x.test", (OutRecipient("b@y.test", ("FAILURE",), "rfc822;b@y.test"),),
                               b"\xe9\r\n", envid="E1", ret="FULL"), helo="r")
    c.feed(b"220 mx\r\n")
    assert sent(c.feed(b"500 5.5.1 what\r\n")) == b"HELO r\r\n"
    assert sent(c.feed(b"250 mx\r\n")) == b"MAIL FROM:<a@x.test>\r\n"
    assert sent(c.feed(b"250 ok\r\n")) == b"RCPT TO:<b@y.test>\r\n"


def test_dsn_and_8bitmime_parameters() -> None:
    """Values are kept decoded (retrieval.smtp.dsn) and xtext-encoded on the wire."""
    c = SmtpClient(Transaction("a@x.test", (OutRecipient("b@y.test", ("SUCCESS", "FAILURE"), "rfc822;b+x=y@y.test"),),
                               b"\xe9\r\n", envid="E1+2", ret="FULL"), helo="r")
    c.feed(b"220 mx\r\n")
    assert sent(c.feed(b"250-mx\r\n250-DSN\r\n250 8BITMIME\r\n")) == b"MAIL FROM:<a@x.test> BODY=8BITMIME RET=FULL ENVID=E1+2B2\r\n"
    assert sent(c.feed(b"250 ok\r\n")) == b"RCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx+3Dy@y.test\r\n"


def test_idn_domain_goes_as_a_labels_to_a_peer_without_smtputf8() -> None:
    c = SmtpClient(txn("b@bücher.test"), helo="r")
    c.feed(b"220 mx\r\n")
    assert sent(c.feed(b"250 mx\r\n")) == b"MAIL FROM:<a@x.test>\r\n"
    assert sent(c.feed(b"250 ok\r\n")) == b"RCPT TO:<b@xn--bcher-kva.test>\r\n"
    c.feed(b"250 ok\r\n")
    c.feed(b"354 go\r\n")
    assert finished(c.feed(b"250 ok\r\n")).results["b@bücher.test"].ok  # reported under the address as given
    c = SmtpClient(txn("jörg@bücher.test"), helo="r")
    c.feed(b"220 mx\r\n")
    assert finished(c.feed(b"250 mx\r\n")).results["jörg@bücher.test"].status == "5.6.7"


def test_replies_injected_after_starttls_220_are_not_believed() -> None:
    c = SmtpClient(txn("b@y.test"), helo="r")
    c.feed(b"220 mx\r\n")
    c.feed(b"250-mx\r\n250 STARTTLS\r\n")
    events = c.feed(b"220 go ahead\r\n250-mx\r\n250 AUTH PLAIN\r\n")
    assert any(isinstance(e, StartTLS) for e in events)
    assert finished(events).host_failure.status == "4.5.0"
    assert c.tls_started() == []  # nothing more goes out on that connection
    c = SmtpClient(txn("b@y.test"), helo="r")
    c.feed(b"220 mx\r\n")
    c.feed(b"250-mx\r\n250 STARTTLS\r\n")
    assert isinstance(c.feed(b"220 go ahead\r\n250-injec")[-1], StartTLS)  # a partial line is dropped
    assert sent(c.tls_started()) == b"EHLO r\r\n"
    assert sent(c.feed(b"250 mx\r\n")).startswith(b"MAIL FROM:")

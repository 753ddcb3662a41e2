"""The ESMTP state machine without sockets: bytes in, events out."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.auth import sasl
from retrieval.smtp import session as S

OK_RCPT = S.Reply(250, "2.1.5", "Ok")
NO_USER = S.Reply(550, "5.1.1", "No such user here")
DENIED = S.Reply(554, "5.7.1", "Relay access denied")


class Driver:
    """Plays the adapter: answers requests synchronously, as the real one may."""

    def __init__(self, policy: S.Policy | None = None, deliver_reply: S.Reply | None = None, **kw) -> None:  # type: ignore[no-untyped-def]
        self.session = S.SmtpSession(policy or S.Policy(hostname="mx.test", tls_available=True, **kw))
        self.deliveries: list[S.Deliver] = []
        self.checked: list[str] = []
        self.deliver_reply = deliver_reply or S.Reply(250, "2.0.0", "Ok: queued as TEST")
        self.closed = False
        self.tls_started = False
        self.hold = False  # leave requests unanswered (to see what waits)
        self.held: list[S.Event] = []
        self.out = self._run(self.session.greeting())

    def feed(self, data: bytes) -> bytes:
        return self._run(self.session.feed(data))

    def _run(self, events) -> bytes:  # type: ignore[no-untyped-def]
        out = b""
        for event in events:
            if isinstance(event, S.Send):
                out += event.data
            elif isinstance(event, S.Close):
                self.closed = True
            elif isinstance(event, S.StartTLS):
                self.tls_started = True
            elif self.hold:
                self.held.append(event)
            elif isinstance(event, S.Authenticate):
                c = event.credentials
                ok = isinstance(c, sasl.PasswordCredentials) and (c.authcid, c.password) == ("alice", "secret")
                out += self._run(self.session.auth_done("alice" if ok else None))
            elif isinstance(event, S.CheckRecipient):
                self.checked.append(event.address)
                local, _, domain = event.address.rpartition("@")
                if domain == "mx.test":
                    reply = OK_RCPT if local in ("alice", "bob") else NO_USER
                else:
                    reply = DENIED
                out += self._run(self.session.recipient_done(reply, ("target", event.address)))
            elif isinstance(event, S.Deliver):
                self.deliveries.append(event)
                out += self._run(self.session.deliver_done(self.deliver_reply))
        return out

    def lines(self, data: bytes) -> list[str]:
        return self.feed(data).decode().splitlines()

    def ehlo(self) -> None:
        assert self.feed(b"EHLO client.example\r\n").startswith(b"250-mx.test\r\n")


def codes(reply: bytes) -> list[str]:
    return [line[:3] for line in reply.decode().splitlines()]


def transaction(body: bytes = b"Subject: hi\r\n\r\nhello\r\n", rcpt: bytes = b"alice@mx.test") -> bytes:
    return b"MAIL FROM:<sender@example.org>\r\nRCPT TO:<" + rcpt + b">\r\nDATA\r\n" + body + b".\r\n"


# -- greeting, EHLO ------------------------------------------------------------------


def test_greeting_and_ehlo_advertise_the_extensions():
    d = Driver()
    assert d.out == b"220 mx.test ESMTP retrieval\r\n"
    reply = d.feed(b"EHLO client.example\r\n").decode()
    assert reply.splitlines() == [
        "250-mx.test",
        "250-PIPELINING",
        "250-SIZE 52428800",
        "250-STARTTLS",
        "250-ENHANCEDSTATUSCODES",
        "250-8BITMIME",
        "250-DSN",
        "250-SMTPUTF8",
        "250 CHUNKING",
    ]
    assert d.session.helo == "client.example" and d.session.esmtp


def test_auth_offered_only_when_plaintext_is_safe():
    d = Driver(allow_plaintext=True)
    assert "250-AUTH PLAIN LOGIN" in d.feed(b"EHLO c\r\n").decode()
    d = Driver(S.Policy(tls_active=True))
    reply = d.feed(b"EHLO c\r\n").decode()
    assert "AUTH PLAIN LOGIN" in reply and "STARTTLS" not in reply
    d = Driver(S.Policy(cram_md5=True, tls_available=True))
    assert "250-AUTH CRAM-MD5" in d.feed(b"EHLO c\r\n").decode()


def test_helo_and_syntax():
    d = Driver()
    assert d.feed(b"HELO client\r\n") == b"250 mx.test\r\n"
    assert not d.session.esmtp
    assert d.feed(b"EHLO\r\n") == b"501 5.5.4 Syntax: EHLO hostname\r\n"
    assert d.feed(b"HELO\r\n") == b"501 5.5.4 Syntax: HELO hostname\r\n"


def test_mail_needs_helo_first():
    d = Driver()
    assert d.feed(b"MAIL FROM:<a@b.example>\r\n") == b"503 5.5.1 Error: send HELO/EHLO first\r\n"


# -- a transaction ------------------------------------------------------------------


def test_a_whole_transaction_with_dot_unstuffing():
    d = Driver()
    d.ehlo()
    body = b"Subject: dots\r\n\r\n..leading dot\r\n.\r\n...\r\nplain\r\n"
    reply = d.lines(transaction(body=b"Subject: dots\r\n\r\n...leading dot\r\n..\r\n....\r\nplain\r\n"))
    assert reply == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>", "250 2.0.0 Ok: queued as TEST"]
    (delivery,) = d.deliveries
    assert delivery.data == body
    env = delivery.envelope
    assert env.sender == "sender@example.org"
    assert env.recipients == (S.Recipient("alice@mx.test", ("target", "alice@mx.test")),)
    assert env.helo == "client.example" and env.protocol == "ESMTP" and env.size == len(body)
    assert d.feed(b"QUIT\r\n") == b"221 2.0.0 Bye\r\n" and d.closed


def test_empty_message_and_second_transaction():
    d = Driver()
    d.ehlo()
    assert d.lines(transaction(body=b""))[-1].startswith("250 2.0.0")
    assert d.deliveries[0].data == b""
    assert d.lines(transaction())[-1].startswith("250 2.0.0")  # the session is ready for the next one
    assert len(d.deliveries) == 2


def test_pipelined_commands_in_one_packet_are_answered_in_order():
    d = Driver()
    packet = (
        b"EHLO c\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<alice@mx.test>\r\nRCPT TO:<nobody@mx.test>\r\n"
        b"RCPT TO:<bob@mx.test>\r\nDATA\r\n"
    )
    reply = d.feed(packet).decode().splitlines()
    assert [line for line in reply if not line.startswith("250-")] == [
        "250 CHUNKING",
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "550 5.1.1 No such user here",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    assert d.lines(b"Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n") == ["250 2.0.0 Ok: queued as TEST", "221 2.0.0 Bye"]
    assert [r.address for r in d.deliveries[0].envelope.recipients] == ["alice@mx.test", "bob@mx.test"]


def test_commands_wait_while_a_request_is_out():
    d = Driver()
    d.ehlo()
    d.hold = True
    out = d.feed(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@mx.test>\r\nDATA\r\nSubject: x\r\n\r\n.\r\n")
    assert out == b"250 2.1.0 Ok\r\n" and d.session.waiting
    (check,) = d.held
    assert isinstance(check, S.CheckRecipient) and check.address == "alice@mx.test"
    assert d.feed(b"NOOP\r\n") == b""  # buffered, not answered out of order
    d.hold = False
    out = d._run(d.session.recipient_done(OK_RCPT, "T"))
    assert codes(out) == ["250", "354", "250", "250"]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_the_end_of_data_found_in_any_split(size):
    d = Driver()
    d.ehlo()
    data = transaction(body=b"Subject: split\r\n\r\n..\r\n...\r\nx.\r\n..x\r\n") + b"NOOP\r\n"
    out = b""
    for i in range(0, len(data), size):
        out += d.feed(data[i : i + size])
    assert codes(out) == ["250", "250", "354", "250", "250"]
    assert d.deliveries[0].data == b"Subject: split\r\n\r\n.\r\n..\r\nx.\r\n.x\r\n"


def test_long_data_lines_are_taken_in_pieces():
    d = Driver()
    d.ehlo()
    line = b"x" * 100_000 + b"\r\n"
    d.feed(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@mx.test>\r\nDATA\r\n")
    for i in range(0, len(line), 4000):
        d.feed(line[i : i + 4000])
        assert len(d.session._buffer) <= S.DATA_FLUSH
    assert d.feed(b".\r\n") == b"250 2.0.0 Ok: queued as TEST\r\n"
    assert d.deliveries[0].data == line


def test_only_crlf_dot_crlf_ends_the_data():
    """SMTP smuggling: `\\n.\\r\\n`, `\\r\\n.\\n` and `\\n.\\n` are message text, never its end."""
    d = Driver()
    d.ehlo()
    d.feed(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@mx.test>\r\nDATA\r\n")
    out = d.feed(b"Subject: x\r\n\r\none\n.\r\nMAIL FROM:<evil@example.org>\r\ntwo\r\n.\ntwo\n.\nthree\r\n")
    assert out == b"" and not d.deliveries
    assert d.feed(b".\r\n") == b"250 2.0.0 Ok: queued as TEST\r\n"
    data = d.deliveries[0].data
    assert b"MAIL FROM:<evil@example.org>" in data and data.endswith(b"three\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")  # bare LFs became CRLF


def test_size_declared_too_big_is_refused_at_mail():
    d = Driver(S.Policy(hostname="mx.test", max_message_size=1000))
    d.ehlo()
    assert d.feed(b"MAIL FROM:<s@example.org> SIZE=1001\r\n") == b"552 5.3.4 Message size exceeds fixed limit\r\n"
    assert d.feed(b"MAIL FROM:<s@example.org> SIZE=1000\r\n") == b"250 2.1.0 Ok\r\n"


def test_size_exceeded_while_reading_data_is_not_buffered():
    d = Driver(S.Policy(hostname="mx.test", max_message_size=1000))
    d.ehlo()
    d.feed(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@mx.test>\r\nDATA\r\n")
    for _ in range(100):
        assert d.feed(b"y" * 998 + b"\r\n") == b""
        txn = d.session._txn
        assert txn is not None and sum(map(len, txn.parts)) <= 1000
    assert d.feed(b".\r\nNOOP\r\n") == b"552 5.3.4 Message size exceeds fixed limit\r\n250 2.0.0 Ok\r\n"
    assert not d.deliveries
    assert d.feed(b"RCPT TO:<alice@mx.test>\r\n") == b"503 5.5.1 Error: need MAIL command\r\n"


def test_rset_noop_vrfy_help():
    d = Driver()
    d.ehlo()
    assert d.feed(b"MAIL FROM:<s@example.org>\r\nRSET\r\n") == b"250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n"
    assert d.feed(b"RCPT TO:<alice@mx.test>\r\n").startswith(b"503 5.5.1")
    assert d.feed(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"
    assert d.feed(b"VRFY alice\r\n").startswith(b"252 2.5.2 ")
    help_reply = d.feed(b"HELP\r\n").decode().splitlines()
    assert help_reply[0].startswith("214-2.0.0 ") and help_reply[-1].startswith("214 2.0.0 ")


@pytest.mark.parametrize(
    "command, reply",
    [
        (b"FOO bar", b"500 5.5.2 Error: command not recognized"),
        (b"MAIL TO:<a@b.example>", b"501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"MAIL FROM:<a@@b>", b"501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a b@c.example>", b"501 5.1.7 Bad sender address syntax"),
        (b"MAIL FROM:<a@b.example> SIZE=abc", b"501 5.5.4 Bad SIZE parameter"),
        (b"MAIL FROM:<a@b.example> BODY=BINARYMIME", b"501 5.5.4 Bad BODY parameter"),
        (b"MAIL FROM:<a@b.example> MT-PRIORITY=3", b"555 5.5.4 Unsupported option: MT-PRIORITY"),
        (b"MAIL FROM:<a@b.example> SIZE=1 SIZE=2", b"501 5.5.4 Duplicate parameter: SIZE"),
        (b"MAIL FROM:<j\xc3\xb6rg@b.example>", b"553 5.6.7 Must declare SMTPUTF8 to send a non-ASCII address"),
        (b"RCPT TO:<a@b.example>", b"503 5.5.1 Error: need MAIL command"),
        (b"DATA", b"503 5.5.1 Error: need MAIL command"),
        (b"DATA now", b"501 5.5.4 Syntax: DATA"),
        (b"EXPN list", b"502 5.5.1 Error: EXPN is not available"),
        (b"STARTTLS now", b"501 5.5.4 Syntax: STARTTLS"),
        (b"AUTH", b"501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (b"AUTH GSSAPI", b"504 5.5.4 Unrecognized authentication type"),
        (b"MAIL \xff", b"500 5.5.2 Error: bad UTF-8 syntax"),
        (b"NOOP \x00", b"500 5.5.2 Error: control characters in command"),
        (b"NOOP " + b"x" * 1000, b"500 5.5.2 Error: line too long"),
    ],
)
def test_bad_commands_get_enhanced_codes(command, reply):
    d = Driver()
    d.ehlo()
    assert d.feed(command + b"\r\n") == reply + b"\r\n"
    assert d.feed(b"NOOP\r\n") == b"250 2.0.0 Ok\r\n"  # the session goes on


def test_sequence_errors():
    d = Driver()
    d.ehlo()
    d.feed(b"MAIL FROM:<s@example.org>\r\n")
    assert d.feed(b"MAIL FROM:<s@example.org>\r\n") == b"503 5.5.1 Error: nested MAIL command\r\n"
    assert d.feed(b"DATA\r\n") == b"503 5.5.1 Error: need RCPT command\r\n"
    assert d.feed(b"RCPT TO:<nobody@mx.test>\r\n") == b"550 5.1.1 No such user here\r\n"
    assert d.feed(b"DATA\r\n") == b"554 5.5.1 Error: no valid recipients\r\n"


def test_addresses_null_sender_postmaster_source_routes_and_leniency():
    d = Driver()
    d.ehlo()
    assert d.feed(b"MAIL FROM:<>\r\n") == b"250 2.1.0 Ok\r\n"
    assert d.feed(b"RCPT TO:<>\r\n") == b"501 5.1.3 Bad recipient address syntax\r\n"
    d.feed(b"RCPT TO:<Postmaster>\r\nRCPT TO:<@relay.example:alice@mx.test>\r\nRCPT TO: <bob@mx.test>\r\n")
    d.feed(b'RCPT TO:<"john doe"@mx.test>\r\n')
    assert d.checked == ["Postmaster", "alice@mx.test", "bob@mx.test", '"john doe"@mx.test']
    assert d.feed(b"RSET\r\nMAIL FROM:bare@example.org\r\n") == b"250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n"


def test_smtputf8_and_8bitmime_are_kept_in_the_envelope():
    d = Driver()
    d.ehlo()
    out = d.feed("MAIL FROM:<jörg@exämple.org> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<alice@mx.test>\r\nDATA\r\n".encode())
    assert codes(out) == ["250", "250", "354"]
    d.feed("Subject: grüße\r\n\r\nça va\r\n.\r\n".encode())
    env = d.deliveries[0].envelope
    assert env.smtputf8 and env.body == "8BITMIME" and env.sender == "jörg@exämple.org"
    assert env.protocol == "UTF8SMTP"


def test_dsn_parameters_are_kept_decoded_on_the_envelope_and_recipients():
    d = Driver()
    d.ehlo()
    out = d.feed(
        b"MAIL FROM:<s@example.org> RET=hdrs ENVID=QQ+2B1+3Dx\r\n"
        b"RCPT TO:<alice@mx.test> NOTIFY=success,Failure ORCPT=rfc822;Alice+2Bx@mx.test\r\n"
        b"RCPT TO:<bob@mx.test> NOTIFY=NEVER\r\n"
        b"RCPT TO:<alice@mx.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"
    )
    assert codes(out) == ["250", "250", "250", "250", "354", "250"]
    env = d.deliveries[0].envelope
    assert env.ret == "HDRS" and env.envid == "QQ+1=x"
    assert [(r.notify, r.orcpt) for r in env.recipients] == [
        (("SUCCESS", "FAILURE"), "rfc822;Alice+x@mx.test"),
        (("NEVER",), None),
        (None, None),
    ]
    d.feed(transaction())
    env = d.deliveries[1].envelope  # a new transaction forgets them
    assert env.ret is None and env.envid is None and env.recipients[0].notify is None


@pytest.mark.parametrize(
    "command",
    [
        b"MAIL FROM:<s@example.org> RET=BOTH",
        b"MAIL FROM:<s@example.org> RET",
        b"MAIL FROM:<s@example.org> RET=FULL RET=HDRS",
        b"MAIL FROM:<s@example.org> ENVID",
        b"MAIL FROM:<s@example.org> ENVID=a+2",
        b"MAIL FROM:<s@example.org> ENVID=a+0Ab",  # decodes to a control character
        b"MAIL FROM:<s@example.org> ENVID=" + b"x" * 101,
        b"MAIL FROM:<s@example.org> ENVID=a ENVID=b",
        "MAIL FROM:<s@example.org> SMTPUTF8 ENVID=caf\u00e9".encode(),
    ],
)
def test_bad_dsn_mail_parameters_are_refused(command):
    d = Driver()
    d.ehlo()
    assert d.feed(command + b"\r\n").startswith(b"501 5.5.4 ")
    assert d.session._txn is None  # nothing started
    assert d.feed(b"MAIL FROM:<s@example.org>\r\n") == b"250 2.1.0 Ok\r\n"


@pytest.mark.parametrize(
    "param",
    [
        b"NOTIFY=NEVER,SUCCESS",
        b"NOTIFY=SUCCESS,SUCCESS",
        b"NOTIFY=",
        b"NOTIFY",
        b"NOTIFY=SUCCESS,,DELAY",
        b"NOTIFY=ALWAYS",
        b"NOTIFY=DELAY NOTIFY=FAILURE",
        b"ORCPT=bob@example.com",
        b"ORCPT=rfc822;",
        b"ORCPT=rfc 822;x@example.com",
        b"ORCPT=rfc822;bob+@example.com",
        b"ORCPT=rfc822;b+C3+A9@example.com",  # rfc822 addresses are ASCII
        b"ORCPT=utf-8;b\\x{E9}@example.com",  # utf-8 type without SMTPUTF8
        b"ORCPT=rfc822;" + b"x" * 500 + b"@example.com",
    ],
)
def test_bad_dsn_rcpt_parameters_are_refused(param):
    d = Driver()
    d.ehlo()
    d.feed(b"MAIL FROM:<s@example.org>\r\n")
    assert d.feed(b"RCPT TO:<alice@mx.test> " + param + b"\r\n").startswith(b"501 5.5.4 ")
    assert d.checked == []  # never asked about
    assert d.feed(b"DATA\r\n") == b"554 5.5.1 Error: no valid recipients\r\n"


def test_utf8_orcpt_with_smtputf8():
    d = Driver()
    d.ehlo()
    out = d.feed(
        "MAIL FROM:<s@example.org> SMTPUTF8\r\n"
        "RCPT TO:<alice@mx.test> ORCPT=utf-8;j\\x{F6}rg@ex\u00e4mple.org\r\nDATA\r\nx\r\n.\r\n".encode()
    )
    assert codes(out) == ["250", "250", "354", "250"]
    assert d.deliveries[0].envelope.recipients[0].orcpt == "utf-8;j\u00f6rg@ex\u00e4mple.org"


def test_too_many_recipients():
    d = Driver(S.Policy(hostname="mx.test", max_recipients=2))
    d.ehlo()
    out = d.feed(b"MAIL FROM:<s@example.org>\r\n" + b"RCPT TO:<alice@mx.test>\r\n" * 3)
    assert codes(out) == ["250", "250", "250", "452"]
    assert out.endswith(b"452 4.5.3 Error: too many recipients\r\n")


def test_too_many_errors_end_the_session():
    d = Driver(S.Policy(hostname="mx.test", max_errors=3))
    out = d.feed(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
    assert out.decode().splitlines() == [
        "500 5.5.2 Error: command not recognized",
        "500 5.5.2 Error: command not recognized",
        "500 5.5.2 Error: command not recognized",
        "421 4.7.0 mx.test Error: too many errors",
    ]
    assert d.closed and d.feed(b"NOOP\r\n") == b""


def test_web_requests_are_turned_away():
    d = Driver()
    assert d.feed(b"GET / HTTP/1.0\r\n") == b"554 5.7.0 Error: this is an SMTP server, not a web server\r\n"
    assert d.closed


def test_timeout_reply():
    d = Driver()
    assert d._run(d.session.timed_out()) == b"421 4.4.2 mx.test Error: timeout exceeded\r\n" and d.closed


# -- STARTTLS ---------------------------------------------------------------------------


def test_starttls_discards_what_was_sent_before_the_handshake():
    d = Driver()
    d.ehlo()
    out = d.feed(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
    assert out == b"220 2.0.0 Ready to start TLS\r\n" and d.tls_started
    d.session.tls_started()
    assert d.session.helo is None  # RFC 3207: EHLO again
    assert d.feed(b"MAIL FROM:<a@example.org>\r\n") == b"503 5.5.1 Error: send HELO/EHLO first\r\n"
    reply = d.feed(b"EHLO c\r\n").decode()
    assert "STARTTLS" not in reply
    assert d.feed(b"STARTTLS\r\n") == b"503 5.5.1 Error: TLS already active\r\n"


def test_starttls_unavailable_and_within_a_transaction():
    d = Driver(S.Policy(hostname="mx.test"))
    d.ehlo()
    assert d.feed(b"STARTTLS\r\n") == b"502 5.5.1 Error: command not implemented\r\n"
    d = Driver()
    d.ehlo()
    d.feed(b"MAIL FROM:<a@example.org>\r\n")
    assert d.feed(b"STARTTLS\r\n") == b"503 5.5.1 Error: MAIL transaction in progress\r\n"


# -- AUTH ---------------------------------------------------------------------------------


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_auth_before_tls_is_refused_on_a_tls_server():
    d = Driver(S.Policy(hostname="mx.test", tls_available=True, auth_required=True))
    d.ehlo()
    refused = b"530 5.7.0 Must issue a STARTTLS command first\r\n"
    assert d.feed(b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n") == refused
    assert d.feed(b"MAIL FROM:<alice@mx.test>\r\n") == refused
    d = Driver(S.Policy(hostname="mx.test"))
    d.ehlo()
    assert d.feed(b"AUTH PLAIN\r\n").startswith(b"538 5.7.11 ")


def test_auth_plain_with_initial_response_then_submission():
    d = Driver(S.Policy(hostname="mx.test", tls_active=True, auth_required=True))
    d.ehlo()
    assert d.feed(b"MAIL FROM:<alice@mx.test>\r\n") == b"530 5.7.0 Authentication required\r\n"
    assert d.feed(b"AUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"
    assert d.session.auth_user == "alice"
    assert d.feed(b"AUTH PLAIN\r\n") == b"503 5.5.1 Error: already authenticated\r\n"
    assert "AUTH" not in d.feed(b"EHLO c\r\n").decode()
    d.feed(transaction())
    assert d.deliveries[0].envelope.auth_user == "alice"
    assert d.deliveries[0].envelope.protocol == "ESMTPSA"


def test_auth_login_exchange_failure_and_abort():
    d = Driver(S.Policy(hostname="mx.test", tls_active=True))
    d.ehlo()
    assert d.feed(b"AUTH LOGIN\r\n") == b"334 " + b64(b"Username:") + b"\r\n"
    assert d.feed(b64(b"alice") + b"\r\n") == b"334 " + b64(b"Password:") + b"\r\n"
    assert d.feed(b64(b"wrong") + b"\r\n") == b"535 5.7.8 Authentication credentials invalid\r\n"
    assert d.feed(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert d.feed(b"*\r\n") == b"501 5.7.0 Authentication aborted\r\n"
    assert d.feed(b"AUTH PLAIN\r\n") == b"334 \r\n"
    assert d.feed(b"!!!\r\n") == b"501 5.5.2 Cannot decode response\r\n"
    assert d.feed(b"AUTH LOGIN " + b64(b"alice") + b"\r\n") == b"334 " + b64(b"Password:") + b"\r\n"
    assert d.feed(b64(b"secret") + b"\r\n") == b"235 2.7.0 Authentication successful\r\n"


def test_auth_needs_ehlo_and_no_transaction():
    d = Driver(S.Policy(hostname="mx.test", tls_active=True))
    assert d.feed(b"AUTH PLAIN\r\n") == b"503 5.5.1 Error: send HELO/EHLO first\r\n"
    d.ehlo()
    d.feed(b"MAIL FROM:<a@example.org>\r\n")
    assert d.feed(b"AUTH PLAIN\r\n") == b"503 5.5.1 Error: MAIL transaction in progress\r\n"


# -- CHUNKING ------------------------------------------------------------------------------


def test_bdat_chunks_binary_and_pipelined():
    d = Driver()
    d.ehlo()
    body = b"Subject: bdat\r\n\r\n.no unstuffing\r\n.\r\nbinary\x00\xff\r\n"
    packet = (
        b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@mx.test>\r\n"
        + b"BDAT 10\r\n" + body[:10] + b"BDAT %d LAST\r\n" % (len(body) - 10) + body[10:] + b"NOOP\r\n"
    )
    out = d.feed(packet).decode().splitlines()
    assert out == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: 10 octets received",
                   "250 2.0.0 Ok: queued as TEST", "250 2.0.0 Ok"]
    assert d.deliveries[0].data == body


def test_bdat_chunk_split_across_packets_and_zero_last():
    d = Driver()
    d.ehlo()
    d.feed(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@mx.test>\r\nBDAT 6\r\nabc")
    assert d.feed(b"def") == b"250 2.0.0 Ok: 6 octets received\r\n"
    assert d.feed(b"BDAT 0 LAST\r\n") == b"250 2.0.0 Ok: queued as TEST\r\n"
    assert d.deliveries[0].data == b"abcdef"


def test_bdat_errors_read_and_drop_the_chunk():
    d = Driver(S.Policy(hostname="mx.test", max_message_size=10))
    d.ehlo()
    # no transaction: the chunk is read, dropped, answered 503
    assert d.feed(b"BDAT 6\r\nRSET\r\n") == b"503 5.5.1 Error: need MAIL command\r\n"
    d.feed(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@mx.test>\r\n")
    out = d.feed(b"BDAT 8\r\n12345678BDAT 8\r\n12345678BDAT 1 LAST\r\nxNOOP\r\n").decode().splitlines()
    assert out == ["250 2.0.0 Ok: 8 octets received", "552 5.3.4 Message size exceeds fixed limit",
                   "503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"]
    assert not d.deliveries
    d.feed(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@mx.test>\r\nBDAT 1\r\nx")
    assert d.feed(b"DATA\r\n") == b"503 5.5.1 Error: DATA after BDAT\r\n"
    assert d.feed(b"BDAT x\r\n") == b"501 5.5.4 Syntax: BDAT count [LAST]\r\n" and d.closed


# -- delivery answers -------------------------------------------------------------------------


def test_a_failed_delivery_is_answered_and_the_session_goes_on():
    d = Driver(deliver_reply=S.Reply(451, "4.3.0", "Error: local delivery failed, try again later"))
    d.ehlo()
    assert d.lines(transaction())[-1] == "451 4.3.0 Error: local delivery failed, try again later"
    assert d.feed(b"MAIL FROM:<s@example.org>\r\n") == b"250 2.1.0 Ok\r\n"


# -- fuzz ------------------------------------------------------------------------------------

REPLY_LINE = re.compile(r"^([2-5]\d\d)([ -])(.*)$")
WORDS = st.sampled_from(
    [b"EHLO c", b"HELO c", b"MAIL FROM:<s@example.org>", b"MAIL FROM:<>", b"MAIL FROM:<a@b> SIZE=99999999999",
     b"RCPT TO:<alice@mx.test>", b"RCPT TO:<nobody@mx.test>", b"RCPT TO:<x@elsewhere.example>", b"DATA",
     b".", b"..", b"RSET", b"NOOP", b"VRFY x", b"HELP", b"STARTTLS", b"AUTH PLAIN", b"AUTH LOGIN",
     b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"*", b"BDAT 3", b"BDAT 0 LAST", b"BDAT 2 LAST", b"QUIT", b"", b"x" * 1200]
)
LINES = st.lists(st.one_of(WORDS, st.binary(max_size=40)), max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LINES, st.integers(1, 64), st.sampled_from([b"\r\n", b"\n"]))
def test_any_input_in_any_pieces_never_breaks_the_session(lines, chunk, eol):
    """No exception; every reply line is a 3-digit code; 4xx/5xx (and 2xx beyond the
    greeting and HELO/EHLO) carry a matching enhanced status code."""
    d = Driver(S.Policy(hostname="mx.test", tls_available=True, allow_plaintext=True, max_message_size=2000))
    data = b"".join(line + eol for line in lines)
    out = b""
    for i in range(0, len(data), chunk):
        if d.closed:
            break
        out += d.feed(data[i : i + chunk])
        if d.tls_started:
            d.session.tls_started()
            d.tls_started = False
    assert out == b"" or out.endswith(b"\r\n")
    for line in out.decode("utf-8").split("\r\n")[:-1]:
        m = REPLY_LINE.match(line)
        assert m, line
        code, _, text = m.groups()
        if code in ("334", "354") or (code == "250" and not re.match(r"\d\.\d{1,3}\.\d{1,3} ", text)):
            # SASL challenges and the 354 carry none; nor do the EHLO/HELO lines (RFC 2034 section 3)
            assert code != "250" or text == "mx.test" or re.fullmatch(r"[A-Z0-9-]+( [A-Z0-9 -]+)?", text), line
            continue
        status = re.match(r"(\d)\.\d{1,3}\.\d{1,3} ", text)
        assert status and status.group(1) == code[0], line

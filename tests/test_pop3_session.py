"""The POP3 grammar and state machine without sockets: bytes in, events out."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.auth import sasl
from retrieval.pop3 import session as S

MESSAGES = {1: b"Subject: one\r\n\r\n.\r\nbody\r\n", 2: b"Subject: two\r\n\r\nno final newline"}


def sent(events) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, S.Send))


class Driver:
    """Plays the adapter: answers requests the way the real one does, synchronously."""

    def __init__(self, policy: S.Policy | None = None, password: str = "secret") -> None:
        self.session = S.Pop3Session(policy or S.Policy(allow_plaintext=True, tls_available=True))
        self.password = password
        self.out = sent(self.session.greeting())
        self.commits: list[S.Commit] = []
        self.closed = False

    def feed(self, data: bytes) -> bytes:
        return self._run(self.session.feed(data))

    def _run(self, events) -> bytes:  # type: ignore[no-untyped-def]
        out = b""
        for event in events:
            if isinstance(event, S.Send):
                out += event.data
            elif isinstance(event, S.Close):
                self.closed = True
            elif isinstance(event, S.Authenticate):
                creds = event.credentials
                ok = isinstance(creds, sasl.PasswordCredentials) and creds.authcid == "alice" and creds.password == self.password
                out += self._run(self.session.auth_done("alice-record" if ok else None))
            elif isinstance(event, S.OpenMaildrop):
                out += self._run(self.session.open_done(0x1234, [(uid, len(MESSAGES[uid])) for uid in MESSAGES]))
            elif isinstance(event, S.Retrieve):
                out += self._run(self.session.retrieve_done(MESSAGES[event.uid]))
            elif isinstance(event, S.Commit):
                self.commits.append(event)
                out += self._run(self.session.commit_done(True))
        return out


def test_greeting_and_login():
    d = Driver()
    assert d.out == b"+OK retrieval ready.\r\n"
    assert d.feed(b"USER alice\r\n") == b"+OK\r\n"
    assert d.feed(b"PASS secret\r\n") == b"+OK Logged in.\r\n"
    assert d.session.state == "transaction"


def test_pipelined_commands_answer_in_order():
    d = Driver()
    out = d.feed(b"USER alice\r\nPASS secret\r\nSTAT\r\nLIST\r\nUIDL 2\r\nQUIT\r\n")
    assert out == (
        b"+OK\r\n+OK Logged in.\r\n+OK 2 57\r\n"
        b"+OK 2 messages:\r\n1 25\r\n2 32\r\n.\r\n"
        b"+OK 2 0000000200001234\r\n+OK Logging out.\r\n"
    )
    assert d.closed


def test_retr_dot_stuffs_and_terminates():
    d = Driver()
    d.feed(b"USER alice\r\nPASS secret\r\n")
    assert d.feed(b"RETR 1\r\n") == b"+OK 25 octets\r\nSubject: one\r\n\r\n..\r\nbody\r\n.\r\n"
    assert d.feed(b"RETR 2\r\n") == b"+OK 32 octets\r\nSubject: two\r\n\r\nno final newline\r\n.\r\n"
    assert d.feed(b"TOP 1 0\r\n") == b"+OK\r\nSubject: one\r\n\r\n.\r\n"


def test_dele_commits_only_at_quit_and_marks_retrieved_seen():
    d = Driver()
    d.feed(b"USER alice\r\nPASS secret\r\nRETR 2\r\nDELE 1\r\n")
    assert d.feed(b"DELE 1\r\n") == b"-ERR Message is deleted.\r\n"
    assert d.feed(b"STAT\r\n") == b"+OK 1 32\r\n"
    assert d.commits == []
    assert d.feed(b"QUIT\r\n") == b"+OK Logging out, messages deleted.\r\n"
    assert d.commits == [S.Commit(delete=(1,), seen=(2,))]


def test_rset_undeletes():
    d = Driver()
    d.feed(b"USER alice\r\nPASS secret\r\nDELE 1\r\nRSET\r\n")
    assert d.feed(b"LIST\r\n").startswith(b"+OK 2 messages:")


def test_transaction_commands_need_login():
    d = Driver()
    assert d.feed(b"STAT\r\n") == b"-ERR Not logged in.\r\n"
    assert d.feed(b"PASS x\r\n") == b"-ERR No username given.\r\n"


def test_bad_message_numbers():
    d = Driver()
    d.feed(b"USER alice\r\nPASS secret\r\n")
    assert d.feed(b"RETR 9\r\n") == b"-ERR There's no message 9.\r\n"
    assert d.feed(b"RETR x\r\n") == b"-ERR Invalid message number: x\r\n"
    assert d.feed(b"RETR 0\r\n") == b"-ERR There's no message 0.\r\n"
    assert d.feed(b"TOP 1\r\n") == b"-ERR Usage: TOP msg lines\r\n"


def test_long_lines_are_refused_not_fatal():
    d = Driver()
    assert d.feed(b"USER " + b"a" * 400 + b"\r\n") == b"-ERR Line too long.\r\n"
    # a line arriving in pieces, longer than the limit before its end: refused once
    assert d.feed(b"NOOP " + b"b" * 300) == b"-ERR Line too long.\r\n"
    assert d.feed(b"b" * 300 + b"\r\n") == b""
    assert d.feed(b"USER alice\r\n") == b"+OK\r\n"


def test_too_many_bad_commands_close():
    d = Driver(S.Policy(allow_plaintext=True, max_bad_commands=3))
    out = d.feed(b"X\r\nY\r\nZ\r\nUSER alice\r\n")
    assert out.count(b"-ERR") == 4 and b"Too many invalid commands" in out
    assert d.closed


def test_plaintext_refused_without_tls():
    d = Driver(S.Policy(allow_plaintext=False, tls_available=True))
    capa = d.feed(b"CAPA\r\n")
    assert b"\r\nSTLS\r\n" in capa and b"USER" not in capa and b"SASL" not in capa
    assert d.feed(b"USER alice\r\n").startswith(b"-ERR [AUTH] Plaintext authentication disallowed")
    assert d.feed(b"AUTH PLAIN AGFsaWNlAHNlY3JldA==\r\n").startswith(b"-ERR [AUTH]")


def test_stls_discards_pipelined_plaintext():
    """CVE-2011-0411 style injection: commands sent with STLS must not run after TLS starts."""
    d = Driver(S.Policy(allow_plaintext=False, tls_available=True))
    events = d.session.feed(b"STLS\r\nUSER alice\r\nPASS secret\r\n")
    assert sent(events) == b"+OK Begin TLS negotiation now.\r\n"
    assert any(isinstance(e, S.StartTLS) for e in events)
    d.session.tls_started()
    assert d.session.state == "authorization" and d.session.user_name is None
    assert d.feed(b"CAPA\r\n").count(b"STLS") == 0


def test_auth_plain_and_login_and_cancel():
    d = Driver()
    assert d.feed(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert d.feed(base64.b64encode(b"\0alice\0secret") + b"\r\n") == b"+OK Logged in.\r\n"
    d = Driver()
    assert d.feed(b"AUTH LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert d.feed(b"*\r\n") == b"-ERR Authentication aborted by client.\r\n"
    assert d.feed(b"AUTH LOGIN YWxpY2U=\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert d.feed(b"c2VjcmV0\r\n") == b"+OK Logged in.\r\n"
    d = Driver()
    assert d.feed(b"AUTH PLAIN !!!\r\n") == b"-ERR Invalid base64 data in initial response.\r\n"
    assert d.feed(b"AUTH X-UNKNOWN\r\n") == b"-ERR Unsupported authentication mechanism.\r\n"
    assert d.feed(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong") + b"\r\n") == b"-ERR [AUTH] Authentication failed.\r\n"


def test_capa_lists_what_is_offered():
    d = Driver(S.Policy(allow_plaintext=True, tls_available=True, cram_md5=True))
    capa = d.feed(b"CAPA\r\n").decode().split("\r\n")
    for cap in ("TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "USER", "STLS",
                "SASL PLAIN LOGIN CRAM-MD5", "IMPLEMENTATION retrieval", "EXPIRE NEVER"):
        assert cap in capa
    assert capa[-2:] == [".", ""]


def test_uidl_format_like_dovecot():
    assert S.format_uidl("%08Xu%08Xv", 26, 0x5F3E0A6B) == "0000001A5F3E0A6B"
    assert S.format_uidl("%u.%v", 26, 7) == "26.7"
    assert S.format_uidl("%xu%%", 255, 0) == "ff%"


def test_dot_stuff():
    assert S.dot_stuff(b".a\r\nb\r\n.\r\n") == b"..a\r\nb\r\n..\r\n.\r\n"
    assert S.dot_stuff(b"x") == b"x\r\n.\r\n"


commands = st.lists(
    st.one_of(
        st.sampled_from([b"USER alice", b"PASS secret", b"STAT", b"LIST", b"LIST 1", b"RETR 1", b"RETR 2",
                         b"DELE 1", b"RSET", b"NOOP", b"UIDL", b"TOP 2 1", b"CAPA", b"AUTH PLAIN", b"*", b"QUIT"]),
        st.binary(max_size=300),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(commands, st.integers(1, 50))
def test_any_input_in_any_pieces_never_breaks_the_session(lines, chunk):
    """No exception, whole CRLF lines out, and a QUIT afterwards still ends the session."""
    d = Driver(S.Policy(allow_plaintext=True, max_bad_commands=1000))
    data = b"".join(line + b"\r\n" for line in lines)
    out = b""
    for i in range(0, len(data), chunk):
        if d.closed:
            break
        out += d.feed(data[i : i + chunk])
    assert out == b"" or out.endswith(b"\r\n")
    if not d.closed:
        d.feed(b"\r\n*\r\nQUIT\r\n")  # leave any SASL exchange, then quit
        assert d.closed

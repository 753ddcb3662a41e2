"""The SMTP client side (RFC 5321) as a sans-IO core, and its Twisted adapter.

`SmtpClient` is one connection's worth of one transaction: replies go in
through `feed()`, out come events (bytes to send, start TLS now, close, and
`Finished` with each recipient's reply). It speaks EHLO (HELO when EHLO is
refused), PIPELINING (RFC 2920) when offered and lockstep otherwise, SIZE
(RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), DSN parameters (RFC
3461) passed through when the peer offers DSN, STARTTLS (RFC 3207) whenever
offered, and AUTH PLAIN/LOGIN (for a relayhost) only inside TLS.

What `Finished` means to the caller: a recipient in `results` has its answer
from this host (2xx delivered, 4xx try again later, 5xx final). A recipient
not in `results` was not decided here; `host_failure` then says why (no
greeting, TLS failed, 421, lost connection ...) and the next MX may be tried.
"""

from __future__ import annotations

import base64
import io
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from OpenSSL import SSL
from twisted.internet import defer, ssl
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.protocols.basic import FileSender
from twisted.protocols.policies import TimeoutMixin

from retrieval.events import Close, Send, StartTLS
from retrieval.mime.message import to_crlf
from retrieval.smtp import dsn
from retrieval.smtp.session import Reply

MAX_REPLY_LINE = 4096  # RFC 5321 says 512; tolerate chatty servers, but bound the buffer
MAX_REPLY_LINES = 200
STREAM_ABOVE = 256 * 1024  # the adapter sends bigger writes through a producer, chunk by chunk

_DATA_END = "reply to the end of DATA"
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


class ProtocolError(Exception):
    """The peer sent something that is not an SMTP reply."""


@dataclass(frozen=True)
class OutRecipient:
    address: str
    notify: tuple[str, ...] | None = None  # DSN NOTIFY values, e.g. ("FAILURE", "DELAY"), or ("NEVER",); None: not given
    orcpt: str | None = None  # DSN ORCPT decoded, e.g. "rfc822;bob@example.org" (retrieval.smtp.dsn keeps it so)


@dataclass(frozen=True)
class Transaction:
    sender: str  # "" for the null reverse-path (bounces)
    recipients: tuple[OutRecipient, ...]
    message: bytes  # the whole message; CRLF line ends (bare LF is converted)
    envid: str | None = None  # DSN ENVID, decoded (xtext-encoded on the wire)
    ret: str | None = None  # DSN RET: "FULL" / "HDRS"
    smtputf8: bool = False  # the message needs SMTPUTF8 (it came in with it)


@dataclass(frozen=True)
class Finished:
    """The connection's outcome; see the module docstring."""

    results: dict[str, Reply]
    host_failure: Reply | None = None
    tls: bool = False


Event = Send | StartTLS | Close | Finished


# -- replies ------------------------------------------------------------------------


def parse_reply(lines: list[bytes]) -> Reply:
    """The lines of one (possibly multiline) reply, CRLF stripped -> Reply.

    The enhanced status code (RFC 2034) is taken from the first line and removed
    from every line that repeats it; the text lines are joined with "\\n"."""
    if not lines:
        raise ProtocolError("empty reply")
    code_text = lines[0][:3]
    if not code_text.isdigit() or not 200 <= int(code_text) <= 599:
        raise ProtocolError(f"bad reply code: {lines[0][:40]!r}")
    code = int(code_text)
    texts = [line[4:].decode("utf-8", "replace") for line in lines]
    status = ""
    m = _STATUS.match(texts[0])
    if m and m.group(1) == str(code)[0]:
        status = f"{m.group(1)}.{int(m.group(2))}.{int(m.group(3))}"
        raw = m.group(0).rstrip(" ")
        texts = [t[len(raw):].lstrip(" ") if t.startswith(raw) else t for t in texts]
    return Reply(code, status, "\n".join(texts))


class ReplyParser:
    """Bytes -> complete replies. `ddd-text` lines continue, `ddd text` / `ddd` ends one."""

    def __init__(self) -> None:
        self._buffer = b""
        self._lines: list[bytes] = []

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        replies: list[Reply] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_REPLY_LINE:
                    raise ProtocolError("reply line too long")
                return replies
            line = self._buffer[:end].rstrip(b"\r")
            self._buffer = self._buffer[end + 1 :]
            if len(line) > MAX_REPLY_LINE:
                raise ProtocolError("reply line too long")
            if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3:4] not in (b" ", b"-")):
                raise ProtocolError(f"not an SMTP reply line: {line[:40]!r}")
            if self._lines and line[:3] != self._lines[0][:3]:
                raise ProtocolError("reply code changes inside a multiline reply")
            self._lines.append(line)
            if len(self._lines) > MAX_REPLY_LINES:
                raise ProtocolError("too many reply lines")
            if line[3:4] != b"-":
                lines, self._lines = self._lines, []
                replies.append(parse_reply(lines))


def parse_ehlo(reply: Reply) -> dict[str, str]:
    """EHLO reply -> {KEYWORD: params}; the first line is the greeting, not an extension."""
    extensions: dict[str, str] = {}
    for line in reply.text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword.upper().startswith("AUTH="):  # pre-RFC 4954 servers: "AUTH=LOGIN PLAIN"
            keyword, params = "AUTH", keyword[5:] + " " + params
        if keyword:
            extensions.setdefault(keyword.upper(), params.strip())
    return extensions


def dot_stuff(message: bytes) -> bytes:
    """The DATA payload with its terminator: leading dots doubled (RFC 5321 4.5.2)."""
    message = to_crlf(message)
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    if message.startswith(b"."):
        message = b"." + message
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


def _ascii_domain(address: str) -> str:
    """`local@bücher.example` -> `local@xn--bcher-kva.example` (RFC 5890 A-labels), so that
    an ASCII local part at an IDN domain needs no SMTPUTF8; other addresses unchanged."""
    local, _, domain = address.rpartition("@")
    if not local.isascii() or domain.isascii():
        return address
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return address


# -- the core -----------------------------------------------------------------------


@dataclass
class _State:
    extensions: dict[str, str] = field(default_factory=dict)
    esmtp: bool = True
    tls: bool = False
    starttls_refused: bool = False
    accepted: list[str] = field(default_factory=list)
    results: dict[str, Reply] = field(default_factory=dict)
    mail_failed: bool = False
    finished: bool = False
    during: str = "greeting"  # what we wait for, for failure texts


class SmtpClient:
    """One connection, one transaction. Drive with feed() / tls_started() / connection_lost() / timed_out()."""

    def __init__(self, txn: Transaction, *, helo: str, starttls: bool = True,
                 auth: tuple[str, str] | None = None) -> None:
        self.txn = txn
        self.helo = helo
        self.starttls = starttls
        self.auth = auth
        self.s = _State()
        self._parser = ReplyParser()
        self._wire: dict[str, str] = {}  # address -> as sent (IDN domains as A-labels for non-SMTPUTF8 peers)
        self._expect: deque[tuple[str, Callable[[Reply], list[Event]]]] = deque([("greeting", self._on_greeting)])

    # -- driving ----------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.s.finished

    @property
    def awaiting_data_end(self) -> bool:
        """The final reply to the message is due: RFC 5321 4.5.3.2.6 gives it 10 minutes, not 5."""
        return bool(self._expect) and self._expect[0][0] == _DATA_END

    def feed(self, data: bytes) -> list[Event]:
        if self.s.finished:
            return []
        try:
            replies = self._parser.feed(data)
        except ProtocolError as exc:
            return self._fail(Reply(451, "4.5.0", f"protocol error from remote server: {exc}"), quit=False)
        events: list[Event] = []
        for reply in replies:
            if self.s.finished:
                break
            if not self._expect:
                return events + self._fail(Reply(451, "4.5.0", "remote server sent an unexpected reply"), quit=False)
            self.s.during, handler = self._expect.popleft()
            events += handler(reply)
        return events

    def tls_started(self) -> list[Event]:
        """The adapter has begun TLS; greet again inside it (RFC 3207 4.2: forget what was said before)."""
        if self.s.finished:
            return []
        self.s.tls = True
        self.s.extensions = {}
        return self._ehlo()

    def connection_lost(self, why: str = "", tls_failure: bool = False) -> list[Event]:
        if self.s.finished:
            return []
        if tls_failure:
            reply = Reply(421, "4.7.0", f"TLS handshake failed{': ' + why if why else ''}")
        else:
            reply = Reply(421, "4.4.2", f"lost connection with remote server while waiting for {self._waiting_for}"
                          + (f" ({why})" if why else ""))
        return self._fail(reply, quit=False)

    def timed_out(self) -> list[Event]:
        if self.s.finished:
            return []
        return self._fail(Reply(421, "4.4.2", f"timeout waiting for the {self._waiting_for}"), quit=False)

    @property
    def _waiting_for(self) -> str:
        return self._expect[0][0] if self._expect else self.s.during

    # -- steps ------------------------------------------------------------------

    def _send(self, line: str, what: str, handler: Callable[[Reply], list[Event]]) -> Send:
        self._expect.append((what, handler))
        return Send(line.encode("utf-8") + b"\r\n")

    def _on_greeting(self, reply: Reply) -> list[Event]:
        if reply.code != 220:
            return self._fail(reply)
        return self._ehlo()

    def _ehlo(self) -> list[Event]:
        return [self._send(f"EHLO {self.helo}", "reply to EHLO", self._on_ehlo)]

    def _on_ehlo(self, reply: Reply) -> list[Event]:
        if reply.ok:
            self.s.extensions = parse_ehlo(reply)
            return self._after_hello()
        if reply.code >= 500 and reply.code != 554 and not self.s.tls:
            self.s.esmtp = False
            return [self._send(f"HELO {self.helo}", "reply to HELO", self._on_helo)]
        return self._fail(reply)

    def _on_helo(self, reply: Reply) -> list[Event]:
        if not reply.ok:
            return self._fail(reply)
        self.s.extensions = {}
        return self._after_hello()

    def _after_hello(self) -> list[Event]:
        ext = self.s.extensions
        if not self.s.tls and "STARTTLS" in ext and self.starttls and not self.s.starttls_refused:
            return [self._send("STARTTLS", "reply to STARTTLS", self._on_starttls)]
        if self.auth is not None:
            return self._authenticate()
        return self._mail()

    def _on_starttls(self, reply: Reply) -> list[Event]:
        if reply.code == 220:
            # anything the peer sent after its 220 came in clear: forget it (the STARTTLS
            # injection of CVE-2011-0411, client side); a whole reply there fails the host in feed()
            self._parser = ReplyParser()
            self.s.during = "TLS handshake"
            return [StartTLS()]
        # opportunistic: a refused STARTTLS leaves a usable plaintext session
        self.s.starttls_refused = True
        return self._after_hello()

    def _authenticate(self) -> list[Event]:
        assert self.auth is not None
        if not self.s.tls:
            return self._fail(Reply(451, "4.7.0", "relayhost offers no STARTTLS; not sending the password in clear"))
        mechanisms = self.s.extensions.get("AUTH", "").upper().split()
        user, password = self.auth
        if "PLAIN" in mechanisms:
            token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()
            return [self._send(f"AUTH PLAIN {token}", "reply to AUTH", self._on_auth_done)]
        if "LOGIN" in mechanisms:
            return [self._send("AUTH LOGIN", "reply to AUTH", self._on_login_user)]
        return self._fail(Reply(451, "4.7.0", "relayhost offers neither AUTH PLAIN nor AUTH LOGIN"))

    def _on_login_user(self, reply: Reply) -> list[Event]:
        if reply.code != 334:
            return self._fail(reply)
        assert self.auth is not None
        token = base64.b64encode(self.auth[0].encode()).decode()
        return [self._send(token, "reply to AUTH LOGIN user name", self._on_login_password)]

    def _on_login_password(self, reply: Reply) -> list[Event]:
        if reply.code != 334:
            return self._fail(reply)
        assert self.auth is not None
        token = base64.b64encode(self.auth[1].encode()).decode()
        return [self._send(token, "reply to AUTH", self._on_auth_done)]

    def _on_auth_done(self, reply: Reply) -> list[Event]:
        if reply.code != 235:
            return self._fail(Reply(reply.code, reply.status, f"SASL authentication failed: {reply.text}"))
        return self._mail()

    # -- the transaction ----------------------------------------------------------

    def _mail(self) -> list[Event]:
        txn, ext = self.txn, self.s.extensions
        if "SMTPUTF8" in ext:
            self._wire = {a: a for a in [txn.sender] + [r.address for r in txn.recipients]}
        else:
            self._wire = {a: _ascii_domain(a) for a in [txn.sender] + [r.address for r in txn.recipients]}
        utf8 = txn.smtputf8 or not all(a.isascii() for a in self._wire.values())
        if utf8 and "SMTPUTF8" not in ext:
            return self._decide_all(Reply(550, "5.6.7", "SMTPUTF8 is required, but was not offered by the remote server"))
        size_limit = ext.get("SIZE", "")
        size = len(txn.message)
        if size_limit.isdigit() and 0 < int(size_limit) < size:
            return self._decide_all(Reply(552, "5.3.4", f"message size {size} exceeds the remote server's limit of {size_limit}"))
        params = []
        if "SIZE" in ext:
            params.append(f"SIZE={size}")
        if "8BITMIME" in ext and not txn.message.isascii():
            params.append("BODY=8BITMIME")
        if utf8:
            params.append("SMTPUTF8")
        if "DSN" in ext:
            params += dsn.mail_params(txn.ret, txn.envid)
        mail = self._send(f"MAIL FROM:<{self._wire[txn.sender]}>" + "".join(" " + p for p in params), "reply to MAIL FROM", self._on_mail)
        if "PIPELINING" in ext:
            commands = [mail] + [self._rcpt(i) for i in range(len(txn.recipients))]
            commands.append(self._send("DATA", "reply to DATA", self._on_data))
            return [Send(b"".join(c.data for c in commands))]
        return [mail]

    def _rcpt(self, index: int) -> Send:
        recipient = self.txn.recipients[index]
        params = ""
        if "DSN" in self.s.extensions:
            params = "".join(" " + p for p in dsn.rcpt_params(recipient.notify, recipient.orcpt))
        return self._send(f"RCPT TO:<{self._wire[recipient.address]}>{params}", "reply to RCPT TO",
                          lambda reply: self._on_rcpt(index, reply))

    @property
    def _pipelining(self) -> bool:
        return "PIPELINING" in self.s.extensions

    def _on_mail(self, reply: Reply) -> list[Event]:
        if reply.code == 421:
            return self._fail(reply)
        if not reply.ok:
            self.s.mail_failed = True
            for r in self.txn.recipients:
                self.s.results[r.address] = reply
            if self._pipelining:
                return []  # the RCPT and DATA replies still come; their handlers see mail_failed
            return self._done()
        if self._pipelining:
            return []
        return [self._rcpt(0)]

    def _on_rcpt(self, index: int, reply: Reply) -> list[Event]:
        address = self.txn.recipients[index].address
        if reply.code == 421:
            return self._fail(reply)
        if not self.s.mail_failed:
            if reply.ok:
                self.s.accepted.append(address)
            else:
                self.s.results[address] = reply
        if self._pipelining:
            return []
        if index + 1 < len(self.txn.recipients):
            return [self._rcpt(index + 1)]
        if not self.s.accepted:
            return self._done()
        return [self._send("DATA", "reply to DATA", self._on_data)]

    def _on_data(self, reply: Reply) -> list[Event]:
        if reply.code == 421:
            return self._fail(reply)
        if reply.code == 354:
            if not self.s.accepted or self.s.mail_failed:
                # RFC 2920 3.1: DATA got through although no RCPT did; end it empty, nothing is delivered
                return [self._send(".", _DATA_END, lambda _r: self._done())]
            self._expect.append((_DATA_END, self._on_data_end))
            return [Send(dot_stuff(self.txn.message))]
        if not self.s.mail_failed:
            for address in self.s.accepted:
                self.s.results[address] = reply
        return self._done()

    def _on_data_end(self, reply: Reply) -> list[Event]:
        if reply.code == 421:
            return self._fail(reply)
        for address in self.s.accepted:
            self.s.results[address] = reply
        return self._done()

    # -- ending -----------------------------------------------------------------

    def _decide_all(self, reply: Reply) -> list[Event]:
        for r in self.txn.recipients:
            self.s.results.setdefault(r.address, reply)
        return self._done()

    def _done(self) -> list[Event]:
        self.s.finished = True
        self._expect.clear()
        self._expect.append(("reply to QUIT", lambda _r: []))
        return [Finished(dict(self.s.results), None, self.s.tls), Send(b"QUIT\r\n"), Close()]

    def _fail(self, reply: Reply, quit: bool = True) -> list[Event]:
        """This host cannot take the mail now; recipients not yet answered go to the next one."""
        self.s.finished = True
        self._expect.clear()
        events: list[Event] = [Finished(dict(self.s.results), reply, self.s.tls)]
        if quit:
            events.append(Send(b"QUIT\r\n"))
        events.append(Close())
        return events


# -- the Twisted adapter -------------------------------------------------------------


def _client_tls() -> ssl.CertificateOptions:
    """Opportunistic TLS (RFC 7435): encrypt when we can, verify nothing. A peer that
    cannot finish a handshake counts as a failed host, so nothing is sent in clear after
    the peer announced TLS."""
    return ssl.CertificateOptions(verify=False)


class _ClientProtocol(Protocol, TimeoutMixin):
    def __init__(self, core: SmtpClient, done: defer.Deferred, command_timeout: float) -> None:
        self.core = core
        self.done = done
        self.command_timeout = command_timeout
        self._tls_pending = False
        self._closed = False

    def connectionMade(self) -> None:
        self.setTimeout(self.command_timeout)

    def dataReceived(self, data: bytes) -> None:
        self._tls_pending = False
        self._handle(self.core.feed(data))

    def timeoutConnection(self) -> None:
        self._handle(self.core.timed_out())
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:  # type: ignore[no-untyped-def]
        self.setTimeout(None)
        self._closed = True
        tls_failure = self._tls_pending or (reason is not None and reason.check(SSL.Error) is not None)
        why = ""
        if reason is not None and reason.value is not None:
            why = str(reason.value) or type(reason.value).__name__
        self._handle(self.core.connection_lost(why[:200], tls_failure=tls_failure))

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Finished):
                if not self.done.called:
                    self.done.callback(event)
            elif self._closed:
                continue
            elif isinstance(event, Send):
                if len(event.data) > STREAM_ABOVE:
                    self._stream(event.data)
                else:
                    self.transport.write(event.data)
            elif isinstance(event, StartTLS):
                self._tls_pending = True
                self.transport.startTLS(_client_tls())
                self._handle(self.core.tls_started())
            elif isinstance(event, Close):
                self._closed = True
                self.setTimeout(None)
                self.transport.loseConnection()
        if not self._closed and not self.core.finished:
            factor = 2.0 if self.core.awaiting_data_end else 1.0
            self.setTimeout(self.command_timeout * factor)


    def _stream(self, data: bytes) -> None:
        """Send a big message as the peer takes it, restarting the timer at each chunk: the
        timeout is for a peer that stops reading, not for a slow link (RFC 5321 4.5.3.2.5)."""

        def progress(chunk: bytes) -> bytes:
            self.resetTimeout()
            return chunk

        d = FileSender().beginFileTransfer(io.BytesIO(data), self.transport, progress)
        d.addErrback(lambda _failure: None)  # the connection went away mid-message: connectionLost reports it


class _Factory(ClientFactory):
    def __init__(self, core: SmtpClient, done: defer.Deferred, command_timeout: float, where: str) -> None:
        self.core = core
        self.done = done
        self.command_timeout = command_timeout
        self.where = where

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        return _ClientProtocol(self.core, self.done, self.command_timeout)

    def clientConnectionFailed(self, connector, reason) -> None:  # type: ignore[no-untyped-def]
        if not self.done.called:
            why = reason.getErrorMessage()
            self.done.callback(Finished({}, Reply(421, "4.4.1", f"connect to {self.where}: {why}")))


def send_transaction(reactor, address: str, port: int, core: SmtpClient, *,  # type: ignore[no-untyped-def]
                     connect_timeout: float, command_timeout: float) -> defer.Deferred:
    """Run `core` over a TCP connection to address:port; a Deferred[Finished] that never fails."""
    done: defer.Deferred = defer.Deferred()
    where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    reactor.connectTCP(address, port, _Factory(core, done, command_timeout, where), timeout=connect_timeout)
    return done

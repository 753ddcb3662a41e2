"""ESMTP (RFC 5321) server side as a sans-IO state machine.

Bytes go in through `feed()`; what comes out is a list of events: bytes to
send, and requests for work the session cannot do itself (verify a
password, decide about a recipient, deliver a message) that the Twisted
adapter carries out and answers through the matching `*_done()` method.
While a request is out, further pipelined commands wait in the buffer, in
order (RFC 2920), so a pipelined MAIL/RCPT/RCPT/DATA gets its replies in
sequence and the 354 only after every RCPT verdict is known.

Extensions: PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES (RFC 2034/3463:
every 2xx/4xx/5xx reply carries X.Y.Z, except the greeting and the HELO/EHLO
answers, as RFC 2034 section 3 says), STARTTLS (RFC 3207), AUTH (RFC 4954,
mechanisms from `retrieval.auth.sasl`), SMTPUTF8 (RFC 6531), CHUNKING/BDAT
(RFC 3030), DSN (RFC 3461: RET/ENVID on MAIL, NOTIFY/ORCPT on RCPT, kept
decoded on the Envelope and its Recipients for the queue and the reports).

The session decides nothing about recipients or mailboxes: an RCPT becomes a
`CheckRecipient` request, answered with the `Reply` to give and an opaque
target the adapter wants back at delivery time. With `Policy.check_sender`, a
MAIL becomes a `CheckSender` request too (the access table's say about the
client and the sender), answered through `sender_done()`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field, replace

from retrieval.auth import sasl
from retrieval.smtp import dsn
from retrieval.events import Authenticate, Close, Send, StartTLS

MAX_COMMAND = 1000  # octets with CRLF: RFC 5321's 512 plus room for extension parameters
MAX_AUTH_LINE = 12288  # RFC 4954 section 4: an AUTH line or a SASL response may be this long
MAX_ADDRESS = 320  # octets of a path (RFC 5321 says 256; be generous, bound the work)
DATA_FLUSH = 8192  # a DATA line longer than this is taken in pieces, never buffered whole
MAX_BDAT_DIGITS = 18

# Things that are not SMTP: a browser or an HTTP proxy probe (Postfix's smtpd_forbidden_commands).
FORBIDDEN = {"GET", "POST", "CONNECT", "HEAD", "PUT"}


@dataclass(frozen=True)
class Policy:
    hostname: str = "localhost"
    tls_active: bool = False
    tls_available: bool = False
    allow_plaintext: bool = False
    auth_required: bool = False  # submission: no MAIL before AUTH
    cram_md5: bool = False
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 1000
    max_errors: int = 20
    chunking: bool = True
    check_sender: bool = False  # MAIL FROM waits for a CheckSender verdict


@dataclass(frozen=True)
class Reply:
    code: int
    status: str  # enhanced status code X.Y.Z ("" for replies that carry none: 220 greeting, 334, 354)
    text: str

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    def render(self) -> bytes:
        lines = self.text.split("\n")
        out = []
        for i, line in enumerate(lines):
            sep = " " if i == len(lines) - 1 else "-"
            body = f"{self.status} {line}" if self.status else line
            out.append(f"{self.code}{sep}{body}\r\n")
        return "".join(out).encode("utf-8", "replace")


# -- events -------------------------------------------------------------------


@dataclass(frozen=True)
class CheckRecipient:
    """Decide about one RCPT; answer with `recipient_done(reply, target)`."""

    address: str  # as the client wrote it between < and >, source route dropped
    sender: str
    authenticated: bool


@dataclass(frozen=True)
class CheckSender:
    """Decide about MAIL FROM (only with Policy.check_sender); answer with `sender_done(reply)`."""

    address: str  # "" for the null reverse-path
    authenticated: bool


@dataclass(frozen=True)
class Recipient:
    address: str
    target: object = None  # whatever the adapter attached in recipient_done()
    notify: tuple[str, ...] | None = None  # RFC 3461 NOTIFY: ("NEVER",) or some of SUCCESS/FAILURE/DELAY
    orcpt: str | None = None  # RFC 3461 ORCPT, decoded: "rfc822;bob@example.com"


@dataclass(frozen=True)
class Envelope:
    sender: str  # "" for the null reverse-path <>
    recipients: tuple[Recipient, ...]
    helo: str
    esmtp: bool
    tls: bool
    auth_user: str | None
    body: str | None  # "7BIT" / "8BITMIME" as declared, None when not declared
    smtputf8: bool
    size: int  # octets received (after dot-unstuffing)
    ret: str | None = None  # RFC 3461 RET: "FULL" / "HDRS", None when not given
    envid: str | None = None  # RFC 3461 ENVID, decoded

    @property
    def protocol(self) -> str:
        """The `with` keyword of the Received header (RFC 3848, RFC 6531 section 4.3)."""
        if self.smtputf8:
            base = "UTF8SMTP"
        elif self.esmtp:
            base = "ESMTP"
        else:
            return "SMTP"
        return base + ("S" if self.tls else "") + ("A" if self.auth_user else "")


@dataclass(frozen=True)
class Deliver:
    """Deliver (or queue) the message; answer with `deliver_done(reply)` after it is safe."""

    envelope: Envelope
    data: bytes  # the message, CRLF line ends, dot-unstuffed, no terminator


Event = Send | StartTLS | Close | Authenticate | CheckSender | CheckRecipient | Deliver


@dataclass
class _Transaction:
    sender: str
    body: str | None = None
    smtputf8: bool = False
    declared_size: int | None = None
    ret: str | None = None
    envid: str | None = None
    recipients: list[Recipient] = field(default_factory=list)
    rcpt_attempts: int = 0
    bdat: bool = False  # a BDAT chunk was accepted: DATA is no longer possible
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    too_big: bool = False


@dataclass
class _Bdat:
    remaining: int
    last: bool
    error: Reply | None  # the chunk is read and thrown away, then this is the answer
    received: int = 0


# -- addresses ------------------------------------------------------------------

_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # in a command: all but TAB
_LABEL = re.compile(r"[A-Za-z0-9_\u0080-\U0010ffff]([A-Za-z0-9_\-\u0080-\U0010ffff]*[A-Za-z0-9_\u0080-\U0010ffff])?")
_QUOTED = re.compile(r'"(?:[^"\\\r\n]|\\[ -~\u0080-\U0010ffff])*"')
_PARAM_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def parse_path(text: str) -> tuple[str, str]:
    """`<addr> params` -> (addr, params text). Raise ValueError on a malformed path.

    Lenient where Postfix is: a space after the colon, a bare address without
    angle brackets, a source route (`<@relay:user@host>`, dropped as RFC 5321
    appendix C allows)."""
    text = text.lstrip(" ")
    if text.startswith("<"):
        i, quoted = 1, False
        while i < len(text):
            c = text[i]
            if quoted:
                if c == "\\":
                    i += 2
                    continue
                if c == '"':
                    quoted = False
            elif c == '"':
                quoted = True
            elif c == ">":
                break
            elif c == "<":
                raise ValueError("nested <")
            i += 1
        else:
            raise ValueError("no closing >")
        inner, rest = text[1:i], text[i + 1 :]
        if rest and not rest.startswith(" "):
            raise ValueError("junk after >")
    else:
        inner, _, rest = text.partition(" ")
        if not inner or ">" in inner:
            raise ValueError("no address")
    if inner.startswith("@"):
        colon = inner.find(":")
        if colon < 0:
            raise ValueError("bad source route")
        inner = inner[colon + 1 :]
    if len(inner.encode("utf-8", "replace")) > MAX_ADDRESS:
        raise ValueError("address too long")
    return inner, rest.strip(" ")


def split_address(address: str) -> tuple[str, str]:
    """`local@domain` -> (local, domain) at the last @ outside a quoted local part."""
    if address.startswith('"'):
        m = _QUOTED.match(address)
        if m is None:
            return address, ""
        local = m.group(0)
        rest = address[m.end() :]
        if rest.startswith("@"):
            return local, rest[1:]
        return address, ""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain


def unquote_local(local: str) -> str:
    if len(local) >= 2 and local.startswith('"') and local.endswith('"'):
        return re.sub(r"\\(.)", r"\1", local[1:-1])
    return local


def valid_mailbox(address: str) -> bool:
    """RFC 5321 Mailbox (with RFC 6531's UTF-8 allowed; the caller checks SMTPUTF8)."""
    local, domain = split_address(address)
    if not local or not domain:
        return False
    if local.startswith('"'):
        if _QUOTED.fullmatch(local) is None:
            return False
    elif not all(_ATEXT.fullmatch(atom) for atom in local.split(".")):
        return False
    if domain.startswith("["):
        return domain.endswith("]") and re.fullmatch(r"\[[!-Z^-~]+\]", domain) is not None
    return all(_LABEL.fullmatch(label) for label in domain.split("."))


def parse_params(text: str) -> dict[str, str | None] | str:
    """`KEY=VALUE KEY2` -> {"KEY": "VALUE", "KEY2": None}, or an error text."""
    params: dict[str, str | None] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if _PARAM_KEY.fullmatch(key) is None or (eq and (not value or "=" in value)):
            return f"Bad parameter syntax: {item[:40]}"
        key = key.upper()
        if key in params:
            return f"Duplicate parameter: {key}"
        params[key] = value if eq else None
    return params


# -- the session ------------------------------------------------------------------


def R(code: int, status: str, text: str) -> Reply:
    return Reply(code, status, text)


class SmtpSession:
    """One connection's protocol state."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.helo: str | None = None
        self.esmtp = False
        self.auth_user: str | None = None
        self.closed = False
        self._buffer = b""
        self._discarding = False
        self._pending: str | None = None
        self._sasl: sasl.Mechanism | None = None
        self._errors = 0
        self._txn: _Transaction | None = None
        self._reading: str | None = None  # "data" / "bdat" while message text comes in
        self._line_start = True  # DATA: at the start of a line
        self._after_crlf = True  # DATA: ... and the line before ended in CRLF (a terminator is possible)
        self._bdat: _Bdat | None = None
        self._asked = ""  # the address of the RCPT being checked
        self._asked_dsn: tuple[tuple[str, ...] | None, str | None] = (None, None)  # ... and its NOTIFY, ORCPT
        self._asked_txn: _Transaction | None = None  # the MAIL being checked

    # -- driving ------------------------------------------------------------------

    def greeting(self) -> list[Event]:
        return [Send(f"220 {self.policy.hostname} ESMTP retrieval\r\n".encode())]

    @property
    def waiting(self) -> bool:
        """A request is out: the adapter may stop reading until it is answered."""
        return self._pending is not None

    @property
    def in_message(self) -> bool:
        """Message text is coming in (DATA, or BDAT chunks not yet LAST): a stop waits for it."""
        return self._reading is not None or self._bdat is not None

    def shutting_down(self) -> list[Event]:
        """The server stops (between commands, or after the reply to the last one)."""
        self.closed = True
        return [Send(R(421, "4.3.2", f"{self.policy.hostname} Service shutting down").render()), Close()]

    def feed(self, data: bytes) -> list[Event]:
        if self.closed:
            return []
        self._buffer += data
        return self._run()

    def timed_out(self) -> list[Event]:
        self.closed = True
        return [Send(R(421, "4.4.2", f"{self.policy.hostname} Error: timeout exceeded").render()), Close()]

    def _run(self) -> list[Event]:
        out: list[Event] = []
        while self._pending is None and not self.closed:
            if self._reading == "data":
                if not self._data_step(out):
                    break
                continue
            if self._reading == "bdat":
                if not self._bdat_step(out):
                    break
                continue
            pos = self._buffer.find(b"\n")
            if pos < 0:
                if len(self._buffer) > MAX_AUTH_LINE:
                    self._buffer = b""
                    if not self._discarding:
                        self._discarding = True
                        out += self._too_long()
                break
            line, self._buffer = self._buffer[:pos], self._buffer[pos + 1 :]
            if self._discarding:
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            out += self._line(line)
            if any(isinstance(e, StartTLS) for e in out):
                # RFC 3207 section 4.2 / CVE-2011-0411: nothing the client sent before the
                # handshake may be taken as sent after it.
                self._buffer = b""
                break
        return out

    def _resume(self, events: list[Event]) -> list[Event]:
        self._pending = None
        return events + self._run()

    def _reply(self, code: int, status: str, text: str) -> list[Event]:
        return [Send(R(code, status, text).render())]

    def _error(self, code: int, status: str, text: str) -> list[Event]:
        """A reply for a client mistake; too many of them end the session."""
        return self._error_reply(R(code, status, text))

    def _error_reply(self, reply: Reply) -> list[Event]:
        self._errors += 1
        out: list[Event] = [Send(reply.render())]
        if self._errors >= self.policy.max_errors:
            self.closed = True
            out += self._reply(421, "4.7.0", f"{self.policy.hostname} Error: too many errors") + [Close()]
        return out

    def _too_long(self) -> list[Event]:
        if self._sasl is not None:
            self._sasl = None
            return self._error(500, "5.5.6", "Authentication exchange line is too long")
        return self._error(500, "5.5.2", "Error: line too long")

    def _line(self, line: bytes) -> list[Event]:
        if self._sasl is not None:
            return self._sasl_response(line)
        if len(line) + 2 > MAX_COMMAND and line[:5].upper() != b"AUTH ":
            return self._too_long()
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(500, "5.5.2", "Error: bad UTF-8 syntax")
        if _CONTROL.search(text):
            return self._error(500, "5.5.2", "Error: control characters in command")
        verb, _, arg = text.strip(" \t").partition(" ")
        verb = verb.upper()
        if verb in FORBIDDEN:
            self.closed = True
            return self._reply(554, "5.7.0", "Error: this is an SMTP server, not a web server") + [Close()]
        handler = getattr(self, "_cmd_" + verb.lower(), None) if verb.isascii() and verb.isalpha() else None
        if handler is None:
            return self._error(500, "5.5.2", "Error: command not recognized")
        return handler(arg.strip(" \t"))

    # -- state helpers ----------------------------------------------------------------

    def _plaintext_ok(self) -> bool:
        return self.policy.tls_active or self.policy.allow_plaintext

    def _mechanisms(self) -> list[str]:
        mechs = ["PLAIN", "LOGIN"] if self._plaintext_ok() else []
        if self.policy.cram_md5:
            mechs.append("CRAM-MD5")
        return mechs

    def _must_starttls(self) -> bool:
        """AUTH is needed and only possible after STARTTLS."""
        return not self._plaintext_ok() and self.policy.tls_available and not self.policy.tls_active

    def _reset(self) -> None:
        self._txn = None
        self._reading = None
        self._bdat = None

    def _need_helo(self) -> list[Event] | None:
        if self.helo is None:
            return self._error(503, "5.5.1", "Error: send HELO/EHLO first")
        return None

    # -- greeting, session commands ---------------------------------------------------------

    def _cmd_ehlo(self, arg: str) -> list[Event]:
        if not arg:
            return self._error(501, "5.5.4", "Syntax: EHLO hostname")
        self._reset()
        self.helo, self.esmtp = arg, True
        p = self.policy
        lines = [p.hostname, "PIPELINING", f"SIZE {p.max_message_size}"]
        if p.tls_available and not p.tls_active:
            lines.append("STARTTLS")
        mechs = self._mechanisms()
        if mechs and self.auth_user is None:
            lines.append("AUTH " + " ".join(mechs))
        lines += ["ENHANCEDSTATUSCODES", "8BITMIME", "DSN", "SMTPUTF8"]
        if p.chunking:
            lines.append("CHUNKING")
        return [Send(R(250, "", "\n".join(lines)).render())]

    def _cmd_helo(self, arg: str) -> list[Event]:
        if not arg:
            return self._error(501, "5.5.4", "Syntax: HELO hostname")
        self._reset()
        self.helo, self.esmtp = arg, False
        return [Send(R(250, "", self.policy.hostname).render())]

    def _cmd_rset(self, arg: str) -> list[Event]:
        if arg:
            return self._error(501, "5.5.4", "Syntax: RSET")
        self._reset()
        return self._reply(250, "2.0.0", "Ok")

    def _cmd_noop(self, arg: str) -> list[Event]:
        return self._reply(250, "2.0.0", "Ok")

    def _cmd_quit(self, arg: str) -> list[Event]:
        self.closed = True
        return self._reply(221, "2.0.0", "Bye") + [Close()]

    def _cmd_vrfy(self, arg: str) -> list[Event]:
        if not arg:
            return self._error(501, "5.5.4", "Syntax: VRFY address")
        # RFC 5321 3.5.3: 252 when the server will not say; VRFY only helps address harvesters.
        return self._reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery")

    def _cmd_expn(self, arg: str) -> list[Event]:
        return self._error(502, "5.5.1", "Error: EXPN is not available")

    def _cmd_help(self, arg: str) -> list[Event]:
        commands = "HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH"
        return [Send(R(214, "2.0.0", f"Commands: {commands}\nSee RFC 5321 and https://www.rfc-editor.org/").render())]

    def _cmd_etrn(self, arg: str) -> list[Event]:
        return self._error(502, "5.5.1", "Error: command not implemented")

    _cmd_turn = _cmd_etrn

    # -- STARTTLS -------------------------------------------------------------------------

    def _cmd_starttls(self, arg: str) -> list[Event]:
        if arg:
            return self._error(501, "5.5.4", "Syntax: STARTTLS")
        if self.policy.tls_active:
            return self._error(503, "5.5.1", "Error: TLS already active")
        if not self.policy.tls_available:
            return self._error(502, "5.5.1", "Error: command not implemented")
        if self._txn is not None:
            return self._error(503, "5.5.1", "Error: MAIL transaction in progress")
        return self._reply(220, "2.0.0", "Ready to start TLS") + [StartTLS()]

    def tls_started(self) -> None:
        """The handshake finished: forget what was said before (RFC 3207 section 4.2)."""
        self.policy = replace(self.policy, tls_active=True)
        self.helo, self.esmtp, self.auth_user = None, False, None
        self._reset()
        self._buffer = b""

    # -- AUTH -------------------------------------------------------------------------------

    def _cmd_auth(self, arg: str) -> list[Event]:
        missing = self._need_helo()
        if missing:
            return missing
        if self.auth_user is not None:
            return self._error(503, "5.5.1", "Error: already authenticated")
        if self._txn is not None:
            return self._error(503, "5.5.1", "Error: MAIL transaction in progress")
        parts = arg.split(" ")
        if not arg or len(parts) > 2:
            return self._error(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
        name = parts[0].upper()
        if name in ("PLAIN", "LOGIN") and not self._plaintext_ok():
            if self.policy.tls_available:
                return self._error(530, "5.7.0", "Must issue a STARTTLS command first")
            return self._error(538, "5.7.11", "Encryption required for requested authentication mechanism")
        if name not in self._mechanisms():
            return self._error(504, "5.5.4", "Unrecognized authentication type")
        mech = sasl.make(name, self.policy.hostname)
        assert mech is not None
        if len(parts) == 2:
            decoded = b"" if parts[1] == "=" else _b64decode(parts[1])
            if decoded is None:
                return self._error(501, "5.5.2", "Cannot decode AUTH parameter")
            step = mech.start(decoded)
        else:
            step = mech.start(None)
        return self._sasl_step(mech, step)

    def _sasl_step(self, mech: sasl.Mechanism, step: sasl.Step) -> list[Event]:
        if isinstance(step, sasl.Challenge):
            self._sasl = mech
            return [Send(b"334 " + base64.b64encode(step.data) + b"\r\n")]
        self._sasl = None
        if isinstance(step, sasl.Failure):
            return self._error(535, "5.7.8", "Authentication credentials invalid")
        self._pending = "auth"
        return [Authenticate(step)]

    def _sasl_response(self, line: bytes) -> list[Event]:
        mech, self._sasl = self._sasl, None
        assert mech is not None
        if line.strip() == b"*":
            return self._error(501, "5.7.0", "Authentication aborted")
        decoded = _b64decode(line.decode("ascii", "replace"))
        if decoded is None:
            return self._error(501, "5.5.2", "Cannot decode response")
        return self._sasl_step(mech, mech.step(decoded))

    def auth_done(self, user: str | None) -> list[Event]:
        """The verification finished: the user's name, or None for any failure."""
        if user is None:
            self._pending = None
            return self._error(535, "5.7.8", "Authentication credentials invalid") + self._run()
        self.auth_user = user
        return self._resume(self._reply(235, "2.7.0", "Authentication successful"))

    # -- the mail transaction -------------------------------------------------------------------

    def _cmd_mail(self, arg: str) -> list[Event]:
        missing = self._need_helo()
        if missing:
            return missing
        if self._txn is not None:
            return self._error(503, "5.5.1", "Error: nested MAIL command")
        if self.policy.auth_required and self.auth_user is None:
            if self._must_starttls():
                return self._error(530, "5.7.0", "Must issue a STARTTLS command first")
            return self._error(530, "5.7.0", "Authentication required")
        if arg[:5].upper() != "FROM:":
            return self._error(501, "5.5.4", "Syntax: MAIL FROM:<address>")
        try:
            sender, rest = parse_path(arg[5:])
        except ValueError:
            return self._error(501, "5.1.7", "Bad sender address syntax")
        if sender and not valid_mailbox(sender):
            return self._error(501, "5.1.7", "Bad sender address syntax")
        params = parse_params(rest)
        if isinstance(params, str):
            return self._error(501, "5.5.4", params)
        txn = _Transaction(sender)
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > 20:
                    return self._error(501, "5.5.4", "Bad SIZE parameter")
                txn.declared_size = int(value)
                if txn.declared_size > self.policy.max_message_size:
                    return self._error(552, "5.3.4", "Message size exceeds fixed limit")
            elif key == "BODY":
                body = (value or "").upper()
                if body not in ("7BIT", "8BITMIME"):
                    return self._error(501, "5.5.4", "Bad BODY parameter")
                txn.body = body
            elif key == "SMTPUTF8":
                if value is not None:
                    return self._error(501, "5.5.4", "SMTPUTF8 takes no value")
                txn.smtputf8 = True
            elif key == "AUTH":
                pass  # RFC 4954 section 5: the submitter's identity; we keep our own
            elif key in ("RET", "ENVID"):
                try:
                    if key == "RET":
                        txn.ret = dsn.parse_ret(value)
                    else:
                        txn.envid = dsn.parse_envid(value)
                except ValueError:
                    return self._error(501, "5.5.4", f"Bad {key} parameter")
            else:
                return self._error(555, "5.5.4", f"Unsupported option: {key}")
        if not sender.isascii() and not txn.smtputf8:
            return self._error(553, "5.6.7", "Must declare SMTPUTF8 to send a non-ASCII address")
        if self.policy.check_sender:
            self._pending = "mail"
            self._asked_txn = txn
            return [CheckSender(sender, self.auth_user is not None)]
        self._txn = txn
        return self._reply(250, "2.1.0", "Ok")

    def sender_done(self, reply: Reply) -> list[Event]:
        """The verdict on the MAIL asked about: a 2xx starts the transaction."""
        self._pending = None
        txn, self._asked_txn = self._asked_txn, None
        if reply.ok:
            self._txn = txn
            out = [Send(reply.render())]
        elif reply.code >= 500:
            out = self._error_reply(reply)
        else:
            out = [Send(reply.render())]
        return out + self._run()

    def _cmd_rcpt(self, arg: str) -> list[Event]:
        missing = self._need_helo()
        if missing:
            return missing
        txn = self._txn
        if txn is None:
            return self._error(503, "5.5.1", "Error: need MAIL command")
        if arg[:3].upper() != "TO:":
            return self._error(501, "5.5.4", "Syntax: RCPT TO:<address>")
        txn.rcpt_attempts += 1
        try:
            address, rest = parse_path(arg[3:])
        except ValueError:
            return self._error(501, "5.1.3", "Bad recipient address syntax")
        if address.lower() != "postmaster" and not valid_mailbox(address):
            return self._error(501, "5.1.3", "Bad recipient address syntax")
        params = parse_params(rest)
        if isinstance(params, str):
            return self._error(501, "5.5.4", params)
        notify: tuple[str, ...] | None = None
        orcpt: str | None = None
        for key, value in params.items():
            try:
                if key == "NOTIFY":
                    notify = dsn.parse_notify(value)
                elif key == "ORCPT":
                    orcpt = dsn.parse_orcpt(value)
                else:
                    return self._error(555, "5.5.4", f"Unsupported option: {key}")
            except ValueError:
                return self._error(501, "5.5.4", f"Bad {key} parameter")
        if orcpt is not None and orcpt.startswith("utf-8;") and not txn.smtputf8:
            return self._error(501, "5.5.4", "Bad ORCPT parameter: utf-8 needs SMTPUTF8")
        if not address.isascii() and not txn.smtputf8:
            return self._error(553, "5.6.7", "Must declare SMTPUTF8 to send a non-ASCII address")
        if len(txn.recipients) >= self.policy.max_recipients:
            return self._reply(452, "4.5.3", "Error: too many recipients")
        self._pending = "rcpt"
        self._asked = address
        self._asked_dsn = (notify, orcpt)
        return [CheckRecipient(address, txn.sender, self.auth_user is not None)]

    def recipient_done(self, reply: Reply, target: object = None) -> list[Event]:
        """The verdict on the recipient asked about: `reply` is what the client hears,
        `target` (for a 2xx) comes back in the Envelope's Recipient."""
        self._pending = None
        assert self._txn is not None
        if reply.ok:
            notify, orcpt = self._asked_dsn
            self._txn.recipients.append(Recipient(self._asked, target, notify, orcpt))
            out = [Send(reply.render())]
        elif reply.code >= 500:
            out = self._error_reply(reply)
        else:
            out = [Send(reply.render())]
        return out + self._run()

    def _data_refusal(self) -> Reply | None:
        if self.helo is None:
            return R(503, "5.5.1", "Error: send HELO/EHLO first")
        txn = self._txn
        if txn is None:
            return R(503, "5.5.1", "Error: need MAIL command")
        if not txn.recipients:
            if txn.rcpt_attempts:
                return R(554, "5.5.1", "Error: no valid recipients")
            return R(503, "5.5.1", "Error: need RCPT command")
        return None

    def _cmd_data(self, arg: str) -> list[Event]:
        if arg:
            return self._error(501, "5.5.4", "Syntax: DATA")
        refused = self._data_refusal()
        if refused:
            return self._error_reply(refused)
        assert self._txn is not None
        if self._txn.bdat:
            return self._error(503, "5.5.1", "Error: DATA after BDAT")
        self._reading = "data"
        self._line_start = self._after_crlf = True
        return [Send(b"354 End data with <CR><LF>.<CR><LF>\r\n")]

    def _data_step(self, out: list[Event]) -> bool:
        """Take what can be taken of the message text; False when more input is needed."""
        buf = self._buffer
        if not buf:
            return False
        if self._line_start and self._after_crlf:
            if buf.startswith(b".\r\n"):
                self._buffer = buf[3:]
                out += self._message_end()
                return True
            if buf in (b".", b".\r"):
                return False
        nl = buf.rfind(b"\n")
        if nl < 0:
            if len(buf) < DATA_FLUSH:
                return False
            # A long line: take it in pieces, keeping a final CR so CRLF is never split.
            cut = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
            self._data_content(buf[:cut])
            self._buffer = buf[cut:]
            return True
        block = buf[: nl + 1]
        end = block.find(b"\r\n.\r\n")
        if end >= 0:
            self._data_content(block[: end + 2])
            self._buffer = buf[end + 5 :]
            out += self._message_end()
            return True
        self._data_content(block)
        self._buffer = buf[nl + 1 :]
        return True

    def _data_content(self, block: bytes) -> None:
        """Dot-unstuff (RFC 5321 4.5.2) and keep, up to the size limit."""
        ends_line = block.endswith(b"\n")
        after_crlf = block.endswith(b"\r\n")
        if self._line_start and block.startswith(b"."):
            block = block[1:]
        block = block.replace(b"\n.", b"\n")
        self._line_start, self._after_crlf = ends_line, after_crlf
        self._keep(block)

    def _keep(self, block: bytes) -> None:
        txn = self._txn
        assert txn is not None
        txn.size += len(block)
        if txn.too_big:
            return
        if txn.size > self.policy.max_message_size:
            txn.too_big = True
            txn.parts = []
            return
        txn.parts.append(block)

    def _message_end(self) -> list[Event]:
        txn = self._txn
        assert txn is not None
        self._reading = None
        if txn.too_big:
            self._reset()
            return self._reply(552, "5.3.4", "Message size exceeds fixed limit")
        data = b"".join(txn.parts)
        txn.parts = []
        if data.count(b"\n") != data.count(b"\r\n"):
            data = re.sub(rb"(?<!\r)\n", b"\r\n", data)  # bare LF: taken as a line end, sent on as CRLF
        envelope = Envelope(
            sender=txn.sender,
            recipients=tuple(txn.recipients),
            helo=self.helo or "",
            esmtp=self.esmtp,
            tls=self.policy.tls_active,
            auth_user=self.auth_user,
            body=txn.body,
            smtputf8=txn.smtputf8,
            size=txn.size,
            ret=txn.ret,
            envid=txn.envid,
        )
        self._pending = "deliver"
        return [Deliver(envelope, data)]

    def deliver_done(self, reply: Reply) -> list[Event]:
        """The message is safe (2xx) or was not taken (4xx/5xx); either way the transaction ends."""
        self._reset()
        return self._resume(self._reply(reply.code, reply.status, reply.text))

    # -- CHUNKING (RFC 3030) -----------------------------------------------------------------

    def _cmd_bdat(self, arg: str) -> list[Event]:
        if not self.policy.chunking:
            return self._error(500, "5.5.2", "Error: command not recognized")
        parts = arg.split()
        if (
            not 1 <= len(parts) <= 2
            or not parts[0].isdigit()
            or len(parts[0]) > MAX_BDAT_DIGITS
            or (len(parts) == 2 and parts[1].upper() != "LAST")
        ):
            # The chunk's length is unknown, so what follows cannot be framed: stop here.
            self.closed = True
            return self._reply(501, "5.5.4", "Syntax: BDAT count [LAST]") + [Close()]
        refused = self._data_refusal()
        if refused is None:
            assert self._txn is not None
            self._txn.bdat = True
        # The chunk is read (and dropped when refused) before the reply goes out (RFC 3030 4.2).
        self._bdat = _Bdat(int(parts[0]), len(parts) == 2, refused)
        self._reading = "bdat"
        return []

    def _bdat_step(self, out: list[Event]) -> bool:
        state = self._bdat
        assert state is not None
        if state.remaining:
            if not self._buffer:
                return False
            take = self._buffer[: state.remaining]
            self._buffer = self._buffer[len(take) :]
            state.remaining -= len(take)
            state.received += len(take)
            if state.error is None:
                self._keep(take)
            if state.remaining:
                return False
        self._reading, self._bdat = None, None
        if state.error is not None:
            out += self._error_reply(state.error)
            return True
        txn = self._txn
        assert txn is not None
        if txn.too_big:
            self._reset()
            out += self._reply(552, "5.3.4", "Message size exceeds fixed limit")
            return True
        if state.last:
            out += self._message_end()
            return True
        out += self._reply(250, "2.0.0", f"Ok: {state.received} octets received")
        return True


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None

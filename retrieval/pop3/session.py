"""POP3 (RFC 1939, 2449, 2595, 5034) as a sans-IO state machine.

Bytes go in through `feed()`; what comes out is a list of events: bytes to
send, and requests for slow work (verify a password, open the maildrop,
read a message, commit deletions) that the Twisted adapter carries out off
the reactor and answers through the matching `*_done()` method. While a
request is out, further pipelined commands wait in the buffer, in order.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from retrieval.auth import sasl
from retrieval.events import Authenticate, Close, Send, StartTLS

MAX_COMMAND = 255  # RFC 2449: a command line is at most 255 octets with CRLF
MAX_SASL_LINE = 16 * 1024  # a SASL response may be longer than a command
PLAINTEXT_REFUSED = b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n"


@dataclass(frozen=True)
class Policy:
    hostname: str = "localhost"
    tls_active: bool = False
    tls_available: bool = False
    allow_plaintext: bool = False
    cram_md5: bool = False
    uidl_format: str = "%08Xu%08Xv"
    max_bad_commands: int = 10
    login_delay: int | None = None


# -- events -------------------------------------------------------------------


@dataclass(frozen=True)
class OpenMaildrop:
    user: object  # the UserRecord that authenticated


@dataclass(frozen=True)
class Retrieve:
    number: int
    uid: int


@dataclass(frozen=True)
class Commit:
    """Enter the UPDATE state: delete these, mark those \\Seen."""

    delete: tuple[int, ...]
    seen: tuple[int, ...]


Event = Send | StartTLS | Close | Authenticate | OpenMaildrop | Retrieve | Commit


@dataclass
class Message:
    uid: int
    size: int  # octets with CRLF line ends, before dot-stuffing
    deleted: bool = False


@dataclass
class _Pending:
    kind: str
    data: dict = field(default_factory=dict)


_UIDL_VAR = re.compile(r"%%|%(0?)(\d*)([xX]?)([uvf])")


def format_uidl(template: str, uid: int, uidvalidity: int) -> str:
    """Dovecot's pop3_uidl_format: %u uid, %v uidvalidity; 08X = zero-padded upper hex."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        zero, width, hexa, var = m.groups()
        value = {"u": uid, "v": uidvalidity, "f": uid}[var]
        spec = (zero or "") + (width or "") + (hexa or "d")
        return format(value, spec)

    return _UIDL_VAR.sub(one, template)


def dot_stuff(data: bytes) -> bytes:
    """CRLF message bytes -> multi-line response body, terminator included."""
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    return data + (b".\r\n" if data.endswith(b"\r\n") else b"\r\n.\r\n")


def top_of(data: bytes, lines: int) -> bytes:
    """Header, the blank line, and the first `lines` lines of the body (CRLF bytes)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data
    head, body = data[: end + 4], data[end + 4 :]
    if lines <= 0:
        return head
    parts = body.split(b"\r\n")
    if len(parts) <= lines:
        return head + body
    return head + b"\r\n".join(parts[:lines]) + b"\r\n"


class Pop3Session:
    """One connection's protocol state. States: authorization, transaction, update, closed."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.state = "authorization"
        self.user_name: str | None = None
        self.user: object | None = None
        self.messages: list[Message] = []
        self.uidvalidity = 0
        self.retrieved: set[int] = set()
        self._buffer = b""
        self._discarding = False
        self._pending: _Pending | None = None
        self._sasl: sasl.Mechanism | None = None
        self._bad = 0
        self._had_changes = False

    # -- driving ------------------------------------------------------------

    def greeting(self) -> list[Event]:
        return [Send(b"+OK retrieval ready.\r\n")]

    @property
    def waiting(self) -> bool:
        return self._pending is not None

    def feed(self, data: bytes) -> list[Event]:
        self._buffer += data
        return self._run()

    def _run(self) -> list[Event]:
        out: list[Event] = []
        while self._pending is None and self.state != "closed":
            limit = MAX_SASL_LINE if self._sasl is not None else MAX_COMMAND
            pos = self._buffer.find(b"\n")
            if pos < 0:
                if len(self._buffer) > limit:
                    self._buffer = b""
                    if not self._discarding:
                        self._discarding = True
                        out += self._bad_command(b"-ERR Line too long.\r\n")
                break
            line, self._buffer = self._buffer[:pos], self._buffer[pos + 1 :]
            if self._discarding:
                self._discarding = False
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) + 2 > limit:
                out += self._bad_command(b"-ERR Line too long.\r\n")
                continue
            out += self._line(line)
            if any(isinstance(e, StartTLS) for e in out):
                # RFC 2595 / CVE-2011-0411: nothing sent before the handshake may be
                # taken as sent after it.
                self._buffer = b""
                break
        return out

    def _resume(self, events: list[Event]) -> list[Event]:
        self._pending = None
        return events + self._run()

    def _bad_command(self, reply: bytes) -> list[Event]:
        self._bad += 1
        if self._bad >= self.policy.max_bad_commands:
            self.state = "closed"
            return [Send(reply), Send(b"-ERR Too many invalid commands.\r\n"), Close()]
        return [Send(reply)]

    def _line(self, line: bytes) -> list[Event]:
        if self._sasl is not None:
            return self._sasl_response(line)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._bad_command(b"-ERR Invalid characters in command.\r\n")
        command, _, arg = text.partition(" ")
        command = command.upper()
        handler = getattr(self, f"_cmd_{self.state}_{command.lower()}", None)
        if handler is None:
            handler = getattr(self, f"_cmd_any_{command.lower()}", None)
        if handler is None or not command.isalpha():
            if command and getattr(self, f"_cmd_transaction_{command.lower()}", None) is not None:
                return self._bad_command(b"-ERR Not logged in.\r\n")
            return self._bad_command(b"-ERR Unknown command.\r\n")
        return handler(arg)

    # -- shared -------------------------------------------------------------

    def _plaintext_ok(self) -> bool:
        return self.policy.tls_active or self.policy.allow_plaintext

    def _mechanisms(self) -> list[str]:
        mechs = ["PLAIN", "LOGIN"] if self._plaintext_ok() else []
        if self.policy.cram_md5:
            mechs.append("CRAM-MD5")
        return mechs

    def _cmd_any_capa(self, arg: str) -> list[Event]:
        lines = ["+OK", "CAPA", "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state == "authorization":
            if self._plaintext_ok():
                lines.append("USER")
            mechs = self._mechanisms()
            if mechs:
                lines.append("SASL " + " ".join(mechs))
            if self.policy.tls_available and not self.policy.tls_active:
                lines.append("STLS")
        lines.append("IMPLEMENTATION retrieval")
        lines.append("EXPIRE NEVER")
        if self.policy.login_delay is not None:
            lines.append(f"LOGIN-DELAY {self.policy.login_delay}")
        lines.append(".")
        return [Send(("\r\n".join(lines) + "\r\n").encode())]

    def _cmd_any_quit(self, arg: str) -> list[Event]:
        if self.state == "transaction":
            self.state = "update"
            deleted = tuple(m.uid for m in self.messages if m.deleted)
            seen = tuple(sorted(uid for uid in self.retrieved if uid not in deleted))
            # Always through the adapter, even with nothing to change: the maildrop lock
            # must be gone before the client hears +OK and logs in again.
            self._pending = _Pending("commit")
            self._had_changes = bool(deleted)
            return [Commit(deleted, seen)]
        self.state = "closed"
        return [Send(b"+OK Logging out.\r\n"), Close()]

    # -- authorization ---------------------------------------------------------

    def _cmd_authorization_stls(self, arg: str) -> list[Event]:
        if self.policy.tls_active:
            return self._bad_command(b"-ERR TLS is already active.\r\n")
        if not self.policy.tls_available:
            return self._bad_command(b"-ERR TLS support isn't enabled.\r\n")
        return [Send(b"+OK Begin TLS negotiation now.\r\n"), StartTLS()]

    def tls_started(self) -> None:
        """The handshake finished: forget what was said before (RFC 2595 section 4)."""
        self.policy = Policy(**{**self.policy.__dict__, "tls_active": True})
        self.user_name = None
        self._buffer = b""

    def _cmd_authorization_user(self, arg: str) -> list[Event]:
        if not self._plaintext_ok():
            return self._bad_command(PLAINTEXT_REFUSED)
        if not arg or len(arg) > 200:
            return self._bad_command(b"-ERR No username given.\r\n")
        self.user_name = arg
        return [Send(b"+OK\r\n")]

    def _cmd_authorization_pass(self, arg: str) -> list[Event]:
        if not self._plaintext_ok():
            return self._bad_command(PLAINTEXT_REFUSED)
        if self.user_name is None:
            return self._bad_command(b"-ERR No username given.\r\n")
        credentials = sasl.PasswordCredentials(self.user_name, arg)
        self.user_name = None
        self._pending = _Pending("auth")
        return [Authenticate(credentials)]

    def _cmd_authorization_apop(self, arg: str) -> list[Event]:
        return self._bad_command(b"-ERR APOP is not offered.\r\n")

    def _cmd_authorization_auth(self, arg: str) -> list[Event]:
        if not arg:
            mechs = "".join(m + "\r\n" for m in self._mechanisms())
            return [Send(("+OK\r\n" + mechs + ".\r\n").encode())]
        name, _, initial = arg.partition(" ")
        name = name.upper()
        if name in ("PLAIN", "LOGIN") and not self._plaintext_ok():
            return self._bad_command(PLAINTEXT_REFUSED)
        if name not in self._mechanisms():
            return self._bad_command(b"-ERR Unsupported authentication mechanism.\r\n")
        mech = sasl.make(name, self.policy.hostname)
        assert mech is not None
        if initial:
            decoded = b"" if initial == "=" else _b64decode(initial)
            if decoded is None:
                return self._bad_command(b"-ERR Invalid base64 data in initial response.\r\n")
            step = mech.start(decoded)
        else:
            step = mech.start(None)
        return self._sasl_step(mech, step)

    def _sasl_step(self, mech: sasl.Mechanism, step: sasl.Step) -> list[Event]:
        if isinstance(step, sasl.Challenge):
            self._sasl = mech
            return [Send(b"+ " + base64.b64encode(step.data) + b"\r\n")]
        self._sasl = None
        if isinstance(step, sasl.Failure):
            return self._auth_failed()
        self._pending = _Pending("auth")
        return [Authenticate(step)]

    def _sasl_response(self, line: bytes) -> list[Event]:
        mech, self._sasl = self._sasl, None
        assert mech is not None
        if line.strip() == b"*":
            return self._bad_command(b"-ERR Authentication aborted by client.\r\n")
        decoded = _b64decode(line.decode("ascii", "replace"))
        if decoded is None:
            return self._bad_command(b"-ERR Invalid base64 data in continued response.\r\n")
        return self._sasl_step(mech, mech.step(decoded))

    def _auth_failed(self) -> list[Event]:
        return self._bad_command(b"-ERR [AUTH] Authentication failed.\r\n")

    def auth_done(self, user: object | None, name: str | None = None) -> list[Event]:
        """The verification finished: `user` is the record, or None for any failure."""
        if user is None:
            return self._resume(self._auth_failed())
        self.user = user
        self._pending = _Pending("open")
        return [OpenMaildrop(user)]

    def open_done(self, uidvalidity: int, messages: list[tuple[int, int]]) -> list[Event]:
        self.uidvalidity = uidvalidity
        self.messages = [Message(uid, size) for uid, size in messages]
        self.state = "transaction"
        return self._resume([Send(b"+OK Logged in.\r\n")])

    def open_failed(self, code: str, text: str) -> list[Event]:
        """`code` is a RFC 2449/3206 response code: IN-USE, SYS/TEMP, LOGIN-DELAY, SYS/PERM."""
        self.user = None
        return self._resume([Send(f"-ERR [{code}] {text}\r\n".encode())])

    # -- transaction -------------------------------------------------------------

    def _message(self, arg: str, allow_deleted: bool = False) -> tuple[int, Message] | bytes:
        text = arg.strip()
        if not text.isdigit() or len(text) > 10:
            return b"-ERR Invalid message number: " + text.encode()[:40] + b"\r\n"
        number = int(text)
        if number < 1 or number > len(self.messages):
            return b"-ERR There's no message %d.\r\n" % number
        message = self.messages[number - 1]
        if message.deleted and not allow_deleted:
            return b"-ERR Message is deleted.\r\n"
        return number, message

    def _cmd_transaction_stat(self, arg: str) -> list[Event]:
        live = [m for m in self.messages if not m.deleted]
        return [Send(b"+OK %d %d\r\n" % (len(live), sum(m.size for m in live)))]

    def _cmd_transaction_list(self, arg: str) -> list[Event]:
        if arg:
            found = self._message(arg)
            if isinstance(found, bytes):
                return self._bad_command(found)
            number, message = found
            return [Send(b"+OK %d %d\r\n" % (number, message.size))]
        live = [(n, m) for n, m in enumerate(self.messages, 1) if not m.deleted]
        body = b"".join(b"%d %d\r\n" % (n, m.size) for n, m in live)
        return [Send(b"+OK %d messages:\r\n" % len(live) + body + b".\r\n")]

    def _cmd_transaction_uidl(self, arg: str) -> list[Event]:
        fmt = self.policy.uidl_format
        if arg:
            found = self._message(arg)
            if isinstance(found, bytes):
                return self._bad_command(found)
            number, message = found
            return [Send(f"+OK {number} {format_uidl(fmt, message.uid, self.uidvalidity)}\r\n".encode())]
        body = "".join(
            f"{n} {format_uidl(fmt, m.uid, self.uidvalidity)}\r\n" for n, m in enumerate(self.messages, 1) if not m.deleted
        )
        return [Send(("+OK\r\n" + body + ".\r\n").encode())]

    def _cmd_transaction_retr(self, arg: str) -> list[Event]:
        found = self._message(arg)
        if isinstance(found, bytes):
            return self._bad_command(found)
        number, message = found
        self._pending = _Pending("read", {"top": None, "message": message})
        return [Retrieve(number, message.uid)]

    def _cmd_transaction_top(self, arg: str) -> list[Event]:
        parts = arg.split()
        if len(parts) != 2 or not parts[1].isdigit():
            return self._bad_command(b"-ERR Usage: TOP msg lines\r\n")
        found = self._message(parts[0])
        if isinstance(found, bytes):
            return self._bad_command(found)
        number, message = found
        self._pending = _Pending("read", {"top": int(parts[1]), "message": message})
        return [Retrieve(number, message.uid)]

    def retrieve_done(self, data: bytes) -> list[Event]:
        """The message's CRLF bytes (as counted in LIST)."""
        assert self._pending is not None and self._pending.kind == "read"
        top = self._pending.data["top"]
        message: Message = self._pending.data["message"]
        if top is None:
            self.retrieved.add(message.uid)
            head = b"+OK %d octets\r\n" % len(data)
            return self._resume([Send(head + dot_stuff(data))])
        return self._resume([Send(b"+OK\r\n" + dot_stuff(top_of(data, top)))])

    def retrieve_failed(self, text: str) -> list[Event]:
        return self._resume([Send(f"-ERR [SYS/TEMP] {text}\r\n".encode())])

    def _cmd_transaction_dele(self, arg: str) -> list[Event]:
        found = self._message(arg)
        if isinstance(found, bytes):
            return self._bad_command(found)
        found[1].deleted = True
        return [Send(b"+OK Marked to be deleted.\r\n")]

    def _cmd_transaction_rset(self, arg: str) -> list[Event]:
        for message in self.messages:
            message.deleted = False
        return [Send(b"+OK\r\n")]

    def _cmd_transaction_noop(self, arg: str) -> list[Event]:
        return [Send(b"+OK\r\n")]

    def commit_done(self, ok: bool, text: str = "") -> list[Event]:
        self._pending = None
        self.state = "closed"
        if ok:
            done = b"+OK Logging out, messages deleted.\r\n" if self._had_changes else b"+OK Logging out.\r\n"
            return [Send(done), Close()]
        return [Send(f"-ERR [SYS/TEMP] Could not delete messages: {text}\r\n".encode()), Close()]


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None

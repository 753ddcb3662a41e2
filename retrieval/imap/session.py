"""IMAP4rev1 session: the state machine between the parser and the store.

The session never touches a socket. The adapter feeds it bytes and gets
events back: bytes to send, and `Job`s. A Job is a plain function that runs
one command against the store; the adapter runs it in a thread (the store
reads files and fsyncs) and then asks for the next events. One job runs at a
time per session, so the selected-mailbox state below is only ever touched by
one thread at a time. Tests run jobs inline, without Twisted.
"""

from __future__ import annotations

import base64
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from retrieval.auth import sasl
from retrieval.events import Authenticate, Close, Send, StartTLS
from retrieval.imap import ast
from retrieval.imap.parser import CommandReader
from retrieval.imap.selected import Selected
from retrieval.imap.wire import quoted
from retrieval.store import StoreError

# -- events ------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """Run `run()` off the reactor; it returns more events (usually Sends)."""

    run: Callable[[], list]


@dataclass(frozen=True)
class IdleStart:
    """Wake this session (session.idle_wakeup()) when these paths change."""

    paths: tuple


@dataclass(frozen=True)
class IdleStop:
    pass


Event = Send | Close | StartTLS | Job | Authenticate | IdleStart | IdleStop


@dataclass(frozen=True)
class Policy:
    hostname: str = "localhost"
    tls_active: bool = False
    tls_available: bool = False
    allow_plaintext: bool = False
    cram_md5: bool = False
    max_bad_commands: int = 20
    limits: ast.Limits = field(default_factory=ast.Limits)
    special_use: tuple[tuple[str, str], ...] = ()


CAPS_COMMON = ["IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE"]
CAPS_AUTHENTICATED = [
    "NAMESPACE",
    "UIDPLUS",
    "MOVE",
    "UNSELECT",
    "CHILDREN",
    "SPECIAL-USE",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "BINARY",
    "ESEARCH",
    "SEARCHRES",
    "CONDSTORE",
    "QRESYNC",
    "STATUS=SIZE",
    "SAVEDATE",
    "WITHIN",
    "MULTIAPPEND",
]
ENABLEABLE = ("CONDSTORE", "QRESYNC", "UTF8=ACCEPT")


class ImapSession:
    def __init__(self, policy: Policy, open_store: Callable[[object], object]) -> None:
        self.policy = policy
        self.open_store = open_store  # record -> Store (runs inside a Job)
        self.reader = CommandReader(policy.limits)
        self.state = "not-authenticated"
        self.user: object | None = None
        self.store = None
        self.selected: Selected | None = None
        self.enabled: set[str] = set()
        self.queue: deque = deque()
        self.busy = False
        self.closed = False
        self.bad_count = 0
        self._sasl: tuple[str, sasl.Mechanism] | None = None  # (tag, mechanism) while exchanging
        self._idle_tag: str | None = None
        self._login_tag: str | None = None
        self._wakeup_pending = False

    # ==== driving (reactor thread) =========================================

    def greeting(self) -> list[Event]:
        return [Send(b"* OK [CAPABILITY " + self.capability().encode() + b"] retrieval ready.\r\n")]

    def feed(self, data: bytes) -> list[Event]:
        if self.closed:
            return []
        return self._accept(self.reader.feed(data))

    def _accept(self, parsed: list) -> list[Event]:
        out: list[Event] = []
        for item in parsed:
            if isinstance(item, ast.Continuation):
                out.append(Send(b"+ " + item.text.encode() + b"\r\n"))
            else:
                self.queue.append(item)
        return out + self._pump()

    def _pump(self) -> list[Event]:
        out: list[Event] = []
        while not self.busy and self.queue and not self.closed:
            item = self.queue.popleft()
            out += self._dispatch(item)
        return out

    def job_done(self) -> list[Event]:
        """The adapter finished a Job (and handled its events): go on with the queue."""
        self.busy = False
        if self._wakeup_pending and not self.queue:
            self._wakeup_pending = False
            return self.idle_wakeup()
        return self._pump()

    def _job(self, run: Callable[[], list]) -> list[Event]:
        self.busy = True
        return [Job(run)]

    # ==== dispatch ===========================================================

    def _dispatch(self, item) -> list[Event]:  # type: ignore[no-untyped-def]
        if isinstance(item, ast.RawLine):
            return self._raw_line(item.data)
        if isinstance(item, ast.ParseError):
            if self._idle_tag is not None or self._sasl is not None:
                return self._raw_line(b"\x00")  # a raw line too long: ends IDLE / the exchange
            return self._bad(item.tag, item.text, item.code)
        cmd: ast.Command = item
        handler = getattr(self, f"_cmd_{cmd.name.lower()}", None)
        if handler is None:
            return self._bad(cmd.tag, "Unknown command.")
        allowed = _STATES.get(cmd.name, ("authenticated", "selected"))
        if self.state not in allowed:
            if self.state == "not-authenticated":
                return self._bad(cmd.tag, "Not logged in.", count=False)
            if cmd.name in _SELECTED_ONLY:
                return self._bad(cmd.tag, "No mailbox selected.", count=False)
            return self._bad(cmd.tag, "Already logged in.", count=False)
        return handler(cmd)

    def _bad(self, tag: str, text: str, code: str | None = None, count: bool = True) -> list[Event]:
        if code == "TOOBIG":
            return [Send(f"{tag} NO [TOOBIG] {text}\r\n".encode())]
        if code == "BADCHARSET":
            return [Send(f"{tag} NO [BADCHARSET (US-ASCII UTF-8 ISO-8859-1)] {text}\r\n".encode())]
        out: list[Event] = [Send(f"{tag} BAD {text}\r\n".encode())]
        if count:
            self.bad_count += 1
            if self.bad_count >= self.policy.max_bad_commands:
                self.closed = True
                out += [Send(b"* BYE Too many invalid IMAP commands.\r\n"), Close()]
        return out

    # ==== any state ================================================================

    def capability(self) -> str:
        caps = list(CAPS_COMMON)
        if self.state == "not-authenticated":
            if self.policy.tls_available and not self.policy.tls_active:
                caps.append("STARTTLS")
            if self._plaintext_ok():
                caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
            else:
                caps.append("LOGINDISABLED")
            if self.policy.cram_md5:
                caps.append("AUTH=CRAM-MD5")
        else:
            caps += CAPS_AUTHENTICATED
        return " ".join(caps)

    def _cmd_capability(self, cmd: ast.Command) -> list[Event]:
        return [Send(f"* CAPABILITY {self.capability()}\r\n{cmd.tag} OK Capability completed.\r\n".encode())]

    def _cmd_noop(self, cmd: ast.Command) -> list[Event]:
        return self._with_updates(cmd, lambda: [], "NOOP completed.")

    def _cmd_check(self, cmd: ast.Command) -> list[Event]:
        def run() -> list[bytes]:
            assert self.selected is not None
            self.selected.box_flush()
            return []

        return self._with_updates(cmd, run, "Check completed.")

    def _cmd_logout(self, cmd: ast.Command) -> list[Event]:
        self.closed = True
        out: list[Event] = [Send(f"* BYE Logging out\r\n{cmd.tag} OK Logout completed.\r\n".encode())]
        return out + [Close()]

    def _cmd_id(self, cmd: ast.Command) -> list[Event]:
        return [Send(f'* ID ("name" "retrieval")\r\n{cmd.tag} OK ID completed.\r\n'.encode())]

    def _cmd_enable(self, cmd: ast.Command) -> list[Event]:
        newly = []
        for cap in cmd.args[0]:
            cap = cap.upper()
            if cap in ENABLEABLE and cap not in self.enabled:
                self.enabled.add(cap)
                newly.append(cap)
                if cap == "QRESYNC":
                    self.enabled.add("CONDSTORE")
        extra = b""
        if self.selected is not None and "CONDSTORE" in self.enabled:
            extra = self.selected.enable_condstore()
            self.selected.qresync = "QRESYNC" in self.enabled
        line = ("* ENABLED " + " ".join(newly)).rstrip() + "\r\n"
        return [Send(line.encode() + extra + f"{cmd.tag} OK Enabled.\r\n".encode())]

    # ==== not authenticated ============================================================

    def _plaintext_ok(self) -> bool:
        return self.policy.tls_active or self.policy.allow_plaintext

    def _cmd_starttls(self, cmd: ast.Command) -> list[Event]:
        if self.policy.tls_active or not self.policy.tls_available:
            text = "TLS is already active." if self.policy.tls_active else "TLS support isn't enabled."
            return self._bad(cmd.tag, text) + self._accept(self.reader.resume())
        self.reader.clear()
        self.queue.clear()  # RFC 3501 6.2.1 / CVE-2011-0411: nothing pipelined survives
        return [Send(f"{cmd.tag} OK Begin TLS negotiation now.\r\n".encode()), StartTLS()]

    def tls_started(self) -> list[Event]:
        import dataclasses

        self.policy = dataclasses.replace(self.policy, tls_active=True)
        self.reader.clear()
        return self._accept(self.reader.resume())

    def _cmd_login(self, cmd: ast.Command) -> list[Event]:
        if not self._plaintext_ok():
            return [Send(f"{cmd.tag} NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n".encode())]
        user, password = cmd.args
        self._login_tag = cmd.tag
        self.busy = True
        return [Authenticate(sasl.PasswordCredentials(user, password))]

    def _cmd_authenticate(self, cmd: ast.Command) -> list[Event]:
        name, initial = cmd.args
        name = name.upper()
        if name in ("PLAIN", "LOGIN") and not self._plaintext_ok():
            out = [Send(f"{cmd.tag} NO [PRIVACYREQUIRED] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.\r\n".encode())]
            return out + self._accept(self.reader.resume())
        if name not in ("PLAIN", "LOGIN") and not (name == "CRAM-MD5" and self.policy.cram_md5):
            return [Send(f"{cmd.tag} NO Unsupported authentication mechanism.\r\n".encode())] + self._accept(self.reader.resume())
        mech = sasl.make(name, self.policy.hostname)
        assert mech is not None
        return self._sasl_step(cmd.tag, mech, mech.start(initial))

    def _sasl_step(self, tag: str, mech: sasl.Mechanism, step: sasl.Step) -> list[Event]:
        """The reader is paused (AUTHENTICATE) or raw: decide how it goes on."""
        if isinstance(step, sasl.Challenge):
            self._sasl = (tag, mech)
            # Not busy: the reader is paused in raw mode, so the client's response is the
            # next (and only) item queued, and _pump must dispatch it to _raw_line.
            self.busy = False
            out: list[Event] = [Send(b"+ " + base64.b64encode(step.data) + b"\r\n")]
            return out + self._accept(self.reader.resume(raw=True))
        self._sasl = None
        if isinstance(step, sasl.Failure):
            self.busy = False
            out = [Send(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n".encode())]
            return out + self._accept(self.reader.resume())
        self._login_tag = tag
        self.busy = True  # pipelined commands wait for the verdict
        return [Authenticate(step)] + self._accept(self.reader.resume())

    def _raw_line(self, data: bytes) -> list[Event]:
        if self._idle_tag is not None:
            return self._idle_line(data)
        if self._sasl is not None:
            tag, mech = self._sasl
            self._sasl = None
            self.busy = False
            if data.strip() == b"*":
                out: list[Event] = [Send(f"{tag} BAD Authentication aborted by client.\r\n".encode())]
                return out + self._accept(self.reader.resume())
            try:
                decoded = base64.b64decode(data.strip(), validate=True)
            except ValueError:
                out = [Send(f"{tag} BAD Invalid base64 data in continued response.\r\n".encode())]
                return out + self._accept(self.reader.resume())
            return self._sasl_step(tag, mech, mech.step(decoded))
        return []

    def auth_done(self, record: object | None) -> list[Event]:
        """The adapter verified credentials (after the failure delay if they were wrong)."""
        tag = self._login_tag or "*"
        self._login_tag = None
        if record is None:
            self.busy = False
            out: list[Event] = [Send(f"{tag} NO [AUTHENTICATIONFAILED] Authentication failed.\r\n".encode())]
            return out + self._pump()

        def run() -> list:
            try:
                self.store = self.open_store(record)
            except StoreError as exc:
                return [Send(f"{tag} NO [UNAVAILABLE] {exc}\r\n".encode())]
            except OSError as exc:
                import sys
                import traceback

                traceback.print_exc(file=sys.stderr)  # the server log; the client gets no path
                return [Send(f"{tag} NO [UNAVAILABLE] Cannot open your mail store ({exc.strerror}); try again later.\r\n".encode())]
            self.user = record
            self.state = "authenticated"
            from retrieval.imap.mailboxes import ensure_special_folders

            ensure_special_folders(self)
            return [Send(f"{tag} OK [CAPABILITY {self.capability()}] Logged in\r\n".encode())]

        return [Job(run)]

    # ==== selected-state helpers ===========================================================

    def _with_updates(self, cmd: ast.Command, run: Callable[[], list[bytes]], text: str,
                      allow_expunge: bool = True, code: str = "") -> list[Event]:
        """Run `run` in a job, then the untagged updates the client is owed, then OK."""

        def job() -> list:
            try:
                lines = run()
            except StoreError as exc:
                return [Send(f"{cmd.tag} NO {exc}\r\n".encode())]
            if isinstance(lines, tuple):  # (lines, tagged-reply override)
                lines, tagged = lines
            else:
                tagged = None
            data = b"".join(lines)
            if self.selected is not None:
                data += self.selected.updates(allow_expunge)
            if tagged is None:
                prefix = f"[{code}] " if code else ""
                tagged = f"{cmd.tag} OK {prefix}{text}\r\n".encode()
            return [Send(data + tagged)]

        return self._job(job)

    # ==== IDLE ==================================================================================

    def _cmd_idle(self, cmd: ast.Command) -> list[Event]:
        self._idle_tag = cmd.tag
        self.busy = True

        def start() -> list:
            data = self.selected.updates(True) if self.selected is not None else b""
            paths = tuple(self.selected.watch_paths()) if self.selected is not None else ()
            return [Send(data + b"+ idling\r\n"), IdleStart(paths)]

        return [Job(start)] + self._accept(self.reader.resume(raw=True))

    def idle_wakeup(self) -> list[Event]:
        """Something changed on disk (inotify) while idling: send what the client is owed."""
        if self._idle_tag is None or self.selected is None:
            return []
        if self.busy:
            self._wakeup_pending = True
            return []
        selected = self.selected
        return self._job(lambda: [Send(selected.updates(True))])

    def _idle_line(self, data: bytes) -> list[Event]:
        tag, self._idle_tag = self._idle_tag, None
        if data.strip().upper() != b"DONE":
            out: list[Event] = [IdleStop(), Send(f"{tag} BAD Expected DONE.\r\n".encode())]
            self.busy = False
            return out + self._accept(self.reader.resume())
        self.busy = False
        out = [IdleStop()]
        out += self._with_updates(ast.Command(tag or "*", "IDLE"), lambda: [], "Idle completed.")
        return out + self._accept(self.reader.resume())

    # ==== commands that live elsewhere ===========================================================

    def _cmd_namespace(self, cmd: ast.Command) -> list[Event]:
        sep = self.store.separator if self.store is not None else "."
        return [Send(f'* NAMESPACE (("" {quoted(sep).decode()})) NIL NIL\r\n{cmd.tag} OK Namespace completed.\r\n'.encode())]

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        # _cmd_select, _cmd_fetch, ... are in mailboxes.py and messages.py
        if name.startswith("_cmd_"):
            from retrieval.imap import mailboxes, messages

            for module in (mailboxes, messages):
                fn = getattr(module, name[1:], None)
                if fn is not None:
                    return lambda cmd: fn(self, cmd)
        raise AttributeError(name)

    def connection_lost(self) -> Callable[[], None]:
        """What to run (in a thread) to release the store when the client goes away."""
        selected, store = self.selected, self.store
        self.selected = None
        self.store = None
        self.closed = True

        def cleanup() -> None:
            try:
                if selected is not None:
                    selected.close()
            finally:
                if store is not None:
                    store.close()

        return cleanup


_ANY = ("not-authenticated", "authenticated", "selected")
_STATES = {
    "CAPABILITY": _ANY,
    "NOOP": _ANY,
    "LOGOUT": _ANY,
    "ID": _ANY,
    "STARTTLS": ("not-authenticated",),
    "LOGIN": ("not-authenticated",),
    "AUTHENTICATE": ("not-authenticated",),
    "CHECK": ("selected",),
    "CLOSE": ("selected",),
    "UNSELECT": ("selected",),
    "EXPUNGE": ("selected",),
    "SEARCH": ("selected",),
    "FETCH": ("selected",),
    "STORE": ("selected",),
    "COPY": ("selected",),
    "MOVE": ("selected",),
}
_SELECTED_ONLY = {k for k, v in _STATES.items() if v == ("selected",)}

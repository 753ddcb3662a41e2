"""One log line per session event, the same shape for IMAP, POP3 and SMTP.

    proto=imap session=Xk3J9qLw event=auth-failed rip=203.0.113.9 lip=192.0.2.1 lport=993 user=alice method=password tls=TLSv1.3

Why this shape: the fixed fields come first and in a fixed order (proto, session,
event, rip), and every value is percent-encoded down to a safe alphabet, so a
client-chosen user name can contain no space, no "=" and no quote: it cannot forge
a `rip=` that fail2ban would believe (docs/fail2ban.md has the filter). Passwords
and SASL blobs are never given to this module.

Output: stderr, one line per event. Under journald ($JOURNAL_STREAM names our
stderr) the line carries a `<N>` syslog priority instead of a timestamp; elsewhere
it starts with an ISO 8601 timestamp (which fail2ban's date detection reads).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
import time
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, Logger, eventAsText, formatTime
from zope.interface import provider

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@._+-:/[]<>,")
MAX_VALUE = 128  # characters of a client-chosen value kept in the log


def clean(value: object) -> str:
    """A value safe to put after `key=`: no space, no "=", no control characters.

    Anything outside a small alphabet becomes %XX (UTF-8 bytes), "%" included,
    so the encoding can be undone; long values are cut and end in "...". Empty: "-"."""
    text = str(value)
    cut = len(text) > MAX_VALUE
    text = text[:MAX_VALUE]
    out = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8", "replace")) for c in text)
    return (out + "..." if cut else out) or "-"


def ip_text(host: object) -> str:
    """The client's address as fail2ban wants it: IPv4-mapped IPv6 shown as IPv4."""
    if not isinstance(host, str) or not host:
        return "-"
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return clean(host)
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def new_session_id() -> str:
    """8 characters, 48 random bits: unique enough per connection, short enough to grep."""
    return secrets.token_urlsafe(6)


def format_line(proto: str, session: str, event: str, rip: str, **fields: Any) -> str:
    """`proto=.. session=.. event=.. rip=..` then the other fields in the given order;
    fields whose value is None are left out."""
    head = f"proto={clean(proto)} session={clean(session)} event={clean(event)} rip={clean(rip)}"
    rest = " ".join(f"{key}={clean(value)}" for key, value in fields.items() if value is not None)
    return f"{head} {rest}" if rest else head


def credentials_method(credentials: object) -> str:
    """How the client proved who it is, never what it sent."""
    name = type(credentials).__name__
    return {"PasswordCredentials": "password", "CramCredentials": "cram-md5"}.get(name, "other")


def tls_version(transport: object) -> str | None:
    """"TLSv1.3" once a TLS handshake is done on `transport`, else None."""
    try:
        handle = transport.getHandle()  # type: ignore[attr-defined]
        version = handle.get_protocol_version_name()
    except Exception:  # not a TLS connection (plain TCP socket has no such method)
        return None
    return version if version and version != "Unknown" else None


class SessionLog:
    """The log of one connection: the id and addresses every line of it repeats,
    and the counters its last line reports."""

    def __init__(self, proto: str, logger: Logger, transport: object, count_bytes: bool = True) -> None:
        self.proto = proto
        self.logger = logger
        self.transport = transport
        self.session = new_session_id()
        peer = _address(transport, "getPeer")
        host = _address(transport, "getHost")
        self.rip = ip_text(getattr(peer, "host", None))
        self.lip = ip_text(getattr(host, "host", None))
        self.lport = getattr(host, "port", None)
        self.user: str | None = None
        self.started = time.monotonic()
        self.bytes_in: int | None = 0 if count_bytes else None  # the adapter adds to these
        self.bytes_out: int | None = 0 if count_bytes else None
        self.reason: str | None = None  # why we closed, when it was us ("closed", "idle-timeout")

    def line(self, event: str, **fields: Any) -> str:
        return format_line(self.proto, self.session, event, self.rip, **fields)

    def emit(self, event: str, level: LogLevel = LogLevel.info, **fields: Any) -> None:
        self.logger.emit(level, "{log_line}", log_line=self.line(event, **fields))

    # -- the events ---------------------------------------------------------------

    def connect(self, implicit_tls: bool) -> None:
        self.emit("connect", lip=self.lip, lport=self.lport, tls="implicit" if implicit_tls else "no")

    def starttls(self) -> None:
        self.emit("starttls")

    def login(self, user: str, credentials: object) -> None:
        self.user = user
        self.emit("login", lip=self.lip, lport=self.lport, user=user, method=credentials_method(credentials),
                  tls=tls_version(self.transport) or "no")

    def auth_failed(self, credentials: object) -> None:
        """The name the client tried (cleaned); never the password or the SASL exchange."""
        self.emit("auth-failed", lip=self.lip, lport=self.lport, user=getattr(credentials, "authcid", None),
                  method=credentials_method(credentials), tls=tls_version(self.transport) or "no")

    def refused(self, user: str, why: str) -> None:
        """Right password, but no session (e.g. too many connections from that user and IP)."""
        self.emit("login-refused", user=user, reason=why)

    def message(self, queue_id: str, sender: str, recipients: list[str], size: int, code: int) -> None:
        """SMTP: one line per message taken (or refused at the end of DATA); `code` is the reply's."""
        self.emit("message", id=queue_id, user=self.user, **{"from": f"<{sender}>"},
                  to=",".join(f"<{r}>" for r in recipients), size=size, result=code)

    def disconnect(self, reason: object = None, **counts: Any) -> None:
        """The last line: who, why, how long, how much."""
        from twisted.internet.error import ConnectionDone

        why = self.reason
        if why is None:  # the client went: cleanly, or not (a reset, or TLS cut without close_notify)
            clean_close = reason is None or bool(getattr(reason, "check", lambda *_: False)(ConnectionDone))
            why = "client-closed" if clean_close else "lost"
        self.emit("disconnect", user=self.user, reason=why, duration=f"{time.monotonic() - self.started:.3f}",
                  bytes_in=self.bytes_in, bytes_out=self.bytes_out, **counts)


def _address(transport: object, method: str) -> object:
    try:
        return getattr(transport, method)()
    except Exception:  # a transport without addresses (tests' StringTransport, stdio)
        return None


# -- the observer --------------------------------------------------------------------

_PRIORITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3, LogLevel.critical: 2}


def under_journald(stream: IO[str]) -> bool:
    """systemd sets JOURNAL_STREAM=dev:inode for the stream it connected to journald;
    it is ours only if our stderr is that very stream (a child may have redirected it)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, inode = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return bool(value) and (st.st_dev, st.st_ino) == (int(dev), int(inode))
    except (OSError, ValueError, AttributeError):
        return False


def _fast_text(event: dict, stamp) -> str | None:  # type: ignore[no-untyped-def]
    """eventAsText's line for the common event (a plain `{name}` format, no traceback), through
    str.format_map instead of Twisted's formatter (a few lines per message on a busy relay);
    None when the event needs the full treatment (call syntax `{f()}`, a failure, a missing key)."""
    fmt = event.get("log_format")
    if type(fmt) is not str or "()" in fmt or "log_failure" in event or "log_system" in event \
            or "log_flattened" in event:
        return None
    try:
        text = fmt.format_map(event)
    except Exception:
        return None  # eventAsText says it could not format it
    if not text:
        return ""
    level = event.get("log_level")
    return f"{stamp(event.get('log_time'))} [{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}] {text}"


def observer(stream: IO[str] | None = None, journald: bool | None = None) -> ILogObserver:
    """One line per event on `stream` (stderr): `<6>text` for journald, else `timestamp [namespace#level] text`.

    A traceback follows its event's line (journald makes each of its lines an entry)."""
    out = stream if stream is not None else sys.stderr
    journal = under_journald(out) if journald is None else journald
    stamp_cache: list = [None, ""]  # (second, its text): a busy server logs many lines per second

    def stamp(when: float | None) -> str:
        if when is None:
            return formatTime(when)
        second = int(when)
        if stamp_cache[0] != second:
            stamp_cache[0], stamp_cache[1] = second, formatTime(second)
        return stamp_cache[1]

    @provider(ILogObserver)
    def observe(event: dict) -> None:
        if journal:
            text = eventAsText(event, includeTimestamp=False, includeSystem=False)
            level = event.get("log_level", LogLevel.info)
            text = "\n".join(f"<{_PRIORITY.get(level, 6)}>{line}" for line in text.splitlines())
        else:
            text = _fast_text(event, stamp)
            if text is None:
                text = eventAsText(event, includeTimestamp=True, includeSystem=True, formatTime=stamp)
        if not text:
            return
        try:
            out.write(text + "\n")
            out.flush()
        except (OSError, ValueError):
            pass  # stderr gone (closed terminal): nothing better to do

    return observe


def start_logging(stream: IO[str] | None = None) -> None:
    """Send every Twisted log event through `observer` (what `retrieval serve` and `inetd` call)."""
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([observer(stream)], redirectStandardIO=False)


__all__ = ["SessionLog", "clean", "format_line", "ip_text", "new_session_id", "observer", "start_logging"]

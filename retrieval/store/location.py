"""Dovecot's `mail_location` syntax, so that admins can paste theirs.

    maildir:~/Maildir
    maildir:~/Maildir:INDEX=/var/lib/retrieval/index/%u
    mbox:~/mail:INBOX=/var/mail/%u

`~` is the user's home, `%u` the full user name, `%n` its local part, `%d` its
domain, `%h` the home.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FORMATS = ("maildir", "mbox")
KNOWN_KEYS = ("INBOX", "INDEX", "CONTROL", "LAYOUT")


@dataclass(frozen=True)
class MailLocation:
    """A parsed, not yet user-expanded location."""

    format: str
    root: str
    options: tuple[tuple[str, str], ...] = ()

    def option(self, key: str) -> str | None:
        return dict(self.options).get(key)


@dataclass(frozen=True)
class UserLocation:
    """A location expanded for one user: real paths."""

    format: str
    root: Path
    inbox: Path | None  # mbox only: the INBOX file, usually /var/mail/USER
    index_dir: Path | None  # explicit INDEX=, else None (the store picks state_dir)


def parse_mail_location(text: str) -> MailLocation:
    """Parse; raise ValueError saying what is wrong."""
    fmt, sep, rest = text.partition(":")
    if not sep:
        raise ValueError(f"{text!r} has no format prefix")
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown mailbox format {fmt!r} (supported: {', '.join(FORMATS)})")
    parts = rest.split(":")
    root = parts[0]
    if not root:
        raise ValueError("the location has no root path")
    options: list[tuple[str, str]] = []
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        key = key.upper()
        if not eq or key not in KNOWN_KEYS:
            raise ValueError(f"unknown option {part!r} (supported: {', '.join(k + '=' for k in KNOWN_KEYS)})")
        if key == "LAYOUT" and value.lower() not in ("maildir++", "fs"):
            raise ValueError("LAYOUT must be maildir++ or fs")
        options.append((key, value))
    if fmt == "maildir" and dict(options).get("INBOX"):
        raise ValueError("INBOX= is only for mbox locations")
    return MailLocation(fmt, root, tuple(options))


def expand(template: str, user: str, home: str) -> str:
    """Expand ~ and %-variables for one user."""
    local, _, domain = user.partition("@")
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch == "%" and i + 1 < len(template):
            var = template[i + 1]
            out.append({"u": user, "n": local, "d": domain, "h": home, "%": "%"}.get(var, "%" + var))
            i += 2
            continue
        out.append(ch)
        i += 1
    text = "".join(out)
    if text == "~" or text.startswith("~/"):
        if not home:
            raise ValueError(f"{template!r} uses ~ but user {user!r} has no home directory")
        text = home.rstrip("/") + text[1:]
    return text


def for_user(location: MailLocation, user: str, home: str) -> UserLocation:
    root = Path(expand(location.root, user, home))
    inbox = location.option("INBOX")
    index = location.option("INDEX")
    return UserLocation(
        format=location.format,
        root=root,
        inbox=Path(expand(inbox, user, home)) if inbox else None,
        index_dir=Path(expand(index, user, home)) if index else None,
    )

"""Mailbox names: what clients may ask for, and nothing that escapes the user's mail root."""

from __future__ import annotations

from retrieval.store.errors import BadMailboxName

MAX_NAME = 255 * 4


def normalize(name: str, separator: str) -> str:
    """INBOX is case-insensitive (RFC 3501 5.1); everything else is kept as given."""
    head, sep, rest = name.partition(separator)
    if head.upper() == "INBOX":
        return "INBOX" + sep + rest
    return name


def validate(name: str, separator: str) -> str:
    """Return the normalized name or raise BadMailboxName saying why.

    Refuses what could reach outside the mail root on any backend: NUL and
    control characters, `/` and `\\` where they are not the separator, `..`,
    a leading `~` or `.`, and empty hierarchy levels.
    """
    if not name:
        raise BadMailboxName("empty mailbox name")
    if len(name) > MAX_NAME:
        raise BadMailboxName("mailbox name too long")
    if any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise BadMailboxName("control characters are not allowed in mailbox names")
    if "/" in name and separator != "/":
        raise BadMailboxName("'/' is not allowed in mailbox names")
    if "\\" in name:
        raise BadMailboxName("'\\' is not allowed in mailbox names")
    if name.startswith("~"):
        raise BadMailboxName("mailbox names may not start with '~'")
    parts = name.split(separator)
    for part in parts:
        if part == "":
            raise BadMailboxName("empty hierarchy level in mailbox name")
        if part in (".", "..") or ".." in part:
            raise BadMailboxName("'..' is not allowed in mailbox names")
        if part.startswith("."):
            raise BadMailboxName("hierarchy levels may not start with '.'")
        if part.startswith("~"):
            raise BadMailboxName("hierarchy levels may not start with '~'")
    return normalize(name, separator)

"""IMAP flags and how Maildir spells them in file names (Dovecot's conventions)."""

from __future__ import annotations

SEEN = "\\Seen"
ANSWERED = "\\Answered"
FLAGGED = "\\Flagged"
DELETED = "\\Deleted"
DRAFT = "\\Draft"
RECENT = "\\Recent"

SYSTEM_FLAGS = (ANSWERED, FLAGGED, DELETED, SEEN, DRAFT)
_CANONICAL = {f.lower(): f for f in SYSTEM_FLAGS}

# Maildir info letters (https://cr.yp.to/proto/maildir.html), as Dovecot maps them.
LETTER_OF = {DRAFT: "D", FLAGGED: "F", ANSWERED: "R", SEEN: "S", DELETED: "T"}
FLAG_OF = {v: k for k, v in LETTER_OF.items()}

_ATOM_SPECIALS = set('(){ %*"\\]') | {chr(c) for c in range(0x20)} | {"\x7f"}


def canonical(flag: str) -> str:
    """System flags are case-insensitive; keywords keep the case they were first given."""
    if flag.startswith("\\"):
        found = _CANONICAL.get(flag.lower())
        if found is None:
            raise ValueError(f"unknown system flag {flag}")
        return found
    if not flag or any(c in _ATOM_SPECIALS or ord(c) > 0x7E for c in flag):
        raise ValueError(f"invalid keyword {flag!r}")
    return flag


def is_keyword(flag: str) -> bool:
    return not flag.startswith("\\")


def sort_flags(flags: frozenset[str] | set[str]) -> list[str]:
    """System flags first in a fixed order, then keywords: stable output for clients and tests."""
    system = [f for f in SYSTEM_FLAGS if f in flags]
    return system + sorted(f for f in flags if is_keyword(f))


def encode_flags(flags: frozenset[str]) -> str:
    """Store flags in the index as one space-separated string."""
    return " ".join(sort_flags(flags))


def decode_flags(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else frozenset()

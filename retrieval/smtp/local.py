"""What the relay writes into a message it accepts, and where local copies go.

The trace and submission headers the relay adds, queue ids, and finding
the folder a `user+folder` address names (delivery itself: delivery.py).
"""

from __future__ import annotations

import datetime
import email.utils
import os
import re
import time
from dataclasses import dataclass

from retrieval.smtp.session import Envelope


@dataclass(frozen=True)
class Client:
    """What the adapter knows about the peer, for the Received header."""

    ip: str
    name: str = "unknown"  # forward-confirmed reverse DNS name, or "unknown"
    tls: str | None = None  # e.g. "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384"


_B32 = "0123456789BCDFGHJKLMNPQRSTVWXYZ"


def new_queue_id() -> str:
    """Postfix-style long queue id: time in microseconds then randomness, base 31 without vowels."""
    n = (time.time_ns() // 1000) << 40 | int.from_bytes(os.urandom(5), "big")
    out = ""
    while n:
        n, r = divmod(n, len(_B32))
        out = _B32[r] + out
    return out


def _clean(text: str, limit: int = 255) -> str:
    """Something a client said, made safe for a header: printable, no comment syntax."""
    text = re.sub(r"[^\x21-\x7e\u0080-\U0010ffff]|[()\\]", "?", text)
    return text[:limit] or "unknown"


def address_literal(ip: str) -> str:
    return f"[IPv6:{ip}]" if ":" in ip else f"[{ip}]"


def received_header(
    envelope: Envelope, client: Client, hostname: str, queue_id: str, recipient: str | None, now: datetime.datetime
) -> bytes:
    """RFC 5321 section 4.4 trace line, folded as Postfix folds it (CRLF line ends)."""
    lines = [f"Received: from {_clean(envelope.helo)} ({_clean(client.name)} {address_literal(client.ip)})"]
    if client.tls:
        lines.append(f"\t(using {_clean(client.tls, 200).replace('?', ' ')})")
    lines.append(f"\tby {hostname} (retrieval) with {envelope.protocol} id {queue_id}")
    date = email.utils.format_datetime(now)
    if recipient is not None:
        lines.append(f"\tfor <{recipient}>; {date}")
    else:
        lines[-1] += f"; {date}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


def header_names(data: bytes) -> set[bytes]:
    """Lower-cased field names of the header block (up to the first empty line)."""
    end = _header_end(data)
    names = set()
    for line in data[:end].split(b"\r\n"):
        if line and line[:1] not in (b" ", b"\t"):
            name, colon, _ = line.partition(b":")
            if colon:
                names.add(name.strip().lower())
    return names


def _header_end(data: bytes) -> int:
    """Offset of the empty line ending the header block (or of the data's end)."""
    if data.startswith(b"\r\n"):
        return 0
    pos = data.find(b"\r\n\r\n")
    return pos + 2 if pos >= 0 else len(data)


def add_missing_headers(data: bytes, queue_id: str, hostname: str, now: datetime.datetime) -> bytes:
    """Submission (RFC 6409 section 8): add Message-ID and Date when the client did not."""
    names = header_names(data)
    added = b""
    if b"message-id" not in names:
        added += f"Message-ID: <{queue_id}@{hostname}>\r\n".encode()
    if b"date" not in names:
        added += f"Date: {email.utils.format_datetime(now)}\r\n".encode()
    if not added:
        return data
    end = _header_end(data)
    if end == len(data) and data and not data.endswith(b"\r\n"):
        data += b"\r\n"
        end = len(data)
    return data[:end] + added + data[end:]


def resolve_folder(location, folder: str | None) -> str | None:  # type: ignore[no-untyped-def]
    """`user+folder`: that folder when it exists (its name matched without regard to case
    when there is no exact match, as senders lower-case addresses), else INBOX: as Dovecot
    does without lda_mailbox_autocreate, strangers do not get to create folders."""
    if not folder:
        return None

    from retrieval.mime import utf7
    from retrieval.store.errors import BadMailboxName

    try:
        if location.format == "maildir":
            from retrieval.store.maildir import folder_path

            if (folder_path(location.root, folder) / "cur").is_dir():
                return folder
            wanted = folder.casefold()
            for entry in sorted(os.listdir(location.root)):
                if entry.startswith(".") and not entry.startswith("..") and (location.root / entry / "cur").is_dir():
                    try:
                        name = utf7.decode(entry[1:])
                    except ValueError:
                        continue
                    if name.casefold() == wanted:
                        return name
            return None
        from retrieval.store.mbox import mbox_path

        if mbox_path(location, folder).is_file():
            return folder
        # walk the hierarchy level by level, each matched without regard to case
        path, found = location.root, []
        for part in folder.split("/"):
            wanted = part.casefold()
            match = None
            for entry in sorted(os.listdir(path)) if path.is_dir() else ():
                try:
                    if not entry.startswith(".") and utf7.decode(entry).casefold() == wanted:
                        match = entry
                        break
                except ValueError:
                    continue
            if match is None:
                return None
            found.append(utf7.decode(match))
            path = path / match
        return "/".join(found) if path.is_file() else None
    except (BadMailboxName, OSError):
        return None

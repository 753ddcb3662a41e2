"""Local delivery (the MDA): one message from stdin into a user's folder.

Called by Postfix (`mailbox_command`), from `.forward` or procmail, and by
our own SMTP relay. Exit codes follow sysexits.h so the caller knows whether
to bounce (67, 65) or retry (75). Nothing half-written is ever left: Maildir
goes tmp -> fsync -> new/, mbox appends under the lock and truncates back on
failure.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from retrieval.store.errors import BadMailboxName, StoreError, TemporaryFailure
from retrieval.store.location import UserLocation

EX_OK = 0
EX_DATAERR = 65
EX_NOUSER = 67
EX_CANTCREAT = 73
EX_TEMPFAIL = 75

_HEADER_LINE = re.compile(rb"^[!-9;-~]+:")


@dataclass
class DeliveryResult:
    code: int
    message: str
    path: Path | None = None


def _split_envelope(data: bytes) -> tuple[bytes | None, bytes]:
    """A leading mbox `From sender date` line is an envelope, not a header."""
    if data.startswith(b"From "):
        line, _, rest = data.partition(b"\n")
        return line.rstrip(b"\r"), rest
    return None, data


def looks_like_message(data: bytes) -> bool:
    """Refuse what cannot be mail: empty input, or a first line that is no header."""
    if not data.strip():
        return False
    first = data.split(b"\n", 1)[0].rstrip(b"\r")
    if first == b"":
        return True  # no header at all, body only: legal enough (RFC 5322 allows it)
    return bool(_HEADER_LINE.match(first))


def prepare(data: bytes, recipient: str, sender: str | None) -> tuple[bytes, str]:
    """Add Return-Path and Delivered-To; return (message, envelope sender)."""
    envelope, data = _split_envelope(data)
    if sender is None and envelope is not None:
        parts = envelope.split()
        sender = parts[1].decode("utf-8", "replace") if len(parts) > 1 else ""
    sender = sender or ""
    if sender.upper() == "MAILER-DAEMON":
        sender = ""
    nl = b"\r\n" if data.split(b"\n", 1)[0].endswith(b"\r") else b"\n"
    header_end = _header_end(data)
    header, body = data[:header_end], data[header_end:]
    # Return-Path is set at final delivery only (RFC 5321 4.4): drop any the message carries.
    lines = _unfold_lines(header)
    kept = [line for line in lines if not line.lower().startswith(b"return-path:")]
    added = b"Return-Path: <" + sender.encode("utf-8", "replace") + b">" + nl
    added += b"Delivered-To: " + recipient.encode("utf-8", "replace") + nl
    return added + b"".join(kept) + body, sender


def _header_end(data: bytes) -> int:
    """Offset where the header block ends (the blank line stays with the body)."""
    if data.startswith(b"\n") or data.startswith(b"\r\n"):
        return 0
    ends = [p for p in (data.find(b"\n\n"), data.find(b"\n\r\n")) if p >= 0]
    return min(ends) + 1 if ends else len(data)


def _unfold_lines(header: bytes) -> list[bytes]:
    """Header lines with their continuation lines kept together (bytes as given)."""
    out: list[bytes] = []
    for line in header.splitlines(keepends=True):
        if out and line[:1] in (b" ", b"\t"):
            out[-1] += line
        else:
            out.append(line)
    return out


def deliver_message(
    location: UserLocation,
    user: str,
    data: bytes,
    folder: str | None = None,
    sender: str | None = None,
    lock_timeout: float = 30.0,
    fsync: bool = True,
    queued: tuple[str, float] | None = None,
    recovering: bool = False,
    owner: tuple[int, int] | None = None,
) -> DeliveryResult:
    """Deliver without touching the index: the readers pick the message up.

    `owner` = (uid, gid): when we run as root for users with their own uid (the
    relay without [server] user), what the delivery creates becomes theirs, as
    Postfix's local(8) leaves it.

    `queued` = (queue id, arrival time) of a message from the relay's queue: its
    copy gets a name (Maildir) or trace id (mbox) of its own, and with
    `recovering` (a retry that may follow a crash) a copy already there is
    not delivered twice."""
    if not looks_like_message(_split_envelope(data)[1]):
        return DeliveryResult(EX_DATAERR, "input is not a mail message (empty, or no header)")
    message, sender = prepare(data, user, sender)
    if owner is not None and (os.geteuid() != 0 or owner[0] == 0):
        owner = None
    try:
        if owner is not None:
            created = _missing(location, folder)
            result = deliver_message(location, user, data, folder, sender, lock_timeout, fsync, queued, recovering)
            if result.code == EX_OK:
                written = [result.path] if location.format == "maildir" and os.path.isfile(result.path or "") else []
                _give([*created, *written], owner)  # an mbox that was there keeps its owner and group
            return result
        if location.format == "maildir":
            from retrieval.store.maildir import MaildirStore, deliver_file, folder_path, holds_stem, queue_stem

            path = folder_path(location.root, folder or "INBOX")
            inbox = (folder or "INBOX") == "INBOX"
            if not inbox:
                MaildirStore.ensure_maildir(path, folder=True)
            stem = queue_stem(*queued) if queued else None
            if stem and recovering and holds_stem(path, stem):
                return DeliveryResult(EX_OK, f"already delivered to {path}", path)
            try:
                written = deliver_file(path, message, fsync, stem)
            except TemporaryFailure as exc:
                if not inbox or not isinstance(exc.__cause__, FileNotFoundError):
                    raise
                # the first delivery to this INBOX: make it (three mkdirs per message otherwise)
                MaildirStore.ensure_maildir(path)
                written = deliver_file(path, message, fsync, stem)
            return DeliveryResult(EX_OK, f"delivered to {written}", written)
        from retrieval.store.mbox import deliver_mbox, mbox_path

        path = mbox_path(location, folder or "INBOX")
        marker = f" id {queued[0]}".encode() if queued and recovering else None
        if not deliver_mbox(path, message, sender, lock_timeout=lock_timeout, fsync=fsync, unless_holds=marker):
            return DeliveryResult(EX_OK, f"already delivered to {path}", path)
        return DeliveryResult(EX_OK, f"delivered to {path}", path)
    except BadMailboxName as exc:
        return DeliveryResult(EX_CANTCREAT, f"bad folder name: {exc}")
    except TemporaryFailure as exc:
        return DeliveryResult(EX_TEMPFAIL, str(exc))
    except StoreError as exc:
        return DeliveryResult(EX_TEMPFAIL, str(exc))
    except OSError as exc:
        return DeliveryResult(EX_TEMPFAIL, f"{exc.filename or ''}: {exc.strerror}")


def _missing(location: UserLocation, folder: str | None) -> list[Path]:
    """What a delivery to `folder` may create, of what is not there yet (outermost first)."""
    if location.format == "maildir":
        from retrieval.store.maildir import SUBDIRS, folder_path

        path = folder_path(location.root, folder or "INBOX")
        candidates = [*_ancestors(path, location.root), path, *(path / sub for sub in SUBDIRS),
                      path / "maildirfolder"]
    else:
        from retrieval.store.mbox import mbox_path

        path = mbox_path(location, folder or "INBOX")
        candidates = [*_ancestors(path, location.root), path]
    return [p for p in candidates if not os.path.lexists(p)]


def _ancestors(path: Path, root: Path) -> list[Path]:
    """The folders from `root` (inclusive) down to `path`'s parent, when `path` is under root."""
    try:
        parts = path.parent.relative_to(root).parts
    except ValueError:
        return []
    out, current = [root], root
    for part in parts:
        current = current / part
        out.append(current)
    return out


def _give(paths: list, owner: tuple[int, int]) -> None:
    for path in paths:
        try:
            os.lchown(path, *owner)
        except FileNotFoundError:
            continue


def drop_to_user(uid: int | None, gid: int | None) -> None:
    """When run as root (e.g. by Postfix without a user), write files as the mail user."""
    if os.getuid() != 0:
        return
    if gid is not None:
        os.setgroups([gid])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)

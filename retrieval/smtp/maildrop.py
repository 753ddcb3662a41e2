"""Mail handed over by local programs (`retrieval sendmail`), without the network.

Any user may write into QUEUE/maildrop/ (mode 1733: write, no listing); the
relay picks the files up, checks them as it checks SMTP clients' mail, and
queues them. The drop file's name is the queue id it will get, so a relay
that crashes between queueing and removing the drop file does not queue it
twice; of several processes, the one whose rename into tmp/ succeeds takes
it. Its owner is who sent it (the Received header says so, as Postfix's
pickup does).
"""

from __future__ import annotations

import datetime
import email.utils
import json
import os
import re
import time
from pathlib import Path

from retrieval.smtp.local import new_queue_id
from retrieval.smtp.queue import Meta, Queue, QueuedRecipient
from retrieval.smtp.session import valid_mailbox

_ID = re.compile(r"[0-9A-Z]{8,40}")
MAX_RECIPIENTS = 10000


def drop(queue_root: Path, sender: str, recipients: list[str], data: bytes) -> str:
    """Write a message into maildrop/ (as whoever runs this); returns its queue id."""
    queue_id = new_queue_id()
    folder = Path(queue_root) / "maildrop"
    tmp = folder / f".{queue_id}.tmp"
    head = json.dumps({"sender": sender, "recipients": recipients}, ensure_ascii=True).encode() + b"\n"
    # readable by the relay's user (the folder cannot be listed, the name is random)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(head + data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.chmod(tmp, 0o644)  # whatever the caller's umask
    os.rename(tmp, folder / queue_id)
    return queue_id


def pick_up(queue: Queue, config, limit: int = 100) -> list[Meta]:  # type: ignore[no-untyped-def]
    """BLOCKING. Queue what programs dropped; bad drops go to corrupt/."""
    folder = queue.root / "maildrop"
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    picked = []
    for name in names[:limit]:
        if not _ID.fullmatch(name):
            continue  # a .tmp still being written, or litter
        path = queue.root / "tmp" / f"{name}.pickup"
        try:
            os.rename(folder / name, path)  # the claim: of several worker processes, one wins
        except FileNotFoundError:
            continue
        if queue.where(name) is not None:
            path.unlink(missing_ok=True)  # queued before a crash: the drop file is all that is left
            continue
        try:
            meta, data = _read(path, name, config)
        except (OSError, ValueError) as exc:
            try:
                os.rename(path, queue.root / "corrupt" / name)
            except OSError:
                pass
            from twisted.logger import Logger

            Logger(namespace="retrieval.queue").warn("maildrop {name}: refused: {why}", name=name, why=str(exc))
            continue
        queue.enqueue(meta, data)
        path.unlink(missing_ok=True)
        picked.append(meta)
    return picked


def return_stale_claims(queue: Queue, older_than: float = 60.0) -> int:
    """Claims a crashed process left in tmp/ go back to maildrop/ (they were never queued)."""
    returned = 0
    now = time.time()
    for name in queue.ids("tmp"):
        if not name.endswith(".pickup"):
            continue
        path = queue.root / "tmp" / name
        try:
            if now - path.stat().st_mtime > older_than:
                os.rename(path, queue.root / "maildrop" / name[: -len(".pickup")])
                returned += 1
        except FileNotFoundError:
            continue
    return returned


def _read(path: Path, name: str, config) -> tuple[Meta, bytes]:  # type: ignore[no-untyped-def]
    with open(path, "rb") as f:
        owner = os.fstat(f.fileno()).st_uid
        head = json.loads(f.readline())
        data = f.read()
    sender = head.get("sender")
    recipients = head.get("recipients")
    if not isinstance(sender, str) or (sender and not valid_mailbox(sender)):
        raise ValueError(f"bad sender {sender!r}")
    if not isinstance(recipients, list) or not recipients or len(recipients) > MAX_RECIPIENTS:
        raise ValueError("no recipients")
    for rcpt in recipients:
        if not isinstance(rcpt, str) or not valid_mailbox(rcpt):
            raise ValueError(f"bad recipient {rcpt!r}")
    if len(data) > config.smtp.max_message_size:
        raise ValueError(f"message too big ({len(data)} octets)")
    arrival = time.time()
    now = datetime.datetime.fromtimestamp(arrival).astimezone()
    trace = (
        f"Received: by {config.server.hostname} (retrieval, from userid {owner})\r\n"
        f"\tid {name}; {email.utils.format_datetime(now)}\r\n"
    ).encode()
    data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    meta = Meta(id=name, sender=sender, recipients=tuple(QueuedRecipient(r) for r in recipients), arrival=arrival,
                client=f"uid {owner}", origin="sendmail", smtputf8=not (sender + "".join(recipients)).isascii())
    return meta, trace + data

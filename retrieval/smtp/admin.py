"""`retrieval queue ...` (mailq, postcat, postsuper, postqueue -f) and
`retrieval sendmail` (the /usr/sbin/sendmail that cron, mail(1) and scripts call).

These work on the queue's files directly, so they need no running server;
a running one notices what they did within a second (QUEUE/flush, maildrop/).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

from retrieval.smtp.queue import Queue, QueueError

DEFAULT_CONFIG = "/etc/retrieval/retrieval.toml"


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("queue", help="the mail queue: list, show, flush, delete, hold, release")
    actions = p.add_subparsers(dest="queue_command", required=True)
    for name, help_text in (
        ("list", "what is queued, like mailq"),
        ("flush", "try every queued message now, like postqueue -f"),
    ):
        a = actions.add_parser(name, help=help_text)
        a.add_argument("--config", "-c", default=_env_config())
        a.set_defaults(func=cmd_queue)
    for name, help_text in (
        ("show", "one message with its envelope and history, like postcat -q"),
        ("delete", "remove messages (IDs, or ALL), like postsuper -d"),
        ("hold", "keep messages from delivery until released, like postsuper -h"),
        ("release", "let held messages go again, like postsuper -H"),
    ):
        a = actions.add_parser(name, help=help_text)
        a.add_argument("ids", nargs="+", metavar="ID")
        a.add_argument("--config", "-c", default=_env_config())
        a.set_defaults(func=cmd_queue)

    p = sub.add_parser("sendmail", help="sendmail-compatible submission (link /usr/sbin/sendmail to it)",
                       add_help=False, prefix_chars="\0")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: sendmail_main(args.args))


def _env_config() -> str:
    return os.environ.get("RETRIEVAL_CONFIG", DEFAULT_CONFIG)


def _queue(config_path: str) -> tuple[object, Queue] | None:
    from retrieval.commands import _load
    from retrieval.smtp.delivery import queue_for

    config = _load(config_path)
    if config is None:
        return None
    return config, queue_for(config)


def cmd_queue(args: argparse.Namespace) -> int:
    loaded = _queue(args.config)
    if loaded is None:
        return 2
    _, queue = loaded
    action = args.queue_command
    if action == "list":
        return queue_list(queue)
    if action == "flush":
        request_flush(queue)
        print("flush requested: a running server tries every queued message within a second")
        return 0
    if action == "show":
        return max(queue_show(queue, queue_id) for queue_id in args.ids)
    status = 0
    ids = args.ids
    if action == "delete" and [i.upper() for i in ids] == ["ALL"]:
        ids = [queue_id for _, queue_id in queue.entries()]
    for queue_id in ids:
        try:
            where = queue.where(queue_id)
        except QueueError as exc:
            print(exc, file=sys.stderr)
            status = 1
            continue
        if action == "delete" and where in ("active", "hold"):
            queue.remove(queue_id)
            print(f"{queue_id}: deleted")
        elif action == "hold" and where == "active":
            queue.move(queue_id, "active", "hold")
            print(f"{queue_id}: placed on hold")
        elif action == "release" and where == "hold":
            queue.move(queue_id, "hold", "active")
            request_flush(queue, [queue_id])
            print(f"{queue_id}: released from hold")
        else:
            print(f"{queue_id}: not {'held' if action == 'release' else 'queued'}", file=sys.stderr)
            status = 1
    return status


def request_flush(queue: Queue, ids: list[str] | None = None) -> None:
    """Ask the runner (it polls QUEUE/flush once a second): these ids, or everything."""
    line = (" ".join(ids) if ids else "*") + "\n"
    fd = os.open(queue.root / "flush", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.fchmod(fd, 0o644)  # root may ask; the server's user must read it (it only holds queue ids)
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def queue_list(queue: Queue, out=sys.stdout) -> int:  # type: ignore[no-untyped-def]
    """mailq's layout: id (* being delivered, ! held), size, arrival, sender, then recipients."""
    count = total = 0
    for where, queue_id in queue.entries():
        try:
            meta, data = queue.read(queue_id, where)
            size = (queue.path(where, queue_id)).stat().st_size
        except (QueueError, OSError):
            continue
        state = queue.state(queue_id)
        if count == 0:
            print("-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------", file=out)
        count += 1
        total += size
        mark = "!" if where == "hold" else ""
        arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(meta.arrival))
        print(f"{queue_id + mark:<11} {size:>8} {arrival}  {meta.sender or 'MAILER-DAEMON'}"
              + ("  (held)" if where == "hold" else ""), file=out)
        for rcpt in meta.recipients:
            if rcpt.address in state.final_recipients:
                continue
            reasons = [o.text for key, (r, o) in state.deferred.items() if r == rcpt.address]
            if reasons:
                print(f"{'':42}({reasons[0][:70]})", file=out)
            print(f"{'':42}{rcpt.address}", file=out)
        print(file=out)
    if count == 0:
        print("Mail queue is empty", file=out)
    else:
        print(f"-- {(total + 1023) // 1024} Kbytes in {count} Request{'s' if count != 1 else ''}.", file=out)
    return 0


def queue_show(queue: Queue, queue_id: str, out=sys.stdout) -> int:  # type: ignore[no-untyped-def]
    try:
        where = queue.where(queue_id)
        if where is None:
            print(f"{queue_id}: no such message in the queue", file=sys.stderr)
            return 1
        meta, data = queue.read(queue_id, where)
    except (QueueError, OSError) as exc:
        print(f"{queue_id}: {exc}", file=sys.stderr)
        return 1
    print(f"*** ENVELOPE RECORDS {queue_id} ({where}) ***", file=out)
    print(f"arrival: {datetime.datetime.fromtimestamp(meta.arrival).astimezone().isoformat()}", file=out)
    print(f"sender: {meta.sender}", file=out)
    print(f"client: {meta.client} ({meta.origin})", file=out)
    for key in ("envid", "ret", "body"):
        if getattr(meta, key):
            print(f"{key}: {getattr(meta, key)}", file=out)
    for rcpt in meta.recipients:
        extra = f" notify={','.join(rcpt.notify)}" if rcpt.notify else ""
        print(f"recipient: {rcpt.address}{extra}", file=out)
    try:
        history = queue.path("log", queue_id).read_text(errors="replace").splitlines()
    except FileNotFoundError:
        history = []
    if history:
        print("*** HISTORY ***", file=out)
        for line in history:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            stamp = record.pop("t", None)
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else ""
            print(f"{when} {json.dumps(record, ensure_ascii=False)}", file=out)
    print("*** MESSAGE CONTENTS ***", file=out)
    out.flush()
    sys.stdout.buffer.write(data.replace(b"\r\n", b"\n")) if out is sys.stdout else out.write(data.decode("utf-8", "replace"))
    return 0


# -- sendmail ------------------------------------------------------------------------------

EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_SOFTWARE, EX_TEMPFAIL, EX_CONFIG = 64, 65, 66, 70, 75, 78


def sendmail_main(argv: list[str], stdin=None, stdout=None) -> int:  # type: ignore[no-untyped-def]
    from retrieval.smtp.sendmail import run

    return run(argv, stdin or sys.stdin.buffer, stdout or sys.stdout.buffer, _env_config())


__all__ = ["add_parsers", "queue_list", "queue_show", "request_flush", "sendmail_main"]

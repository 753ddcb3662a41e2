"""`sendmail`, as cron, mail(1), PHP and scripts call it.

The options are Sendmail's (and Postfix's sendmail(1)): -t, -i/-oi, -f, -F,
-bm (the default), -bs (SMTP on stdin/stdout), -bp (= mailq), -bi
(= newaliases); other -o, -O, -B, -N, -R, -V, -X and -v options are taken and
ignored as Postfix does. The message goes into the queue's maildrop/ folder,
so no listener needs to be up; the relay picks it up within a second.
"""

from __future__ import annotations

import datetime
import email.utils
import os
import pwd
import sys
from dataclasses import dataclass, field
from typing import BinaryIO

from retrieval.smtp.local import add_missing_headers, new_queue_id

EX_OK, EX_USAGE, EX_DATAERR, EX_NOUSER, EX_SOFTWARE, EX_CANTCREAT, EX_TEMPFAIL, EX_CONFIG = 0, 64, 65, 67, 70, 73, 75, 78

_IGNORED_WITH_ARG = set("BCNOQRVXhLp")  # options that take an argument we do not use


class UsageError(Exception):
    pass


@dataclass
class Options:
    mode: str = "m"  # -bm deliver, -bs SMTP, -bp list, -bi aliases
    from_headers: bool = False  # -t
    dot_ends: bool = True  # without -i/-oi a line with a single dot ends the message
    sender: str | None = None  # -f
    full_name: str | None = None  # -F
    recipients: list[str] = field(default_factory=list)


def parse_args(argv: list[str]) -> Options:
    opts = Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            opts.recipients.extend(args)
            break
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)
            continue
        flag, rest = arg[1:2], arg[2:]
        if flag in ("f", "r", "F") or flag in _IGNORED_WITH_ARG:
            if not rest:
                if not args:
                    raise UsageError(f"option -{flag} needs an argument")
                rest = args.pop(0)
            if flag in ("f", "r"):
                opts.sender = rest
            elif flag == "F":
                opts.full_name = rest
            continue
        if flag == "b":
            if rest not in ("m", "s", "p", "i", "d", "D", "v"):
                raise UsageError(f"unsupported mode -b{rest}")
            opts.mode = "m" if rest in ("d", "D", "v") else rest
        elif flag == "t":
            opts.from_headers = True
        elif flag == "i":
            opts.dot_ends = False
        elif flag == "o":
            if rest == "i":
                opts.dot_ends = False
            elif not rest:
                args and args.pop(0)  # "-o i" style: an option name follows
            # -oem, -odb, -oQ... : accepted and ignored
        elif flag in ("v", "n", "U", "G", "d"):
            continue
        else:
            raise UsageError(f"unknown option -{flag}")
    return opts


def read_message(stream: BinaryIO, dot_ends: bool) -> bytes:
    """The message from stdin: to EOF, or to a lone '.' line unless -i."""
    if not dot_ends:
        data = stream.read()
    else:
        lines = []
        for line in stream:
            if line.rstrip(b"\r\n") == b".":
                break
            lines.append(line)
        data = b"".join(lines)
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


_ADDR_HEADERS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")


def recipients_from_headers(data: bytes) -> tuple[list[str], bytes]:
    """-t: To/Cc/Bcc (Resent-* when present, RFC 5322 3.6.6), and the message without Bcc."""
    end = data.find(b"\r\n\r\n")
    head, body = (data[: end + 2], data[end + 2 :]) if end >= 0 else (data, b"")
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + b"\r\n" + line)
        elif line:
            name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
            fields.append((name, line))
    resent = any(name.startswith("resent-") for name, _ in fields)
    wanted = [n for n in _ADDR_HEADERS if n.startswith("resent-") == resent]
    values = [raw.split(b":", 1)[1].decode("utf-8", "replace") for name, raw in fields if name in wanted]
    addresses = [addr for _, addr in email.utils.getaddresses(values) if addr]
    kept = b"".join(raw + b"\r\n" for name, raw in fields if name not in ("bcc", "resent-bcc"))
    return addresses, kept + body


def qualify(address: str, hostname: str) -> str:
    address = address.strip().strip("<>").strip()
    if address and "@" not in address:
        return f"{address}@{hostname}"
    return address


def login_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid{os.getuid()}"


def add_from(data: bytes, sender: str, full_name: str | None) -> bytes:
    """A message without From: gets the sender's (with -F's name), as Postfix's cleanup does."""
    from retrieval.smtp.local import header_names

    if b"from" in header_names(data):
        return data
    name = full_name
    if name is None:
        try:
            name = pwd.getpwuid(os.getuid()).pw_gecos.split(",")[0] or None
        except KeyError:
            name = None
    value = email.utils.formataddr((name, sender)) if name else sender
    return f"From: {value}\r\n".encode("utf-8") + data


def run(argv: list[str], stdin: BinaryIO, stdout: BinaryIO, config_path: str) -> int:
    try:
        opts = parse_args(argv)
    except UsageError as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return EX_USAGE
    from retrieval.commands import _load

    config = _load(config_path)
    if config is None:
        print(f"sendmail: cannot read the configuration {config_path} (set RETRIEVAL_CONFIG)", file=sys.stderr)
        return EX_CONFIG
    from retrieval.smtp.delivery import queue_for

    queue = queue_for(config)
    if opts.mode == "p":
        from retrieval.smtp.admin import queue_list

        return queue_list(queue)
    if opts.mode == "i":
        return _newaliases(config_path)
    hostname = config.server.hostname
    sender = qualify(opts.sender, hostname) if opts.sender is not None else f"{login_name()}@{hostname}"
    if opts.sender in ("<>", ""):
        sender = ""
    if opts.mode == "s":
        from retrieval.smtp.sendmail_smtp import serve_stdio

        return serve_stdio(config, queue, stdin, stdout)
    data = read_message(stdin, opts.dot_ends)
    recipients = [qualify(r, hostname) for arg in opts.recipients for r in arg.split(",") if r.strip()]
    if opts.from_headers:
        found, data = recipients_from_headers(data)
        recipients += [qualify(r, hostname) for r in found]
    if not recipients:
        print("sendmail: No recipient addresses found in message header", file=sys.stderr)
        return EX_USAGE
    now = datetime.datetime.now().astimezone()
    data = add_missing_headers(add_from(data, sender, opts.full_name), new_queue_id(), hostname, now)
    return drop_or_fail(queue, sender, recipients, data)


def drop_or_fail(queue, sender: str, recipients: list[str], data: bytes) -> int:  # type: ignore[no-untyped-def]
    from retrieval.smtp.maildrop import drop
    from retrieval.smtp.session import valid_mailbox

    bad = [r for r in recipients if not valid_mailbox(r)]
    if bad:
        print(f"sendmail: bad recipient address syntax: {bad[0]}", file=sys.stderr)
        return EX_DATAERR
    try:
        drop(queue.root, sender, sorted(set(recipients), key=recipients.index), data)
    except FileNotFoundError:
        print(f"sendmail: {queue.root}/maildrop does not exist: is the relay set up (retrieval serve)?",
              file=sys.stderr)
        return EX_TEMPFAIL
    except PermissionError as exc:
        print(f"sendmail: cannot write to the queue: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    return EX_OK


def _newaliases(config_path: str) -> int:
    import importlib.util

    if importlib.util.find_spec("retrieval.smtp.aliases") is None:
        print("newaliases: no alias support in this version", file=sys.stderr)
        return EX_SOFTWARE
    from retrieval.cli import main

    return main(["aliases", "compile", "--config", config_path])


__all__ = ["run", "parse_args", "recipients_from_headers", "read_message"]

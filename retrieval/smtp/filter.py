"""The content filter hook: pass a message through spamc, rspamc, a clamd client ...

`[smtp] content_filter` is a command (split into words as a shell would, but
run without one) that works like `spamc -E`: the message on its stdin, the
filtered message (typically with X-Spam-* headers added) on its stdout, and
the verdict in its exit status:

    0       clean
    1       spam (or a virus): `content_filter_action` decides what happens:
            "header"  deliver the filtered message (its headers say it is spam)
            "junk"    deliver it into the recipient's Junk folder
            "reject"  refuse it: 550 5.7.1 Message content rejected
    other   the filter failed: `content_filter_failure` decides: "accept" the
            message unchanged (logged), or "tempfail" it (451, the client retries)

A filter that exits 0 but marks the message `X-Spam-Flag: YES` (spamc
without -E) or `X-Spam: yes` (rspamd) is taken as saying spam as well. Empty
output means "unchanged" (a filter that only judges). The filter gets at most
`content_filter_timeout` seconds; then it and its children are killed and
that counts as a failure.

BLOCKING: the queue runs it in a thread, never on the reactor.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from dataclasses import dataclass

from retrieval.mime.message import to_crlf
from retrieval.smtp.session import Reply

REJECTED = Reply(550, "5.7.1", "Message content rejected")
TEMPFAIL = Reply(451, "4.7.1", "Error: content filter unavailable, try again later")
MAX_OUTPUT_GROWTH = 1024 * 1024  # a filter may add headers; it may not make the message much bigger

_SPAM_HEADER = re.compile(rb"^(?:X-Spam-Flag|X-Spam)[ \t]*:[ \t]*yes[ \t]*\r?$", re.I | re.M)


@dataclass(frozen=True)
class Verdict:
    action: str  # "accept" | "junk" | "reject" | "tempfail"
    data: bytes  # the message to go on with (the filter's output, or the input unchanged)
    reply: Reply | None = None  # for "reject" and "tempfail": what the client hears
    detail: str = ""  # for the log: what the filter said or why it failed


def _header_block(data: bytes) -> bytes:
    if data.startswith((b"\r\n", b"\n")):
        return b""
    end = re.search(rb"\r?\n\r?\n", data)
    return data[: end.start() + 1] if end else data


def marked_spam(data: bytes) -> bool:
    """The filter added `X-Spam-Flag: YES` / `X-Spam: yes` to the header block."""
    return _SPAM_HEADER.search(_header_block(data)) is not None


def _failed(config, data: bytes, detail: str) -> Verdict:  # type: ignore[no-untyped-def]
    if config.smtp.content_filter_failure == "tempfail":
        return Verdict("tempfail", data, TEMPFAIL, detail)
    return Verdict("accept", data, None, detail + " (message accepted unfiltered)")


def run_filter(config, data: bytes) -> Verdict:  # type: ignore[no-untyped-def]
    """BLOCKING: run `[smtp] content_filter` on one message (CRLF line ends in and out)."""
    smtp = config.smtp
    if not smtp.content_filter:
        return Verdict("accept", data)
    argv = shlex.split(smtp.content_filter)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        return _failed(config, data, f"content filter {argv[0]}: cannot run: {exc.strerror}")
    try:
        out, err = proc.communicate(data, timeout=smtp.content_filter_timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        return _failed(config, data, f"content filter {argv[0]}: no verdict within {smtp.content_filter_timeout:g}s")
    except OSError as exc:  # e.g. it exited without reading its input (EPIPE)
        _kill(proc)
        return _failed(config, data, f"content filter {argv[0]}: {exc}")
    said = err.decode("utf-8", "replace").strip().replace("\n", " ")[:200]
    status = proc.returncode
    if status not in (0, 1):
        why = f"signal {-status}" if status < 0 else f"exit status {status}"
        return _failed(config, data, f"content filter {argv[0]}: {why}" + (f": {said}" if said else ""))
    if not out:
        filtered = data
    elif len(out) > len(data) + MAX_OUTPUT_GROWTH:
        return _failed(config, data, f"content filter {argv[0]}: output {len(out)} octets for {len(data)} in")
    else:
        filtered = to_crlf(out)
    if status == 0 and not marked_spam(filtered):
        return Verdict("accept", filtered, None, said)
    how = "exit status 1" if status == 1 else "X-Spam-Flag"
    action = smtp.content_filter_action
    detail = f"content filter {argv[0]}: spam ({how})" + (f": {said}" if said else "")
    if action == "reject":
        return Verdict("reject", data, REJECTED, detail)
    if action == "junk":
        return Verdict("junk", filtered, None, detail)
    return Verdict("accept", filtered, None, detail)


def _kill(proc: subprocess.Popen) -> None:
    """Kill the filter and whatever it started (its own session), then reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()
    try:
        proc.communicate(timeout=5)
    except (subprocess.TimeoutExpired, OSError, ValueError):
        pass

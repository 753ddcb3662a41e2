"""Delivery status notifications (RFC 3464): failure, delay and success reports.

`wants_report` decides whether a report goes out at all (RFC 3461 NOTIFY and
the null sender); `make_report` writes it, as Postfix words and shapes it,
so that people and the programs that parse bounces (mailing list managers,
VERP handlers) both understand it:

    multipart/report; report-type=delivery-status
      text/plain                what happened, for people
      message/delivery-status   Reporting-MTA, per recipient Action/Status/...
      message/rfc822            the returned message (failures, RET=FULL, small enough)
      or text/rfc822-headers    its header only (RET=HDRS, too big, delay and success)

For a message that came with SMTPUTF8 the parts are message/global-* (RFC
6533), so UTF-8 addresses and headers go back as they came. The report is
sent from the null reverse-path (`REPORT_SENDER`), so a report that cannot
be delivered is never reported on again (RFC 5321 section 4.5.5).

Pure: bytes in, bytes out; the queue stores the DSN fields the session kept
(Envelope.ret/envid, Recipient.notify/orcpt) and calls these.
"""

from __future__ import annotations

import datetime
import email.utils
import os
import re
import textwrap
from dataclasses import dataclass
from typing import Sequence

from retrieval.mime.message import to_crlf
from retrieval.smtp.dsn import encode_utf8_addr

REPORT_SENDER = ""  # MAIL FROM:<> for every report
KINDS = ("failed", "delayed", "delivered", "relayed")
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")
DEFAULT_SIZE_LIMIT = 50000

_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
# "failed" may carry a 4.x.x: a transient problem that lasted until the queue gave up (4.4.7, or the
# last deferral's own status, as Postfix reports it)
_STATUS_CLASS = {"failed": "45", "delayed": "4", "delivered": "2", "relayed": "2", "expanded": "2"}
_NOTIFY_FOR = {"failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS", "relayed": "SUCCESS", "expanded": "SUCCESS"}

_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Successful Mail Delivery Report",
}

_DEFAULT_REASONS = {
    "failed": "undeliverable",
    "delayed": "delivery temporarily deferred",
    "delivered": "delivered to mailbox",
    "relayed": "relayed to a mail system that sends no delivery reports",
    "expanded": "delivered to the members of a list or alias",
}


@dataclass(frozen=True)
class RecipientReport:
    """One recipient's line of a report.

    `address` is the final recipient (the address tried, after alias
    expansion); `orcpt` the Recipient.orcpt the session kept ("rfc822;addr").
    `diagnostic` is the remote server's reply as it came ("550 5.1.1 <bob@...>:
    User unknown"), with `remote_mta` the host that said it; `reason` is the
    human text when there is no reply (a connection refused, a local error)."""

    address: str
    status: str  # X.Y.Z (RFC 3463), class matching the action: 5 (or 4 when expired) failed, 4 delayed, 2 otherwise
    action: str | None = None  # None: the report kind's own action; "expanded" for an alias/list in a success report
    orcpt: str | None = None
    remote_mta: str | None = None  # host name, for Remote-MTA
    remote_ip: str | None = None  # its address, for the text: "host mx.example.com[192.0.2.1] said"
    diagnostic: str | None = None
    in_reply_to: str | None = None  # the command the reply answered, for the text: "RCPT TO", "end of DATA"
    diagnostic_type: str = "smtp"  # "smtp" for a remote reply; e.g. "x-unix" for a local command's exit text
    reason: str | None = None
    last_attempt: datetime.datetime | None = None  # default: the report's time
    will_retry_until: datetime.datetime | None = None  # delayed only; default: make_report's retry_until


def wants_report(sender: str, notify: tuple[str, ...] | None, kind: str) -> bool:
    """Whether the sender gets a `kind` report (an action: failed/delayed/delivered/relayed/expanded)
    for one recipient with this NOTIFY (RFC 3461 section 4.1; None: not given).

    Never for the null sender; NEVER: none; no NOTIFY: failures and delays only."""
    if kind not in _NOTIFY_FOR:
        raise ValueError(f"unknown report kind {kind!r}")
    if sender == "":
        return False
    if notify is None:
        return kind in ("failed", "delayed")
    return _NOTIFY_FOR[kind] in notify


def report_body(report: bytes) -> str | None:
    """The MAIL BODY= a report needs when sent: "8BITMIME" if it has 8-bit octets."""
    return "8BITMIME" if not report.isascii() else None


def make_report(
    kind: str,
    *,
    hostname: str,
    sender: str,
    recipients: Sequence[RecipientReport],
    message: bytes,
    arrival: datetime.datetime,
    now: datetime.datetime | None = None,
    queue_id: str | None = None,
    envid: str | None = None,
    ret: str | None = None,
    smtputf8: bool = False,
    size_limit: int = DEFAULT_SIZE_LIMIT,
    retry_until: datetime.datetime | None = None,
) -> bytes:
    """The whole report message (CRLF line ends), to send from `REPORT_SENDER` to `sender`.

    kind: "failed" / "delayed" / "delivered" / "relayed" (subject, wording and
    what of `message` comes back: failures the whole message unless RET=HDRS
    or it is bigger than `size_limit`, everything else the header only).
    `message` is the message as queued; `envid`/`ret`/`smtputf8` are the
    envelope's; `retry_until` is when the queue gives up (delay reports).
    Send with SMTPUTF8 when `smtputf8`, and with `report_body()`."""
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}")
    if not recipients:
        raise ValueError("a report needs at least one recipient")
    if not sender:
        raise ValueError("no report to the null sender")
    now = _aware(now or datetime.datetime.now())
    arrival = _aware(arrival)
    for r in recipients:
        action = r.action or kind
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        if _STATUS.fullmatch(r.status) is None or r.status[0] not in _STATUS_CLASS[action]:
            raise ValueError(f"status {r.status!r} does not fit action {action!r}")
    message = to_crlf(message)
    glob = smtputf8
    if retry_until is None and kind == "delayed":
        retry_until = max((r.will_retry_until for r in recipients if r.will_retry_until), default=None)

    human = _human_text(kind, hostname, recipients, now, arrival, retry_until)
    status = _delivery_status(kind, hostname, sender, recipients, now, arrival, queue_id, envid, retry_until, glob)
    returned, returned_type, returned_desc = _returned(kind, message, ret, size_limit, glob)

    boundary = _boundary(queue_id, now, hostname, message)
    parts = [
        _part(
            [("Content-Description", "Notification"),
             ("Content-Type", "text/plain; charset=" + ("us-ascii" if human.isascii() else "utf-8"))],
            human.encode("utf-8"),
        ),
        _part(
            [("Content-Description", "Delivery report"),
             ("Content-Type", "message/global-delivery-status" if glob else "message/delivery-status")],
            status.encode("utf-8"),
        ),
        _part([("Content-Description", returned_desc), ("Content-Type", returned_type)], returned),
    ]
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary.encode() + b"--\r\n"

    headers = [
        ("From", f"Mail Delivery System <MAILER-DAEMON@{hostname}>"),
        ("To", sender if _plain_addr(sender) else f"<{sender}>"),
        ("Subject", _SUBJECTS[kind]),
        ("Auto-Submitted", "auto-replied"),  # RFC 3834 section 5
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"'),
        ("Content-Transfer-Encoding", "7bit" if body.isascii() else "8bit"),
        ("Message-ID", f"<{now.strftime('%Y%m%d%H%M%S')}.{_token()}@{hostname}>"),
        ("Date", email.utils.format_datetime(now)),
    ]
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("utf-8")
    return head + b"\r\n" + _PREAMBLE + body


_PREAMBLE = b"This is a MIME-encapsulated message.\r\n\r\n"


# -- the parts ----------------------------------------------------------------------------


def _human_text(
    kind: str,
    hostname: str,
    recipients: Sequence[RecipientReport],
    now: datetime.datetime,
    arrival: datetime.datetime,
    retry_until: datetime.datetime | None,
) -> str:
    """Postfix's bounce templates (bounce.cf.default), then one paragraph per recipient."""
    lines = [f"This is the mail system at host {hostname}.", ""]
    if kind == "failed":
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
            "",
            "For further assistance, please send mail to postmaster.",
            "",
            "If you do so, please include this problem report. You can",
            "delete your own text from the attached returned message.",
        ]
    elif kind == "delayed":
        lines += [
            "####################################################################",
            "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
            "####################################################################",
            "",
            f"Your message could not be delivered for {_duration((now - arrival).total_seconds())}.",
        ]
        if retry_until is not None:
            lines.append(f"It will be retried until {email.utils.format_datetime(retry_until)}.")
        lines += [
            "",
            "For further assistance, please send mail to postmaster.",
            "",
            "If you do so, please include this problem report. You can",
            "delete your own text from the attached returned message.",
        ]
    else:
        lines += [
            "Your message was successfully delivered to the destination(s)",
            "listed below. If the message was delivered to mailbox you will",
            "receive no further notifications. Otherwise you may still receive",
            "notifications of mail delivery errors from other systems.",
        ]
    lines += ["", "                   The mail system", ""]
    for r in recipients:
        action = r.action or kind
        if r.diagnostic and r.remote_mta:
            host = _one_line(r.remote_mta) + (f"[{_one_line(r.remote_ip)}]" if r.remote_ip else "")
            what = f"host {host} said: {_one_line(r.diagnostic, True)}"
        elif r.reason or r.diagnostic:
            what = _one_line(r.reason or r.diagnostic or "", True)
        else:
            what = _DEFAULT_REASONS[action]
        if r.diagnostic and r.in_reply_to:
            what += f" (in reply to {_one_line(r.in_reply_to)} command)"
        lines += textwrap.wrap(f"<{r.address}>: {what}", width=76, subsequent_indent="    ",
                               break_long_words=False, break_on_hyphens=False) + [""]
    return "\r\n".join(lines)


def _delivery_status(
    kind: str,
    hostname: str,
    sender: str,
    recipients: Sequence[RecipientReport],
    now: datetime.datetime,
    arrival: datetime.datetime,
    queue_id: str | None,
    envid: str | None,
    retry_until: datetime.datetime | None,
    glob: bool,
) -> str:
    """RFC 3464 section 2.2 (per message) and 2.3 (per recipient) fields."""
    groups = []
    fields = [("Reporting-MTA", f"dns; {hostname}")]
    if queue_id:
        fields.append(("X-Retrieval-Queue-ID", queue_id))
    fields.append(("X-Retrieval-Sender", _typed_address(sender, glob)))
    if envid:
        fields.append(("Original-Envelope-Id", _one_line(envid, glob)))
    fields.append(("Arrival-Date", email.utils.format_datetime(arrival)))
    groups.append(fields)
    for r in recipients:
        action = r.action or kind
        fields = [("Final-Recipient", _typed_address(r.address, glob))]
        if r.orcpt:
            addr_type, _, address = r.orcpt.partition(";")
            if addr_type == "utf-8" and not glob:
                address = encode_utf8_addr(address)
            fields.append(("Original-Recipient", f"{addr_type}; {_one_line(address, glob)}"))
        fields += [("Action", action), ("Status", r.status)]
        if r.remote_mta:
            fields.append(("Remote-MTA", f"dns; {_one_line(r.remote_mta, glob)}"))
        if r.diagnostic:
            fields.append(("Diagnostic-Code", f"{r.diagnostic_type}; {_one_line(r.diagnostic, glob)}"))
        fields.append(("Last-Attempt-Date", email.utils.format_datetime(_aware(r.last_attempt or now))))
        until = r.will_retry_until or retry_until
        if action == "delayed" and until is not None:
            fields.append(("Will-Retry-Until", email.utils.format_datetime(_aware(until))))
        groups.append(fields)
    return "\r\n".join("".join(_fold(name, value) for name, value in group) for group in groups)


def _returned(kind: str, message: bytes, ret: str | None, size_limit: int, glob: bool) -> tuple[bytes, str, str]:
    """(content, its Content-Type, its Content-Description)."""
    if kind == "failed" and ret != "HDRS" and len(message) <= size_limit:
        return message, "message/global" if glob else "message/rfc822", "Undelivered Message"
    headers = _header_block(message, size_limit)
    desc = "Undelivered Message Headers" if kind in ("failed", "delayed") else "Message Headers"
    return headers, "message/global-headers" if glob else "text/rfc822-headers", desc


def _header_block(message: bytes, limit: int) -> bytes:
    """The header (without the empty line), cut before the field that would pass `limit`."""
    if message.startswith(b"\r\n"):
        return b""
    end = message.find(b"\r\n\r\n")
    block = message[: end + 2] if end >= 0 else message
    if block and not block.endswith(b"\r\n"):
        block += b"\r\n"
    if len(block) <= limit:
        return block
    cut = 0
    for m in re.finditer(rb"\r\n(?![ \t])", block):
        if m.end() > limit:
            break
        cut = m.end()
    return block[:cut]


def _part(headers: list[tuple[str, str]], content: bytes) -> bytes:
    if not content.isascii():
        headers = headers + [("Content-Transfer-Encoding", "8bit")]
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("ascii")
    return head + b"\r\n" + content


# -- small helpers --------------------------------------------------------------------------


def _aware(moment: datetime.datetime) -> datetime.datetime:
    """Naive times are taken as local time."""
    return moment if moment.tzinfo is not None else moment.astimezone()


def _token() -> str:
    return os.urandom(6).hex().upper()


def _boundary(queue_id: str | None, now: datetime.datetime, hostname: str, message: bytes) -> str:
    """Postfix-like (id.time/host), with fresh randomness until it occurs nowhere in the message."""
    while True:
        boundary = f"{queue_id or _token()}.{int(now.timestamp())}.{_token()}/{hostname}"
        boundary = re.sub(r"[^0-9A-Za-z'()+_,./:=?-]", "_", boundary)[:70]
        if b"--" + boundary.encode() not in message:
            return boundary


def _plain_addr(address: str) -> bool:
    return " " not in address and "," not in address and not address.startswith('"')


def _typed_address(address: str, glob: bool) -> str:
    """RFC 3464 address-type; address: rfc822 for ASCII, utf-8 (RFC 6533 section 3) otherwise."""
    if address.isascii():
        return f"rfc822; {_one_line(address)}"
    return f"utf-8; {address if glob else encode_utf8_addr(address)}"


def _one_line(text: str, utf8: bool = False, limit: int = 900) -> str:
    """A value for one field: line breaks joined with a space (multi-line SMTP replies),
    controls dropped, non-ASCII kept only where UTF-8 is allowed."""
    text = re.sub(r"\s*[\r\n]+\s*", " ", text)
    text = re.sub(r"[\x00-\x1f\x7f]", "", text)
    if not utf8:
        text = text.encode("ascii", "replace").decode("ascii")
    return text.strip()[:limit]


def _fold(name: str, value: str) -> str:
    """`Name: value` folded at spaces to stay near 78 columns (RFC 5322 section 2.2.3)."""
    words = value.split(" ")
    lines, line = [], f"{name}: {words[0]}"
    for word in words[1:]:
        if len(line) + 1 + len(word) > 78 and line.strip():
            lines.append(line)
            line = " " + word  # the space that was there: unfolding gives the value back
        else:
            line += " " + word
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        n, unit = round(seconds / 86400), "day"
    elif seconds >= 3600:
        n, unit = round(seconds / 3600), "hour"
    else:
        n, unit = max(1, round(seconds / 60)), "minute"
    return f"{n} {unit}{'s' if n != 1 else ''}"

"""The relay's delivery side, wired together: accepting into the queue, and the
pieces the queue runner calls (expansion, local copies, programs and files,
outbound SMTP, reports).

`accept` is what a 250 for DATA stands on: the message and its envelope are
fsynced in the queue before the client hears it. Delivery starts right after,
from memory, in the same process.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

from twisted.logger import Logger

from retrieval.smtp.local import Client, add_missing_headers, new_queue_id, received_header, resolve_folder
from retrieval.smtp.queue import Meta, Outcome, Queue, QueuedRecipient, new_meta
from retrieval.smtp.runner import ExpandResult, Runner
from retrieval.smtp.session import Envelope, Reply
from retrieval.smtp.targets import DiscardTarget, FileTarget, LocalTarget, PipeTarget
from retrieval.store.deliver import EX_DATAERR, EX_NOUSER, EX_OK, EX_TEMPFAIL, deliver_message

log = Logger(namespace="retrieval.smtp")


def queue_for(config) -> Queue:  # type: ignore[no-untyped-def]
    root = getattr(config.smtp, "queue_dir", None) or config.server.state_dir / "queue"
    return Queue(root, fsync=config.store.fsync)


def accept(
    config, queue: Queue, envelope: Envelope, data: bytes, client: Client, submission: bool  # type: ignore[no-untyped-def]
) -> tuple[Reply, Meta | None, bytes]:
    """BLOCKING. Put the message in the queue with its trace header; the reply for DATA.

    Recipients an access table DISCARD marked (`DiscardTarget`) are dropped here;
    when that is all of them nothing is queued, and the client hears 250 all the same."""
    reply, meta, data, fd = accept_locked(config, queue, envelope, data, client, submission)
    if fd is not None:
        os.close(fd)
    return reply, meta, data


def accept_locked(
    config, queue: Queue, envelope: Envelope, data: bytes, client: Client, submission: bool  # type: ignore[no-untyped-def]
) -> tuple[Reply, Meta | None, bytes, int | None]:
    """`accept`, and when queued an fd holding the queue file's lock (`Queue.enqueue_locked`),
    so that the caller can deliver at once (`Runner.deliver_now`)."""
    recipients = [r for r in envelope.recipients if not isinstance(r.target, DiscardTarget)]
    if not recipients:
        return Reply(250, "2.0.0", f"Ok: queued as {new_queue_id()}"), None, b"", None
    meta = new_meta(
        envelope.sender,
        [QueuedRecipient(r.address, getattr(r, "notify", None), getattr(r, "orcpt", None)) for r in recipients],
        envid=getattr(envelope, "envid", None),
        ret=getattr(envelope, "ret", None),
        smtputf8=envelope.smtputf8,
        body=envelope.body,
        client=f"{client.name}[{client.ip}]",
    )
    now = datetime.datetime.fromtimestamp(meta.arrival).astimezone()
    hostname = config.server.hostname
    if submission:
        data = add_missing_headers(data, meta.id, hostname, now)
    only = recipients[0].address if len(recipients) == 1 else None
    data = received_header(envelope, client, hostname, meta.id, only, now) + data
    if config.smtp.content_filter:
        from retrieval.smtp.filter import run_filter

        verdict = run_filter(config, data)  # it sees our Received header, as spamd expects
        if verdict.detail:
            log.info("smtp {id}: content filter: {action}: {detail}", id=meta.id, action=verdict.action,
                     detail=verdict.detail)
        if verdict.action in ("reject", "tempfail"):
            fallback = Reply(554, "5.7.1", "Error: message content rejected") if verdict.action == "reject" else \
                Reply(451, "4.7.1", "Error: content filter unavailable, try again later")
            return verdict.reply or fallback, None, b"", None
        data = verdict.data
        if verdict.action == "junk":
            meta = dataclasses.replace(meta, junk=True)
    try:
        fd = queue.enqueue_locked(meta, data)
    except OSError as exc:
        log.error("smtp: cannot write to the queue: {why}", why=str(exc))
        return Reply(451, "4.3.0", "Error: queue file write error"), None, b"", None
    return Reply(250, "2.0.0", f"Ok: queued as {meta.id}"), meta, data, fd


def alias_expand(expander):  # type: ignore[no-untyped-def]
    """Recipients to targets through aliases, :include: and .forward (retrieval.smtp.expand)."""

    def expand(address: str) -> ExpandResult:
        result = expander.expand(address)
        errors = [Outcome(reply.code, reply.status, reply.text if what == address else f"{what}: {reply.text}")
                  for what, reply in result.errors]
        return list(result.targets), errors

    return expand


def special_deliverer(config, passwd):  # type: ignore[no-untyped-def]
    """BLOCKING: |command and /file targets (retrieval.smtp.external), as Postfix's local(8)."""
    from retrieval.smtp.external import deliver_to_file, deliver_to_pipe

    def deliver(target: PipeTarget | FileTarget, meta: Meta, data: bytes, recipient: str) -> Outcome:
        fn = deliver_to_pipe if isinstance(target, PipeTarget) else deliver_to_file
        reply = fn(target, data, meta.sender, recipient, config, passwd)  # type: ignore[arg-type]
        return Outcome(reply.code, reply.status, reply.text)

    return deliver


def local_deliverer(config, passwd):  # type: ignore[no-untyped-def]
    """BLOCKING: one copy into a user's folder through the store's MDA path."""
    from retrieval.store import location_for

    def deliver(target: LocalTarget, meta: Meta, data: bytes, recovering: bool) -> Outcome:
        record = passwd.lookup(target.user)
        if record is None:
            return Outcome(550, "5.1.1", f"user {target.user} unknown")
        try:
            location = location_for(config, record)
        except ValueError as exc:
            return Outcome(451, "4.3.5", f"mail location: {exc}")
        result = deliver_message(
            location, record.name, data.replace(b"\r\n", b"\n"),  # stored with Unix line ends, as Postfix's local does
            folder=target.folder, sender=meta.sender, lock_timeout=config.store.lock_timeout,
            fsync=config.store.fsync, queued=(meta.id, meta.arrival), recovering=recovering,
            owner=(record.uid, record.gid if record.gid is not None else record.uid) if record.uid is not None else None,
        )
        if result.code == EX_OK:
            return Outcome(250, "2.0.0", "delivered to mailbox")
        if result.code == EX_NOUSER:
            return Outcome(550, "5.1.1", result.message)
        if result.code == EX_DATAERR:
            return Outcome(554, "5.6.0", result.message)
        if result.code == EX_TEMPFAIL:
            return Outcome(451, "4.2.0", result.message)
        return Outcome(451, "4.3.0", result.message)

    return deliver


def local_resolver(config, passwd):  # type: ignore[no-untyped-def]
    """BLOCKING (a stat or a listing): the folder a local copy lands in.

    `user+folder` names an existing folder or means INBOX; spam the content
    filter flagged goes to Junk when the user has one."""
    from retrieval.store import location_for

    def resolve(target: LocalTarget, meta: Meta) -> LocalTarget:
        folder = target.folder or ("Junk" if meta.junk else None)
        if folder is None:
            return target
        record = passwd.lookup(target.user)
        if record is None:
            return target
        try:
            location = location_for(config, record)
        except ValueError:
            return target
        return LocalTarget(target.user, resolve_folder(location, folder))

    return resolve


def report_maker(config):  # type: ignore[no-untyped-def]
    """The reports (RFC 3464) a finished or delayed message owes its sender, as queue entries."""
    from retrieval.smtp import bounce, schedule

    def when(t: float) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(t).astimezone()

    def line(kind: str, address: str, rcpt: QueuedRecipient | None, outcome: Outcome) -> bounce.RecipientReport:
        status = outcome.status if _STATUS_OK(outcome.status) else f"{outcome.code // 100}.0.0"
        status = {"failed": "5", "delayed": "4"}.get(kind, "2") + status[1:]
        remote = outcome.mta is not None
        return bounce.RecipientReport(
            address=address, status=status, orcpt=rcpt.orcpt if rcpt else None, remote_mta=outcome.mta,
            diagnostic=f"{outcome.code} {outcome.status} {outcome.text}" if remote else None,
            reason=None if remote else outcome.text, last_attempt=when(outcome.time) if outcome.time else None,
        )

    def reports(meta: Meta, data: bytes, state, kinds: tuple[str, ...]) -> list[tuple[Meta, bytes]]:  # type: ignore[no-untyped-def]
        by_address = {r.address: r for r in meta.recipients}
        lines: dict[str, list[bounce.RecipientReport]] = {}

        def add(kind: str, rcpt_address: str, final_address: str, outcome: Outcome) -> None:
            rcpt = by_address.get(rcpt_address)
            if bounce.wants_report(meta.sender, rcpt.notify if rcpt else None, kind):
                lines.setdefault(kind, []).append(line(kind, final_address, rcpt, outcome))

        if "failed" in kinds:
            reported = set()
            for key, (rcpt, outcome) in state.failed.items():
                add("failed", rcpt, key.partition(":")[2] if key.startswith("remote:") else rcpt, outcome)
                reported.add(rcpt)
            for rcpt, outcome in state.final_recipients.items():
                if outcome.code >= 400 and rcpt not in reported:
                    add("failed", rcpt, rcpt, outcome)
        if "delivered" in kinds:
            for key, (rcpt, outcome) in state.done.items():
                if outcome.dsn:
                    continue  # the next host took the request on: it reports, not we (RFC 3461 5.2.2)
                kind = "relayed" if key.startswith("remote:") else "delivered"
                add(kind, rcpt, key.partition(":")[2] if kind == "relayed" else rcpt, outcome)
        if "delayed" in kinds:
            for key, (rcpt, outcome) in state.deferred.items():
                add("delayed", rcpt, key.partition(":")[2] if key.startswith("remote:") else rcpt, outcome)
        out = []
        if not lines:
            return out
        arrival = when(meta.arrival)
        for kind, recipients in lines.items():
            if kind == "relayed" and "delivered" in lines:
                continue  # one success report: folded into the delivered one below
            if kind == "delivered" and "relayed" in lines:
                recipients = recipients + [
                    bounce.RecipientReport(**{**r.__dict__, "action": "relayed"}) for r in lines["relayed"]
                ]
            report = bounce.make_report(
                kind, hostname=config.server.hostname, sender=meta.sender, recipients=recipients, message=data,
                arrival=arrival, queue_id=meta.id, envid=meta.envid, ret=meta.ret, smtputf8=meta.smtputf8,
                size_limit=config.smtp.bounce_size_limit, retry_until=schedule.retry_until(arrival, config),
            )
            out.append((new_meta(bounce.REPORT_SENDER, [QueuedRecipient(meta.sender, ("NEVER",))],
                                 smtputf8=meta.smtputf8, body=bounce.report_body(report), origin="report"), report))
        return out

    return reports


def _STATUS_OK(status: str) -> bool:
    import re

    return re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", status or "") is not None


_runners: dict[str, Runner] = {}


def make_runner(config, passwd, reactor) -> Runner:  # type: ignore[no-untyped-def]
    """A queue runner with every delivery path of this config (not started)."""
    from retrieval.smtp.expand import Expander
    from retrieval.smtp.outbound import Outbound

    return Runner(config, passwd, queue_for(config), reactor, expand=alias_expand(Expander(config, passwd)),
                  deliver_local=local_deliverer(config, passwd), resolve_local=local_resolver(config, passwd),
                  deliver_special=special_deliverer(config, passwd),
                  reports=report_maker(config), outbound=Outbound(config, reactor))


def runner_for(config, passwd, reactor) -> Runner:  # type: ignore[no-untyped-def]
    """The process's queue runner (one per queue), started with the reactor."""
    key = str(queue_for(config).root)
    runner = _runners.get(key)
    if runner is None:
        runner = _runners[key] = make_runner(config, passwd, reactor)
        runner.queue.create()
        reactor.callWhenRunning(runner.start)
        reactor.addSystemEventTrigger("before", "shutdown", runner.stop)
    return runner


__all__ = ["accept", "accept_locked", "queue_for", "make_runner", "runner_for", "alias_expand", "local_deliverer",
           "special_deliverer"]

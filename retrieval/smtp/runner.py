"""The queue manager: takes each queued message to its targets, retries, reports.

One attempt at a message:
  1. (thread) lock the queue file, replay its log, expand each recipient that
     is not final into targets (aliases, .forward), deliver the local, pipe
     and file targets;
  2. (reactor) hand the remote targets to the outbound client, one call per
     destination domain (or one for the relayhost);
  3. (thread) log the outcomes; when every recipient is final, send the
     reports the senders asked for and remove the message; otherwise plan the
     next attempt (backoff), warn of a delay, or give up when it is too old.

Several processes may run a Runner on one queue (worker processes, a restart
while an old one drains): the flock on the queue file decides who works on a
message. A message this process did not just accept may have been half
delivered by a process that crashed, so its local copies are looked for
before they are written (`recovering`).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from twisted.internet import defer, threads
from twisted.logger import Logger

from retrieval.smtp import schedule
from retrieval.smtp.queue import Meta, Outcome, Queue, QueueError, QueuedRecipient, State
from retrieval.smtp.targets import FileTarget, LocalTarget, PipeTarget, RemoteTarget, Target

log = Logger(namespace="retrieval.queue")

ExpandResult = tuple[list[Target], list[Outcome]]  # targets, and final/temporary errors of the expansion


def target_key(target: Target) -> str:
    if isinstance(target, LocalTarget):
        return f"local:{target.user}/{target.folder or ''}"
    if isinstance(target, RemoteTarget):
        return f"remote:{target.address.lower()}"
    if isinstance(target, PipeTarget):
        return f"pipe:{target.user or ''}:{target.command}"
    return f"file:{target.path}"


@dataclass
class _Attempt:
    """One attempt's working set, carried from the local phase to the finish."""

    queue_id: str
    fd: int
    meta: Meta
    data: bytes
    state: State
    recovering: bool
    # recipient -> keys of its targets, and the errors of its expansion
    plan: dict[str, list[str]] = field(default_factory=dict)
    errors: dict[str, list[Outcome]] = field(default_factory=dict)
    remote: dict[str, list[tuple[QueuedRecipient, str, RemoteTarget]]] = field(default_factory=dict)
    outcomes: dict[str, tuple[str, Outcome]] = field(default_factory=dict)  # key -> (recipient, outcome), logged
    remote_outcomes: dict[str, tuple[str, Outcome]] = field(default_factory=dict)  # not yet logged
    # Records not yet written to the log: they are worth writing only if the message stays
    # queued. One that is removed at the end of its attempt never needs its log (a crash
    # before the removal is a retry, which finds its local copies by their names).
    unlogged: list[dict] = field(default_factory=list)
    logged: bool = True  # a log file may exist (False: fresh and locked before anyone could write one)


class Runner:
    def __init__(
        self,
        config,  # type: ignore[no-untyped-def]
        passwd,
        queue: Queue,
        reactor,
        expand: Callable[[str], ExpandResult],
        deliver_local: Callable[[LocalTarget, Meta, bytes, bool], Outcome],
        deliver_special: Callable[[PipeTarget | FileTarget, Meta, bytes, str], Outcome] | None = None,
        outbound=None,
        reports=None,
        resolve_local: Callable[[LocalTarget, Meta], LocalTarget] | None = None,
    ) -> None:
        self.config = config
        self.passwd = passwd
        self.queue = queue
        self.reactor = reactor
        self.expand = expand
        self.deliver_local = deliver_local
        self.deliver_special = deliver_special
        self.outbound = outbound
        self.reports = reports  # callable(meta, data, state, kinds) -> list[(Meta, bytes)] to enqueue
        # the folder a local target really lands in (user+nosuch is INBOX): one copy per folder
        self.resolve_local = resolve_local or (lambda target, meta: target)
        self.max_active = 20
        self._waiting: deque[str] = deque()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._timers: dict[str, object] = {}
        self._fresh: dict[str, tuple[Meta, bytes]] = {}
        self._loops: list[object] = []
        self.stopped = False

    # -- scheduling -------------------------------------------------------------------

    def start(self, scan_interval: float = 60.0, poll_interval: float = 1.0) -> None:
        """Pick up what is queued (a restart, or another process's leftovers), then keep looking."""
        from twisted.internet.task import LoopingCall

        from retrieval.smtp.maildrop import return_stale_claims

        self.queue.create()
        self.queue.sweep_tmp()
        return_stale_claims(self.queue)
        scan = LoopingCall(self.scan)
        scan.clock = self.reactor
        scan.start(scan_interval, now=True)
        poll = LoopingCall(self.poll)
        poll.clock = self.reactor
        poll.start(poll_interval, now=False)
        self._loops = [scan, poll]

    def stop(self) -> None:
        self.stopped = True
        for loop in self._loops:
            if loop.running:  # type: ignore[attr-defined]
                loop.stop()  # type: ignore[attr-defined]
        for timer in self._timers.values():
            if timer.active():  # type: ignore[attr-defined]
                timer.cancel()  # type: ignore[attr-defined]
        self._timers.clear()

    def submit(self, meta: Meta, data: bytes) -> None:
        """A message this process just committed: try it at once, from memory."""
        self._fresh[meta.id] = (meta, data)
        self.kick(meta.id)

    def kick(self, queue_id: str) -> None:
        if self.stopped or queue_id in self._queued or queue_id in self._active:
            return
        timer = self._timers.pop(queue_id, None)
        if timer is not None and timer.active():  # type: ignore[attr-defined]
            timer.cancel()  # type: ignore[attr-defined]
        self._queued.add(queue_id)
        self._waiting.append(queue_id)
        self._pump()

    def later(self, queue_id: str, when: float) -> None:
        if self.stopped:
            return
        old = self._timers.pop(queue_id, None)
        if old is not None and old.active():  # type: ignore[attr-defined]
            old.cancel()  # type: ignore[attr-defined]
        delay = max(0.0, when - time.time())
        self._timers[queue_id] = self.reactor.callLater(delay, self._due, queue_id)

    def _due(self, queue_id: str) -> None:
        self._timers.pop(queue_id, None)
        self.kick(queue_id)

    def scan(self) -> defer.Deferred:
        """Every queued message gets a timer (a new one, or one another process left)."""

        def look() -> list[tuple[str, float]]:
            return [(queue_id, self.queue.state(queue_id).next_attempt) for queue_id in self.queue.ids("active")]

        def plan(found: list[tuple[str, float]]) -> None:
            for queue_id, when in found:
                if queue_id in self._queued or queue_id in self._active or queue_id in self._timers:
                    continue
                self.later(queue_id, when)

        d = threads.deferToThread(look)
        d.addCallback(plan)
        d.addErrback(lambda failure: log.failure("queue scan", failure))
        return d

    def poll(self) -> defer.Deferred | None:
        """The cheap once-a-second look: sendmail drops and `retrieval queue flush`."""
        d = threads.deferToThread(self._poll_files)

        def act(result: tuple[list[Meta], set[str] | None]) -> None:
            picked, wanted = result
            for meta in picked:
                self.kick(meta.id)
            if wanted is not None:
                if "*" in wanted:
                    self.flush()
                for queue_id in wanted - {"*"}:
                    self.kick(queue_id)

        d.addCallback(act)
        d.addErrback(lambda failure: log.failure("queue poll", failure))
        return d

    def _poll_files(self) -> tuple[list[Meta], set[str] | None]:
        """Drops from `retrieval sendmail`, and the ids `retrieval queue flush|release` asked for."""
        from retrieval.smtp.maildrop import pick_up

        picked = pick_up(self.queue, self.config)
        flag = self.queue.root / "flush"
        taken = flag.with_name(f"flush.{os.getpid()}")
        try:
            os.rename(flag, taken)
        except FileNotFoundError:
            return picked, None
        try:
            wanted = set(taken.read_text(errors="replace").split())
        finally:
            taken.unlink(missing_ok=True)
        return picked, wanted

    def flush(self) -> None:
        for queue_id in self.queue.ids("active"):
            self.kick(queue_id)

    def _pump(self) -> None:
        while self._waiting and len(self._active) < self.max_active:
            queue_id = self._waiting.popleft()
            self._queued.discard(queue_id)
            self._active.add(queue_id)
            d = self._attempt(queue_id)
            d.addErrback(lambda failure, q=queue_id: log.failure("queue {id}: attempt", failure, id=q))
            d.addBoth(lambda _, q=queue_id: self._finished(q))

    def _finished(self, queue_id: str) -> None:
        self._active.discard(queue_id)
        self._pump()

    # -- one attempt ------------------------------------------------------------------

    def _attempt(self, queue_id: str) -> defer.Deferred:
        fresh = self._fresh.pop(queue_id, None)
        d = threads.deferToThread(self._local_job, queue_id, fresh)
        d.addCallback(self.go_remote)
        return d

    def _local_job(self, queue_id: str, fresh: tuple[Meta, bytes] | None) -> _Attempt | None:
        """BLOCKING: the local phase, and when no remote target is left, the finish too (one
        thread job). None when done (or not ours); else the attempt, for `go_remote`."""
        attempt = self._local_phase(queue_id, fresh)
        return self._finish_if_local(attempt)

    def deliver_now(self, meta: Meta, data: bytes, fd: int) -> _Attempt | None:
        """BLOCKING: an attempt at a message this thread just committed with
        `Queue.enqueue_locked` (`fd` holds the lock; it is closed here, or by
        `go_remote` when remote targets are left, which the caller then hands it).

        Nothing can have happened to the message yet: no log to read, and no copy
        to look for before writing one."""
        if self.stopped:
            os.close(fd)  # the next start picks it up
            return None
        attempt = _Attempt(meta.id, fd, meta, data, State(), recovering=False, logged=False)
        try:
            self._deliver_here(attempt)
        except BaseException:
            os.close(fd)
            raise
        return self._finish_if_local(attempt)

    def _finish_if_local(self, attempt: _Attempt | None) -> _Attempt | None:
        if attempt is None or attempt.remote:
            return attempt
        try:
            when = self._finish_phase(attempt)
        finally:
            os.close(attempt.fd)
        if when is not None:
            self.reactor.callFromThread(self.later, attempt.queue_id, when)
        return None

    def go_remote(self, attempt: _Attempt | None) -> defer.Deferred | None:
        """(reactor) The remote phase of an attempt whose local phase is done, then its finish."""
        if attempt is None:
            return None
        d = self._remote_phase(attempt)
        d.addCallback(lambda _: threads.deferToThread(self._finish_phase, attempt))
        d.addCallback(self._after, attempt)

        def unlock(result):  # type: ignore[no-untyped-def]
            os.close(attempt.fd)
            return result

        d.addBoth(unlock)
        return d

    def _after(self, when: float | None, attempt: _Attempt) -> None:
        if when is not None:
            self.later(attempt.queue_id, when)

    def _local_phase(self, queue_id: str, fresh: tuple[Meta, bytes] | None) -> _Attempt | None:
        fd = self.queue.lock(queue_id)
        if fd is None:
            return None  # another process has it, or it is gone (held, delivered)
        try:
            if fresh is not None:
                meta, data = fresh
            else:
                meta, data = self.queue.read(queue_id)
            state = self.queue.state(queue_id)
        except (QueueError, OSError) as exc:
            os.close(fd)
            log.error("queue {id}: unreadable, moved to corrupt/: {why}", id=queue_id, why=str(exc))
            self.queue.corrupt(queue_id)
            return None
        attempt = _Attempt(queue_id, fd, meta, data, state, recovering=fresh is None)
        try:
            self._deliver_here(attempt)
        except BaseException:
            os.close(fd)
            raise
        return attempt

    def _deliver_here(self, attempt: _Attempt) -> None:
        meta, state = attempt.meta, attempt.state
        for rcpt in meta.recipients:
            if rcpt.address in state.final_recipients:
                continue
            targets, errors = self.expand(rcpt.address)
            attempt.errors[rcpt.address] = errors
            keys = attempt.plan.setdefault(rcpt.address, [])
            for target in targets:
                if isinstance(target, LocalTarget):
                    target = self.resolve_local(target, meta)
                key = target_key(target)
                if key in keys:
                    continue
                keys.append(key)
                if key in state.done or key in state.failed or key in attempt.outcomes:
                    continue
                if isinstance(target, RemoteTarget):
                    group = self._group(target)
                    attempt.remote.setdefault(group, []).append((rcpt, key, target))
                    continue
                if isinstance(target, LocalTarget):
                    outcome = self.deliver_local(target, meta, attempt.data, attempt.recovering)
                elif self.deliver_special is not None:
                    outcome = self.deliver_special(target, meta, attempt.data, rcpt.address)
                else:
                    outcome = Outcome(550, "5.3.0", "delivery to programs and files is not enabled")
                outcome.time = time.time()
                attempt.outcomes[key] = (rcpt.address, outcome)
                # a local copy written twice is found by its name; a pipe run twice is not
                self._record(attempt, key, rcpt.address, outcome, sync=not isinstance(target, LocalTarget))

    def _group(self, target: RemoteTarget) -> str:
        relayhost = getattr(self.config.smtp, "relayhost", None)
        return "relayhost" if relayhost else target.domain

    def _record(self, attempt: _Attempt, key: str, rcpt: str, outcome: Outcome, sync: bool) -> None:
        record = {"k": "target", "key": key, "rcpt": rcpt, "r": [outcome.code, outcome.status, outcome.text],
                  "t": outcome.time}
        if outcome.mta:
            record["mta"] = outcome.mta
        if outcome.dsn:
            record["dsn"] = True
        self._log(attempt, record, sync=sync and outcome.code < 400)
        attempt.state.apply(record)

    def _log(self, attempt: _Attempt, record: dict, sync: bool = False) -> None:
        """Keep a record for the log; write it (and those before it) now only when it must be
        on disk (`sync`): the rest waits for the end of the attempt (`_finish_phase`)."""
        attempt.unlogged.append(record)
        if sync:
            self._flush_log(attempt, sync=True)

    def _flush_log(self, attempt: _Attempt, sync: bool = False) -> None:
        if attempt.unlogged:
            records, attempt.unlogged = attempt.unlogged, []
            attempt.logged = True
            self.queue.log_many(attempt.queue_id, records, sync=sync)

    def _remote_phase(self, attempt: _Attempt) -> defer.Deferred:
        if not attempt.remote:
            return defer.succeed(None)
        calls = []
        for group, items in attempt.remote.items():
            calls.append(self._send_remote(attempt, group, items))
        return defer.DeferredList(calls, consumeErrors=True)

    def _send_remote(self, attempt: _Attempt, group: str, items) -> defer.Deferred:  # type: ignore[no-untyped-def]
        if self.outbound is None:
            for rcpt, key, _ in items:
                attempt.remote_outcomes[key] = (rcpt.address, Outcome(451, "4.3.0", "no outbound delivery configured",
                                                               time=time.time()))
            return defer.succeed(None)
        from retrieval.smtp.outbound import OutRecipient

        recipients = [OutRecipient(target.address, rcpt.notify, rcpt.orcpt) for rcpt, _, target in items]
        meta = attempt.meta
        d = self.outbound.deliver(meta.sender, recipients, attempt.data, envid=meta.envid, ret=meta.ret,
                                  smtputf8=meta.smtputf8)

        def got(results) -> None:  # type: ignore[no-untyped-def]
            now = time.time()
            for rcpt, key, target in items:
                result = results.get(target.address)
                if result is None:
                    outcome = Outcome(451, "4.3.0", "no result from the outbound client", time=now)
                else:
                    reply = result.reply
                    outcome = Outcome(reply.code, reply.status, reply.text, result.remote_mta, now, result.dsn)
                attempt.remote_outcomes[key] = (rcpt.address, outcome)

        def failed(failure) -> None:  # type: ignore[no-untyped-def]
            log.failure("queue {id}: outbound to {group}", failure, id=attempt.queue_id, group=group)
            for rcpt, key, _ in items:
                attempt.remote_outcomes[key] = (rcpt.address, Outcome(451, "4.3.0", "internal error in outbound delivery",
                                                               time=time.time()))

        d.addCallbacks(got, failed)
        return d

    def _finish_phase(self, attempt: _Attempt) -> float | None:
        """Log the remote outcomes, decide; the time of the next attempt, or None when done."""
        queue_id, meta, state = attempt.queue_id, attempt.meta, attempt.state
        for key, (rcpt, outcome) in attempt.remote_outcomes.items():
            self._record(attempt, key, rcpt, outcome, sync=True)
        for rcpt, outcome_ in self._final_recipients(attempt).items():
            record = {"k": "recipient", "rcpt": rcpt, "r": [outcome_.code, outcome_.status, outcome_.text],
                      "t": time.time()}
            self._log(attempt, record)
            state.apply(record)
        now = time.time()
        pending = [r for r in meta.recipients if r.address not in state.final_recipients]
        if pending and schedule.expired(now - meta.arrival, self.config):
            self._expire(attempt, pending)
            pending = []
        if not pending:
            self._report(attempt, ("failed", "delivered"))
            attempt.unlogged = []  # the message goes: what it did need not be written down
            self.queue.remove(queue_id, logged=attempt.logged)
            self._log_done(attempt)
            return None
        if schedule.delay_warning_due(now - meta.arrival, state.warned, self.config):
            self._report(attempt, ("delayed",))
            self._log(attempt, {"k": "warned", "t": now})
            state.warned = True
        attempts = state.attempts + 1
        when = now + schedule.next_retry(attempts, self.config)
        self._log(attempt, {"k": "attempt", "n": attempts, "next": when})
        self._flush_log(attempt)
        state.attempts, state.next_attempt = attempts, when
        for rcpt in pending:
            why = self._deferral(attempt, rcpt.address)
            log.info("queue {id}: to=<{rcpt}> deferred ({why}); next try in {delay:.0f}s", id=queue_id,
                     rcpt=rcpt.address, why=why, delay=when - now)
        return when

    def _final_recipients(self, attempt: _Attempt) -> dict[str, Outcome]:
        """Recipients whose every target (and expansion) has a final answer this attempt."""
        state = attempt.state
        out = {}
        for rcpt, keys in attempt.plan.items():
            errors = attempt.errors.get(rcpt, [])
            if any(not e.final for e in errors):
                continue
            outcomes = []
            for key in keys:
                if key in state.done:
                    outcomes.append(state.done[key][1])
                elif key in state.failed:
                    outcomes.append(state.failed[key][1])
                else:
                    break
            else:
                everything = outcomes + errors
                if not everything:
                    everything = [Outcome(550, "5.1.1", "recipient expands to nothing")]
                good = [o for o in everything if o.code < 400]
                out[rcpt] = good[0] if good else everything[0]
        return out

    def _deferral(self, attempt: _Attempt, rcpt: str) -> str:
        for key in attempt.plan.get(rcpt, []):
            if key in attempt.state.deferred:
                outcome = attempt.state.deferred[key][1]
                return f"{outcome.code} {outcome.status} {outcome.text}"
        for error in attempt.errors.get(rcpt, []):
            if not error.final:
                return f"{error.code} {error.status} {error.text}"
        return "not yet tried"

    def _expire(self, attempt: _Attempt, pending: list[QueuedRecipient]) -> None:
        for rcpt in pending:
            why = self._deferral(attempt, rcpt.address)
            outcome = Outcome(550, "4.4.7", f"delivery time expired (last: {why})", time=time.time())
            for key in attempt.plan.get(rcpt.address, []):
                if key in attempt.state.deferred or (key not in attempt.state.done and key not in attempt.state.failed):
                    self._record(attempt, key, rcpt.address, outcome, sync=False)
            record = {"k": "recipient", "rcpt": rcpt.address, "r": [550, "4.4.7", outcome.text], "t": time.time()}
            self._log(attempt, record)
            attempt.state.apply(record)

    def _report(self, attempt: _Attempt, kinds: tuple[str, ...]) -> None:
        if self.reports is None or attempt.state.reported:
            return
        try:
            notices = self.reports(attempt.meta, attempt.data, attempt.state, kinds)
        except Exception:  # a report that cannot be made must not keep the message forever
            log.failure("queue {id}: making the delivery report", id=attempt.queue_id)
            return
        for meta, data in notices:
            self.queue.enqueue(meta, data)
            log.info("queue {id}: report {report} to <{to}>", id=attempt.queue_id, report=meta.id,
                     to=",".join(r.address for r in meta.recipients))
            self.reactor.callFromThread(self.submit, meta, data)
        if "delayed" not in kinds:
            if notices:  # a retry after a crash must not send them again; without any, nothing to guard
                self._log(attempt, {"k": "reported", "t": time.time()}, sync=True)
            attempt.state.reported = True

    def _log_done(self, attempt: _Attempt) -> None:
        state = attempt.state
        for rcpt in attempt.meta.recipients:
            outcome = state.final_recipients.get(rcpt.address)
            if outcome is None:
                continue
            status = "sent" if outcome.code < 400 else "bounced"
            log.info("queue {id}: to=<{rcpt}> status={status} ({code} {dsn} {text})", id=attempt.queue_id,
                     rcpt=rcpt.address, status=status, code=outcome.code, dsn=outcome.status, text=outcome.text)

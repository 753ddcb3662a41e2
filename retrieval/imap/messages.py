"""Message-level commands on the selected mailbox: FETCH, STORE, SEARCH, COPY, MOVE,
EXPUNGE, CLOSE, UNSELECT (with their UID forms, CONDSTORE/QRESYNC, ESEARCH, UIDPLUS)."""

from __future__ import annotations

import bisect
import time
from typing import TYPE_CHECKING

from retrieval.imap import ast
from retrieval.imap.fetch import render, sets_seen
from retrieval.imap.mailboxes import store_error
from retrieval.imap.wire import flag_list, seqset
from retrieval.mime.message import BinaryParseError, UnknownCTE
from retrieval.store import MailboxNotFound, MessageGone, StoreError, TemporaryFailure
from retrieval.store import flags as F

if TYPE_CHECKING:
    from retrieval.imap.selected import Selected
    from retrieval.imap.session import Event, ImapSession


class BadSet(Exception):
    pass


def resolve(selected: Selected, numbers: ast.SeqSet, uid: bool) -> list[tuple[int, int]]:
    """(seq, uid) pairs the set names, in order, as the client numbers them."""
    if numbers.saved:
        wanted = set(selected.search_saved)
        return [(i, u) for i, u in enumerate(selected.uids, 1) if u in wanted]
    if uid:
        uids = selected.uids
        largest = uids[-1] if uids else 0
        found: set[int] = set()  # sequence numbers; UIDs are sorted, so each range is a slice
        for a, b in numbers.resolve(largest):
            found.update(range(bisect.bisect_left(uids, a), bisect.bisect_right(uids, b)))
        return [(i + 1, uids[i]) for i in sorted(found)]
    count = len(selected.uids)
    ranges = numbers.resolve(count)
    if any(b > count or a < 1 for a, b in ranges):
        raise BadSet("Invalid messageset")
    seqs: set[int] = set()
    for a, b in ranges:
        seqs.update(range(a, b + 1))
    return [(s, selected.uids[s - 1]) for s in sorted(seqs)]


def _selected_job(session: ImapSession, cmd: ast.Command, run, allow_expunge: bool) -> list[Event]:  # type: ignore[no-untyped-def]
    """run(selected) -> (untagged bytes, tagged line bytes); updates go in between."""
    from retrieval.imap.session import Send

    def job() -> list:
        selected = session.selected
        assert selected is not None
        try:
            body, tagged = run(selected)
        except BadSet as exc:
            return [Send(f"{cmd.tag} BAD {exc}\r\n".encode())]
        except (StoreError, OSError) as exc:
            err = exc if isinstance(exc, StoreError) else TemporaryFailure(str(exc))
            return [Send(store_error(cmd.tag, err))]
        current = session.selected
        updates = current.updates(allow_expunge) if current is not None else b""
        return [Send(body + updates + tagged)]

    return session._job(job)


# -- FETCH ------------------------------------------------------------------------


def cmd_fetch(session: ImapSession, cmd: ast.Command) -> list[Event]:
    numbers, request = cmd.args
    request: ast.FetchRequest

    def run(selected: Selected):  # type: ignore[no-untyped-def]
        box = selected.box
        pairs = resolve(selected, numbers, cmd.uid)
        if request.vanished and not cmd.uid:
            raise BadSet("VANISHED needs UID FETCH")
        out: list[bytes] = []
        if request.changed_since is not None or any(a.name == "MODSEQ" for a in request.atts):
            session.enabled.add("CONDSTORE")
            out.append(selected.enable_condstore())
        if request.vanished and request.changed_since is not None:
            largest = selected.uids[-1] if selected.uids else 0
            gone = [u for u, _m in box.index.expunged_since(box.state.id, request.changed_since)
                    if numbers.contains(u, largest) and selected.seq_of(u) is None]
            if gone:
                out.append(b"* VANISHED (EARLIER) " + seqset(sorted(set(gone))) + b"\r\n")
        seen_now: set[int] = set()
        if not selected.readonly and any(sets_seen(a) for a in request.atts):
            unseen = [u for _s, u in pairs if u in box and F.SEEN not in box.info(u).flags]
            if unseen:
                changed, _ = box.store_flags(unseen, [F.SEEN], "add")
                seen_now = set(changed)
        with_modseq = request.changed_since is not None or (selected.condstore and any(a.name == "MODSEQ" for a in request.atts))
        missing = False
        for seq, uid in pairs:
            if uid not in box:
                missing = True  # expunged by someone else, not yet announced
                continue
            row = box.info(uid)
            if request.changed_since is not None and row.modseq <= request.changed_since:
                continue
            try:
                out.append(render(selected, seq, uid, request.atts, cmd.uid, extra_flags=uid in seen_now,
                                  with_modseq=with_modseq))
            except MessageGone:
                missing = True
            except UnknownCTE:
                return b"".join(out), f"{cmd.tag} NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding.\r\n".encode()
            except BinaryParseError:
                return b"".join(out), f"{cmd.tag} NO [PARSE] Invalid data in MIME part.\r\n".encode()
        selected.pending_flags.difference_update(seen_now)
        box.flush_header_cache()
        if missing:
            tagged = f"{cmd.tag} NO Some messages were expunged meanwhile.\r\n".encode()
        else:
            tagged = f"{cmd.tag} OK Fetch completed.\r\n".encode()
        return b"".join(out), tagged

    return _selected_job(session, cmd, run, allow_expunge=cmd.uid)


# -- STORE ------------------------------------------------------------------------


def cmd_store(session: ImapSession, cmd: ast.Command) -> list[Event]:
    numbers, req = cmd.args
    req: ast.StoreRequest

    def run(selected: Selected):  # type: ignore[no-untyped-def]
        if selected.readonly:
            return b"", f"{cmd.tag} NO [READ-ONLY] Mailbox is read-only.\r\n".encode()
        box = selected.box
        pairs = resolve(selected, numbers, cmd.uid)
        out: list[bytes] = []
        if req.unchanged_since is not None:
            session.enabled.add("CONDSTORE")
            out.append(selected.enable_condstore())
        uids = [u for _s, u in pairs if u in box]
        changed, refused = box.store_flags(uids, req.flags, req.mode, req.unchanged_since)
        refused_set = set(refused)
        report = set(changed) if req.silent else {u for u in uids if u not in refused_set}
        if req.silent and req.unchanged_since is None:
            for u in changed:
                selected.told[u] = box.info(u).flags
            report = set()
        elif req.silent:
            # CONDSTORE: even .SILENT reports the new MODSEQ of what changed (RFC 7162 3.1.3)
            report = set(changed)
        for seq, uid in pairs:
            if uid in report and uid in box:
                out.append(selected.fetch_flags_line(seq, uid, include_uid=cmd.uid))
        selected.pending_flags.difference_update(report | set(changed))
        if refused:
            code = "MODIFIED " + seqset(refused if cmd.uid else [s for s, u in pairs if u in refused_set]).decode()
            return b"".join(out), f"{cmd.tag} OK [{code}] Conditional store failed.\r\n".encode()
        return b"".join(out), f"{cmd.tag} OK Store completed.\r\n".encode()

    return _selected_job(session, cmd, run, allow_expunge=cmd.uid)


# -- COPY / MOVE -------------------------------------------------------------------


def _open_target(session: ImapSession, name: str):  # type: ignore[no-untyped-def]
    selected = session.selected
    if selected is not None and selected.box.name == name:
        return selected.box, False
    return session.store.open(name), True


def cmd_copy(session: ImapSession, cmd: ast.Command) -> list[Event]:
    return _copy(session, cmd, move=False)


def cmd_move(session: ImapSession, cmd: ast.Command) -> list[Event]:
    return _copy(session, cmd, move=True)


def _copy(session: ImapSession, cmd: ast.Command, move: bool) -> list[Event]:
    numbers, name = cmd.args

    def run(selected: Selected):  # type: ignore[no-untyped-def]
        if move and selected.readonly:
            return b"", f"{cmd.tag} NO [READ-ONLY] Mailbox is read-only.\r\n".encode()
        pairs = resolve(selected, numbers, cmd.uid)
        try:
            dest, must_close = _open_target(session, name)
        except MailboxNotFound:
            return b"", f"{cmd.tag} NO [TRYCREATE] Mailbox doesn't exist: {name}\r\n".encode()
        try:
            uids = [u for _s, u in pairs if u in selected.box]
            if move:
                done = selected.box.move(uids, dest)
            else:
                done = selected.box.copy(uids, dest)
            uidvalidity = dest.uidvalidity
        finally:
            if must_close:
                dest.close()
        verb = "Move" if move else "Copy"
        if not done:
            if pairs and not uids:
                return b"", f"{cmd.tag} NO Some of the requested messages no longer exist.\r\n".encode()
            return b"", f"{cmd.tag} OK {verb} completed.\r\n".encode()
        code = f"COPYUID {uidvalidity} {seqset([s for s, _ in done]).decode()} {seqset([d for _, d in done]).decode()}"
        if move:
            return f"* OK [{code}] Moved.\r\n".encode(), f"{cmd.tag} OK {verb} completed.\r\n".encode()
        return b"", f"{cmd.tag} OK [{code}] {verb} completed.\r\n".encode()

    # MOVE must announce the expunges right away (RFC 6851), COPY may not during UID-less commands
    return _selected_job(session, cmd, run, allow_expunge=True)


# -- EXPUNGE / CLOSE / UNSELECT ------------------------------------------------------------


def cmd_expunge(session: ImapSession, cmd: ast.Command) -> list[Event]:
    def run(selected: Selected):  # type: ignore[no-untyped-def]
        if selected.readonly:
            return b"", f"{cmd.tag} NO [READ-ONLY] Mailbox is read-only.\r\n".encode()
        if cmd.uid:
            pairs = resolve(selected, cmd.args[0], True)
            selected.box.expunge([u for _s, u in pairs])
        else:
            selected.box.expunge()
        return b"", f"{cmd.tag} OK Expunge completed.\r\n".encode()

    return _selected_job(session, cmd, run, allow_expunge=True)


def _deselect(session: ImapSession, cmd: ast.Command, expunge: bool) -> list[Event]:
    from retrieval.imap.session import Send

    def job() -> list:
        selected, session.selected = session.selected, None
        session.state = "authenticated"
        if selected is not None:
            try:
                if expunge and not selected.readonly:
                    selected.box.expunge()
            except StoreError:
                pass
            selected.close()
        verb = "Close" if expunge else "Unselect"
        return [Send(f"{cmd.tag} OK {verb} completed.\r\n".encode())]

    return session._job(job)


def cmd_close(session: ImapSession, cmd: ast.Command) -> list[Event]:
    return _deselect(session, cmd, expunge=True)


def cmd_unselect(session: ImapSession, cmd: ast.Command) -> list[Event]:
    return _deselect(session, cmd, expunge=False)


# -- SEARCH ---------------------------------------------------------------------------------


def cmd_search(session: ImapSession, cmd: ast.Command) -> list[Event]:
    program: ast.SearchProgram = cmd.args[0]

    def run(selected: Selected):  # type: ignore[no-untyped-def]
        from retrieval.imap.search import SearchContext, matches
        from retrieval.mime.message import Message

        box = selected.box
        largest_seq = len(selected.uids)
        largest_uid = selected.uids[-1] if selected.uids else 0
        now = time.time()
        found: list[tuple[int, int]] = []
        uses_modseq = _uses_modseq(program.key)
        enabled_now = b""
        if uses_modseq:
            session.enabled.add("CONDSTORE")
            enabled_now = selected.enable_condstore()
        key = _substitute_saved(program.key, selected.search_saved)
        for seq, uid in enumerate(selected.uids, 1):
            if uid not in box:
                continue
            row = box.info(uid)

            def loader(uid: int = uid) -> Message:
                return Message(box.read(uid))

            ctx = SearchContext(
                seq=seq, uid=uid, flags=row.flags, size=row.size, internaldate=row.internaldate,
                savedate=row.savedate, modseq=row.modseq, recent=uid in box.recent, message=loader,
            )
            try:
                if matches(key, ctx, largest_seq, largest_uid, now):
                    found.append((seq, uid))
            except MessageGone:
                continue
        numbers = [u if cmd.uid else s for s, u in found]
        modseq_of = {(u if cmd.uid else s): box.info(u).modseq for s, u in found}
        modseq = max(modseq_of.values(), default=0)
        returns = program.returns
        if returns is not None and "SAVE" in returns:
            selected.search_saved = [u for _s, u in found]
            returns = tuple(r for r in returns if r != "SAVE")
            if not returns and program.returns == ("SAVE",):
                return b"", f"{cmd.tag} OK Search completed.\r\n".encode()
        if returns is None:
            line = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
            if uses_modseq and numbers:
                line += b" (MODSEQ %d)" % modseq
            return enabled_now + line + b"\r\n", f"{cmd.tag} OK Search completed.\r\n".encode()
        returns = returns or ("ALL",)
        parts = [b'* ESEARCH (TAG "' + cmd.tag.encode() + b'")']
        if cmd.uid:
            parts.append(b"UID")
        if numbers:
            if "MIN" in returns:
                parts.append(b"MIN %d" % min(numbers))
            if "MAX" in returns:
                parts.append(b"MAX %d" % max(numbers))
            if "ALL" in returns:
                parts.append(b"ALL " + seqset(numbers))
        if "COUNT" in returns:
            parts.append(b"COUNT %d" % len(numbers))
        if uses_modseq and numbers:
            # RFC 7162 3.2: with only MIN and/or MAX, the MODSEQ of those messages
            if returns and set(returns) <= {"MIN", "MAX"}:
                picked = [min(numbers)] * ("MIN" in returns) + [max(numbers)] * ("MAX" in returns)
                modseq = max(modseq_of[n] for n in picked)
            parts.append(b"MODSEQ %d" % modseq)
        return enabled_now + b" ".join(parts) + b"\r\n", f"{cmd.tag} OK Search completed.\r\n".encode()

    return _selected_job(session, cmd, run, allow_expunge=cmd.uid)


def _substitute_saved(key, saved: list[int]):  # type: ignore[no-untyped-def]
    """SEARCHRES: `$` means the UIDs the last SEARCH ... RETURN (SAVE) found."""
    if not isinstance(key, tuple) or not key:
        return key
    if key[0] in ("SEQ", "UID") and isinstance(key[1], ast.SeqSet) and key[1].saved:
        return ("UID", ast.SeqSet(tuple((u, u) for u in saved)))
    if key[0] == "AND":
        return ("AND", tuple(_substitute_saved(k, saved) for k in key[1]))
    if key[0] in ("NOT", "OR"):
        return (key[0],) + tuple(_substitute_saved(k, saved) for k in key[1:])
    return key


def _uses_modseq(key) -> bool:  # type: ignore[no-untyped-def]
    if not isinstance(key, tuple) or not key:
        return False
    if key[0] == "MODSEQ":
        return True
    return any(_uses_modseq(k) for k in key[1:] if isinstance(k, tuple)) or (
        key[0] == "AND" and any(_uses_modseq(k) for k in key[1])
    )


__all__ = ["flag_list"]

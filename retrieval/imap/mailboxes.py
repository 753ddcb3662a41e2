"""Mailbox-level commands: SELECT/EXAMINE, CREATE, DELETE, RENAME, (UN)SUBSCRIBE,
LIST/LSUB (LIST-EXTENDED, LIST-STATUS, SPECIAL-USE, CHILDREN), STATUS, APPEND."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from retrieval.imap import ast
from retrieval.imap.selected import Selected
from retrieval.imap.wire import flag_list, mailbox as wire_mailbox, quoted, seqset
from retrieval.store import (
    BadMailboxName,
    MailboxExists,
    MailboxNotFound,
    StoreError,
    TemporaryFailure,
)
from retrieval.store import flags as F

if TYPE_CHECKING:
    from retrieval.imap.session import Event, ImapSession


def store_error(tag: str, exc: Exception) -> bytes:
    """One NO line with the RFC 5530 code that fits."""
    code = "SERVERBUG"
    if isinstance(exc, MailboxNotFound):
        code = "NONEXISTENT"
    elif isinstance(exc, MailboxExists):
        code = "ALREADYEXISTS"
    elif isinstance(exc, BadMailboxName):
        code = "CANNOT"
    elif isinstance(exc, TemporaryFailure):
        code = "UNAVAILABLE"
    elif isinstance(exc, StoreError):
        code = "CANNOT"
    return f"{tag} NO [{code}] {exc}\r\n".encode()


def _job_lines(session: ImapSession, cmd: ast.Command, run) -> list[Event]:  # type: ignore[no-untyped-def]
    """Run `run() -> bytes` (the whole answer, tagged line included) with store errors as NO."""
    from retrieval.imap.session import Send

    def job() -> list:
        try:
            data = run()
        except (StoreError, OSError) as exc:
            data = store_error(cmd.tag, exc if isinstance(exc, StoreError) else TemporaryFailure(str(exc)))
        if session.selected is not None:
            # untagged updates go before the tagged reply
            tagged_at = data.rfind(b"\r\n", 0, len(data) - 2) + 2 if data.count(b"\r\n") > 1 else 0
            data = data[:tagged_at] + session.selected.updates(True) + data[tagged_at:]
        return [Send(data)]

    return session._job(job)


def ensure_special_folders(session: ImapSession) -> None:
    """Create Drafts, Sent, Trash, Junk, Archive on first login (configurable)."""
    store = session.store
    existing = set(store.list_folders())
    for name, _use in session.policy.special_use:
        if name not in existing:
            try:
                store.create(name)
                store.subscribe(name)
            except StoreError:
                pass


def special_use_of(session: ImapSession, name: str) -> str | None:
    for folder, use in session.policy.special_use:
        if folder == name:
            return use
    return None


# -- SELECT / EXAMINE -------------------------------------------------------------


def cmd_select(session: ImapSession, cmd: ast.Command) -> list[Event]:
    return _select(session, cmd, readonly=False)


def cmd_examine(session: ImapSession, cmd: ast.Command) -> list[Event]:
    return _select(session, cmd, readonly=True)


def _select(session: ImapSession, cmd: ast.Command, readonly: bool) -> list[Event]:
    from retrieval.imap.session import Send

    name, params = cmd.args
    params = params or ast.SelectParams()

    def job() -> list:
        out = b""
        if session.selected is not None:
            old, session.selected = session.selected, None
            session.state = "authenticated"
            old.close()
            if "QRESYNC" in session.enabled:
                out += b"* OK [CLOSED] Previous mailbox closed.\r\n"
        try:
            box = session.store.open(name, readonly=readonly)
        except (StoreError, OSError) as exc:
            err = exc if isinstance(exc, StoreError) else TemporaryFailure(str(exc))
            return [Send(out + store_error(cmd.tag, err))]
        if params.qresync is not None and "QRESYNC" not in session.enabled:
            box.close()
            return [Send(out + f"{cmd.tag} BAD QRESYNC is not enabled.\r\n".encode())]
        condstore = params.condstore or "CONDSTORE" in session.enabled
        if params.condstore:
            session.enabled.add("CONDSTORE")
        selected = Selected(box, readonly, condstore, "QRESYNC" in session.enabled)
        session.selected = selected
        session.state = "selected"
        keywords = box.keywords()
        flags = list(F.SYSTEM_FLAGS) + keywords
        lines = [b"* FLAGS " + flag_list(flags) + b"\r\n"]
        if readonly:
            lines.append(b"* OK [PERMANENTFLAGS ()] Read-only mailbox.\r\n")
        else:
            lines.append(b"* OK [PERMANENTFLAGS " + flag_list(flags + ["\\*"]) + b"] Flags permitted.\r\n")
        lines.append(b"* %d EXISTS\r\n" % len(selected))
        lines.append(b"* %d RECENT\r\n" % selected.recent_count())
        first_unseen = next((i for i, uid in enumerate(selected.uids, 1) if F.SEEN not in box.info(uid).flags), None)
        if first_unseen is not None:
            lines.append(b"* OK [UNSEEN %d] First unseen.\r\n" % first_unseen)
        lines.append(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % box.uidvalidity)
        lines.append(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % box.uidnext)
        lines.append(b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % box.highestmodseq)
        if params.qresync is not None:
            lines.append(_qresync(selected, params.qresync))
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        verb = "Examine" if readonly else "Select"
        lines.append(f"{cmd.tag} OK [{mode}] {verb} completed.\r\n".encode())
        return [Send(out + b"".join(lines))]

    return session._job(job)


def _qresync(selected: Selected, params) -> bytes:  # type: ignore[no-untyped-def]
    """RFC 7162 3.2.5: what changed since the client's modseq, if its UIDVALIDITY still holds."""
    uidvalidity, modseq, known, _match = params
    box = selected.box
    if uidvalidity != box.uidvalidity:
        return b""
    largest = box.uidnext - 1
    out = b""
    gone = [uid for uid, _m in box.index.expunged_since(box.state.id, modseq)
            if known is None or known.contains(uid, largest)]
    if gone:
        out += b"* VANISHED (EARLIER) " + seqset(sorted(set(gone))) + b"\r\n"
    for uid in selected.uids:
        row = box.info(uid)
        if row.modseq > modseq:
            seq = selected.seq_of(uid)
            assert seq is not None
            out += selected.fetch_flags_line(seq, uid, include_uid=True)
    return out


# -- CREATE / DELETE / RENAME / SUBSCRIBE ----------------------------------------------


def _strip_separator(session: ImapSession, name: str) -> str:
    sep = session.store.separator
    return name[: -len(sep)] if name.endswith(sep) and len(name) > len(sep) else name


def cmd_create(session: ImapSession, cmd: ast.Command) -> list[Event]:
    name = cmd.args[0]

    def run() -> bytes:
        target = _strip_separator(session, name)
        if target.upper() == "INBOX":
            raise MailboxExists("INBOX already exists")
        session.store.create(target, directory=target != name)
        return f"{cmd.tag} OK Create completed.\r\n".encode()

    return _job_lines(session, cmd, run)


def cmd_delete(session: ImapSession, cmd: ast.Command) -> list[Event]:
    name = cmd.args[0]

    def run() -> bytes:
        if name.upper() == "INBOX":
            raise StoreError("INBOX can't be deleted.")
        if session.selected is not None and session.selected.box.name == name:
            old, session.selected = session.selected, None
            session.state = "authenticated"
            old.close()
        session.store.delete(name)  # subscriptions stay (RFC 3501 6.3.4)
        return f"{cmd.tag} OK Delete completed.\r\n".encode()

    return _job_lines(session, cmd, run)


def cmd_rename(session: ImapSession, cmd: ast.Command) -> list[Event]:
    old, new = cmd.args

    def run() -> bytes:
        session.store.rename(old, _strip_separator(session, new))
        return f"{cmd.tag} OK Rename completed.\r\n".encode()

    return _job_lines(session, cmd, run)


def cmd_subscribe(session: ImapSession, cmd: ast.Command) -> list[Event]:
    def run() -> bytes:
        from retrieval.store import names

        session.store.subscribe(names.validate(cmd.args[0], session.store.separator))
        return f"{cmd.tag} OK Subscribe completed.\r\n".encode()

    return _job_lines(session, cmd, run)


def cmd_unsubscribe(session: ImapSession, cmd: ast.Command) -> list[Event]:
    def run() -> bytes:
        session.store.unsubscribe(cmd.args[0])
        return f"{cmd.tag} OK Unsubscribe completed.\r\n".encode()

    return _job_lines(session, cmd, run)


# -- LIST / LSUB -----------------------------------------------------------------------


def pattern_regex(pattern: str, separator: str) -> re.Pattern[str]:
    out = []
    for ch in pattern:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append(f"[^{re.escape(separator)}]*")
        else:
            out.append(re.escape(ch))
    text = "".join(out)
    # INBOX is case-insensitive, also as the first level of a pattern
    if pattern[:5].upper() == "INBOX":
        text = "(?i:INBOX)" + "".join(out[5:])
    return re.compile(text + r"\Z", re.S)


def _all_names(session: ImapSession) -> tuple[list[str], set[str]]:
    """Existing folders, plus parents that exist only as hierarchy levels (\\Noselect)."""
    sep = session.store.separator
    real = session.store.list_folders()
    real_set = set(real)
    implied: set[str] = set()
    for name in real:
        parts = name.split(sep)
        for i in range(1, len(parts)):
            parent = sep.join(parts[:i])
            if parent not in real_set:
                implied.add(parent)
    return sorted(real_set | implied, key=lambda n: (n != "INBOX", n)), implied


def cmd_list(session: ImapSession, cmd: ast.Command) -> list[Event]:
    req: ast.ListRequest = cmd.args[0]

    def run() -> bytes:
        store = session.store
        sep = store.separator
        sep_q = quoted(sep)
        if req.patterns == ("",) and not req.select_options:
            return b"* LIST (\\Noselect) " + sep_q + b' ""\r\n' + f"{cmd.tag} OK List completed.\r\n".encode()
        names, implied = _all_names(session)
        existing = set(names) - implied
        subscribed = set(store.subscriptions())
        select = set(req.select_options)
        returns = set(req.return_options)
        only_subscribed = "SUBSCRIBED" in select
        show_subscribed = only_subscribed or "SUBSCRIBED" in returns
        recursive = "RECURSIVEMATCH" in select
        regexes = [pattern_regex(req.reference + p, sep) for p in req.patterns]

        def matches(name: str) -> bool:
            return any(r.match(name) for r in regexes)

        # name -> extended data (CHILDINFO for RECURSIVEMATCH)
        results: dict[str, bytes] = {}
        pool = subscribed if only_subscribed else set(names)
        for name in pool:
            if matches(name):
                results[name] = b""
        if recursive and only_subscribed:
            # RFC 5258 3.5: a parent that matches is returned with CHILDINFO when a
            # subscribed descendant does not match the pattern itself
            for name in subscribed:
                if matches(name):
                    continue
                parts = name.split(sep)
                for i in range(1, len(parts)):
                    parent = sep.join(parts[:i])
                    if matches(parent):
                        results[parent] = b' ("CHILDINFO" ("SUBSCRIBED"))'
        lines: list[bytes] = []
        for name in sorted(results, key=lambda n: (n != "INBOX", n)):
            attrs: list[str] = []
            if name not in existing:
                if name in implied:
                    attrs.append("\\Noselect")
                else:
                    attrs.append("\\NonExistent")
            if name in existing or name in implied:
                has_children = any(n.startswith(name + sep) for n in names)
                attrs.append("\\HasChildren" if has_children else "\\HasNoChildren")
            if show_subscribed and name in subscribed:
                attrs.append("\\Subscribed")
            use = special_use_of(session, name) if name in existing else None
            if use:
                attrs.append(use)
            elif "SPECIAL-USE" in select:
                continue
            lines.append(b"* LIST (" + " ".join(attrs).encode() + b") " + sep_q + b" " + wire_mailbox(name)
                         + results[name] + b"\r\n")
            if req.status_items and name in existing:
                lines.append(_status_line(session, name, req.status_items))
        return b"".join(lines) + f"{cmd.tag} OK List completed.\r\n".encode()

    return _job_lines(session, cmd, run)


def cmd_lsub(session: ImapSession, cmd: ast.Command) -> list[Event]:
    reference, pattern = cmd.args

    def run() -> bytes:
        store = session.store
        sep = store.separator
        regex = pattern_regex(reference + pattern, sep)
        subscribed = set(store.subscriptions())
        found: dict[str, bool] = {}  # name -> \Noselect
        for name in subscribed:
            if regex.match(name):
                found[name] = False
                continue
            # RFC 3501 6.3.9: "%" reaching a parent of a subscribed name returns the parent
            parts = name.split(sep)
            for i in range(1, len(parts)):
                parent = sep.join(parts[:i])
                if parent not in subscribed and regex.match(parent):
                    found.setdefault(parent, True)
        lines = []
        for name in sorted(found, key=lambda n: (n != "INBOX", n)):
            attrs = "\\Noselect" if found[name] else ""
            lines.append(b"* LSUB (" + attrs.encode() + b") " + quoted(sep) + b" " + wire_mailbox(name) + b"\r\n")
        return b"".join(lines) + f"{cmd.tag} OK Lsub completed.\r\n".encode()

    return _job_lines(session, cmd, run)


# -- STATUS -------------------------------------------------------------------------------


def _status_line(session: ImapSession, name: str, items: tuple[str, ...]) -> bytes:
    selected = session.selected
    if selected is not None and selected.box.name == name:
        status = selected.box.status()
    else:
        status = session.store.status(name)
    values = {
        "MESSAGES": status.messages,
        "RECENT": status.recent,
        "UIDNEXT": status.uidnext,
        "UIDVALIDITY": status.uidvalidity,
        "UNSEEN": status.unseen,
        "SIZE": status.size,
        "HIGHESTMODSEQ": status.highestmodseq,
    }
    parts = [f"{item} {values[item]}" for item in items if item in values]
    return b"* STATUS " + wire_mailbox(name) + b" (" + " ".join(parts).encode() + b")\r\n"


def cmd_status(session: ImapSession, cmd: ast.Command) -> list[Event]:
    name, items = cmd.args

    def run() -> bytes:
        items_upper = tuple(i.upper() for i in items)
        if "HIGHESTMODSEQ" in items_upper:
            session.enabled.add("CONDSTORE")
        return _status_line(session, name, items_upper) + f"{cmd.tag} OK Status completed.\r\n".encode()

    return _job_lines(session, cmd, run)


# -- APPEND ---------------------------------------------------------------------------------


def cmd_append(session: ImapSession, cmd: ast.Command) -> list[Event]:
    name, messages = cmd.args

    def run() -> bytes:
        store = session.store
        selected = session.selected
        try:
            box = selected.box if selected is not None and selected.box.name == name else store.open(name)
        except MailboxNotFound:
            return f"{cmd.tag} NO [TRYCREATE] Mailbox doesn't exist: {name}\r\n".encode()
        try:
            uids = []
            for message in messages:
                if not message.data:
                    return f"{cmd.tag} NO Can't save a zero byte message.\r\n".encode()
                when = message.internaldate.timestamp() if message.internaldate else None
                uids.append(box.append(message.data, message.flags, when))
            code = f"APPENDUID {box.uidvalidity} {seqset(uids).decode()}"
        finally:
            if selected is None or box is not selected.box:
                box.close()
        return f"{cmd.tag} OK [{code}] Append completed.\r\n".encode()

    return _job_lines(session, cmd, run)

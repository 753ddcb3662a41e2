"""Property: two processes doing random store operations never lose or duplicate a message.

Each message body carries a unique id. Two worker processes (each with its
own store, index connection and view) get operations in a random order and,
in some steps, at the same time; an MDA also drops mail into the folder. At
the end, both views and a fresh process agree, and the set of ids present is
exactly what was appended or delivered minus what was expunged.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(__file__))
from conftest import Site  # noqa: E402

ID_RE = re.compile(rb"X-Test-Id: (\d+)")


def message(test_id: int) -> bytes:
    return b"Subject: property\r\nX-Test-Id: %d\r\n\r\nbody %d\r\n" % (test_id, test_id)


def worker(conn, config_path: str, passwd_path: str) -> None:  # type: ignore[no-untyped-def]
    from retrieval.auth.passwd import PasswdFile
    from retrieval.config import load_config
    from retrieval.store import MessageGone, open_user_store

    config = load_config(config_path)
    store = open_user_store(config, PasswdFile(passwd_path).lookup("alice"))
    box = store.open("INBOX")
    seen_uid: dict[int, int] = {}  # test id -> uid, must never change
    while True:
        op, arg = conn.recv()
        try:
            if op == "stop":
                store.close()
                conn.send(("ok", None))
                return
            if op == "append":
                uid = box.append(message(arg), ["\\Seen"] if arg % 3 == 0 else [])
                result = uid
            elif op == "delete":
                uids = box.uids()
                if uids:
                    target = uids[arg % len(uids)]
                    box.store_flags([target], ["\\Deleted"], "add")
                result = None
            elif op == "expunge":
                result = box.expunge()
            elif op == "flag":
                uids = box.uids()
                if uids:
                    box.store_flags([uids[arg % len(uids)]], ["$Keyword%d" % (arg % 3), "\\Flagged"], "add")
                result = None
            elif op == "sync":
                box.sync(claim_recent=bool(arg % 2))
                result = None
            elif op == "snapshot":
                box.sync()
                ids = {}
                for uid in box.uids():
                    try:
                        data = box.read(uid)
                    except MessageGone:
                        continue
                    test_id = int(ID_RE.search(data).group(1))  # type: ignore[union-attr]
                    assert test_id not in ids, f"duplicate message {test_id}"
                    ids[test_id] = uid
                    if test_id in seen_uid:
                        assert seen_uid[test_id] == uid, f"UID of {test_id} changed"
                    seen_uid[test_id] = uid
                result = ids
            else:
                raise AssertionError(op)
            conn.send(("ok", result))
        except Exception as exc:  # report, keep serving
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


operation = st.one_of(
    st.tuples(st.sampled_from(["A", "B", "both"]), st.just("append")),
    st.tuples(st.sampled_from(["A", "B"]), st.sampled_from(["delete", "expunge", "flag", "sync"])),
    st.tuples(st.just("mda"), st.just("deliver")),
)


def run_scenario(site: Site, ops: list[tuple[str, str]], selectors: list[int]) -> None:
    from retrieval.store.location import for_user, parse_mail_location
    from retrieval.store.deliver import deliver_message

    ctx = multiprocessing.get_context("fork")
    pipes = {}
    procs = []
    for name in ("A", "B"):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=worker, args=(child, str(site.config), str(site.passwd)))
        proc.start()
        pipes[name] = parent
        procs.append(proc)
    location = for_user(parse_mail_location(site.mail_location), "alice", str(site.home("alice")))
    next_id = 0
    alive: set[int] = set()
    expunged: set[int] = set()

    def call(name: str, op: str, arg: int = 0):  # type: ignore[no-untyped-def]
        pipes[name].send((op, arg))
        return pipes[name]

    def answer(pipe):  # type: ignore[no-untyped-def]
        if not pipe.poll(60):
            raise AssertionError("worker did not answer in 60 s")
        status, value = pipe.recv()
        assert status == "ok", value
        return value

    try:
        for (who, op), sel in zip(ops, selectors):
            if op == "deliver":
                next_id += 1
                assert deliver_message(location, "alice", message(next_id)).code == 0
                alive.add(next_id)
            elif op == "append":
                names = ["A", "B"] if who == "both" else [who]
                pending = []
                for name in names:  # "both": two appends in flight at the same time
                    next_id += 1
                    alive.add(next_id)
                    pending.append(call(name, "append", next_id))
                for pipe in pending:
                    answer(pipe)
            else:
                answer(call(who, op, sel))
                if op == "expunge":
                    # learn which ids went away from the worker's own view
                    snap = answer(call(who, "snapshot"))
                    gone = alive - set(snap)
                    expunged |= gone
                    alive -= gone
        snap_a = answer(call("A", "snapshot"))
        snap_b = answer(call("B", "snapshot"))
        assert snap_a == snap_b
        assert set(snap_a) == alive
        assert not (set(snap_a) & expunged)
        assert len(set(snap_a.values())) == len(snap_a)
    finally:
        for name in pipes:
            try:
                pipes[name].send(("stop", 0))
            except OSError:
                pass
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    # a fresh process (and a fresh view) agrees
    store = site.store("alice")
    box = store.open("INBOX")
    fresh = {int(ID_RE.search(box.read(uid)).group(1)): uid for uid in box.uids()}  # type: ignore[union-attr]
    assert fresh == snap_a
    store.close()


@pytest.mark.parametrize("layout", ["maildir", "mbox"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=25), selectors=st.lists(st.integers(0, 1000), min_size=25, max_size=25))
def test_two_processes_never_lose_or_duplicate(tmp_path_factory, layout, ops, selectors):
    base = tmp_path_factory.mktemp(layout)
    if layout == "maildir":
        site = Site(base)
    else:
        spool = base / "spool"
        spool.mkdir()
        site = Site(base, f"mbox:~/mail:INBOX={spool}/%u")
    site.add_user("alice")
    run_scenario(site, ops, selectors)

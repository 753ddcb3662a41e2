"""IMAP conformance against peers: Dovecot's answers (the oracle) and imaptest's scripts.

Both tools live in ../shared/conformance (beside the project, in CI too); a
user's checkout has no ../shared, and then these tests skip with a message.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import SHARED, Server, site_for

ORACLE = SHARED / "conformance" / "oracle"
IMAPSCRIPT = SHARED / "conformance" / "imapscript"

# imaptest files we knowingly fail, with the reason (see docs/conformance.md)
KNOWN_IMAPSCRIPT_FAILURES = {
    "append-binary": "we store APPENDed literal8 bodies with normalized line ends; Dovecot keeps the raw bytes",
}
# mbox: a file holds messages or (as a directory) children, never both; Dovecot's mbox is the same
KNOWN_MBOX_FAILURES = {
    "list": "creates children under a mailbox that holds messages",
    "subscribe": "creates children under a mailbox that holds messages",
}


@pytest.fixture(params=["maildir", "mbox"])
def server(request, tmp_path):  # type: ignore[no-untyped-def]
    site = site_for(tmp_path, request.param)
    site.add_user("alice")
    site.add_user("bob")
    srv = Server(site, protocols=("imap",)).start()
    srv.layout = request.param  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def test_dovecot_oracle(server, tmp_path):
    if not ORACLE.is_dir():
        pytest.skip(f"{ORACLE} is absent (it is beside the project in CI, not in a user's checkout)")
    out = tmp_path / "capture.json"
    capture = subprocess.run(
        [sys.executable, "capture.py", "--host", "127.0.0.1", "--port", str(server.ports["imap"]),
         "--user", "alice", "--password", "secret", "--out", str(out), "--label", "retrieval"],
        cwd=ORACLE, capture_output=True, text=True, timeout=900,
    )
    assert capture.returncode == 0, capture.stdout[-3000:] + capture.stderr[-3000:]
    compare = subprocess.run(
        [sys.executable, "compare.py", "golden/dovecot-2.3.19.json", str(out), "--skip", "dovecot-quirks.txt"],
        cwd=ORACLE, capture_output=True, text=True, timeout=300,
    )
    print(compare.stdout[-5000:])
    total = re.search(r"(\d+) passed, (\d+) failed", compare.stdout)
    assert total is not None, compare.stdout[-2000:] + compare.stderr[-2000:]
    failures = [line for line in compare.stdout.splitlines() if line.startswith("FAIL")]
    if server.layout == "mbox":
        # The same storage choices Dovecot's own mbox makes (golden/mbox-vs-maildir.txt):
        # a final newline is stored, a leading From_ line is the separator, status headers hide.
        allowed = set((ORACLE / "golden" / "mbox-vs-maildir.txt").read_text().splitlines())
        failures = [f for f in failures if f not in allowed and not _storage_item(f, allowed)]
    assert failures == [], "\n".join(failures[:50])


def _storage_item(line: str, allowed: set[str]) -> bool:
    """A failing item that Dovecot's own mbox storage also fails (same message and query)."""
    head = line.split(":", 1)[0]
    return any(a.split(":", 1)[0] == head for a in allowed)


def test_imaptest_scripts(server):
    if not IMAPSCRIPT.is_dir():
        pytest.skip(f"{IMAPSCRIPT} is absent (it is beside the project in CI, not in a user's checkout)")
    result = subprocess.run(
        [sys.executable, "run.py", "--host", "127.0.0.1", "--port", str(server.ports["imap"]),
         "--user", "alice", "--password", "secret", "--user2", "bob", "--password2", "secret", "tests/"],
        cwd=IMAPSCRIPT, capture_output=True, text=True, timeout=900,
    )
    print(result.stdout)
    failed = {m.group(1): m.group(2) for m in re.finditer(r"^FAIL (\S+): (.*)$", result.stdout, re.M)}
    known = dict(KNOWN_IMAPSCRIPT_FAILURES)
    if server.layout == "mbox":
        known.update(KNOWN_MBOX_FAILURES)
    unexpected = {name: why for name, why in failed.items() if name not in known}
    assert not unexpected, "\n".join(f"{k}: {v}" for k, v in unexpected.items())
    assert re.search(r"^\d+ passed, \d+ failed, \d+ skipped$", result.stdout, re.M), result.stdout[-2000:]

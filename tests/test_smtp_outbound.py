"""Remote delivery against SMTP sinks and a DNS server of our own on loopback (tests/smtp_peers.py).

The relay side runs as `python -m retrieval.smtp.outbound` (a real process with
its own reactor, as the queue runner will be); its JSON says what became of
each recipient, the sinks' files say what arrived where.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Site
from smtp_peers import RemotePeers, mx_zone

MESSAGE = b"From: a@sender.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nHello there.\r\n"


def run_outbound(site: Site, *recipients: str, sender: str = "a@sender.test", message: bytes = MESSAGE,
                 extra: list[str] | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "retrieval.smtp.outbound", "--config", str(site.config), "--from", sender,
         *[arg for r in recipients for arg in ("--to", r)], *(extra or [])],
        input=message, capture_output=True, timeout=120, env=os.environ.copy(),
    )
    assert proc.returncode in (0, 69, 75), proc.stderr.decode()
    return json.loads(proc.stdout)


@pytest.fixture
def relay(tmp_path: Path):  # type: ignore[no-untyped-def]
    """(site, peers): a config whose [smtp] points at the peers; zone example.test with MX 10 .2, 20 .3."""
    site = Site(tmp_path)
    with RemotePeers(tmp_path, mx_zone("example.test", [(10, "127.0.0.2"), (20, "127.0.0.3")])) as peers:
        site.write_config("[smtp]\n" + peers.smtp_config())
        yield site, peers


def test_best_mx_gets_the_mail(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2")
    peers.sink("127.0.0.3")
    out = run_outbound(site, "b@example.test")
    assert out["b@example.test"]["ok"] and out["b@example.test"]["code"] == 250
    assert out["b@example.test"]["remote_mta"] == "mx-127-0-0-2.example.test"
    [m] = peers.sink("127.0.0.2").messages()
    assert m.sender == "a@sender.test" and m.recipients == ["b@example.test"]
    assert m.data == MESSAGE
    assert peers.sink("127.0.0.3").messages() == []

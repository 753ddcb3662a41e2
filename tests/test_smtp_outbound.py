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


def test_equal_preferences_share_the_load(tmp_path: Path) -> None:
    """RFC 5321 5.1: hosts of equal preference in random order; 20 domains, each picks on its own."""
    site = Site(tmp_path)
    zone: dict = {}
    for i in range(20):
        zone.update(mx_zone(f"d{i}.test", [(10, "127.0.0.2"), (10, "127.0.0.3")]))
    with RemotePeers(tmp_path, zone) as peers:
        site.write_config("[smtp]\n" + peers.smtp_config())
        peers.sink("127.0.0.2")
        peers.sink("127.0.0.3")
        out = run_outbound(site, *[f"u@d{i}.test" for i in range(20)])
        assert all(v["ok"] for v in out.values()) and len(out) == 20
        first, second = peers.sink("127.0.0.2").messages(), peers.sink("127.0.0.3").messages()
        assert len(first) + len(second) == 20
        assert first and second
        assert sorted(r for m in first + second for r in m.recipients) == sorted(out)


def test_first_mx_down_second_takes_it(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.3")  # nothing listens on .2
    out = run_outbound(site, "b@example.test")
    assert out["b@example.test"]["ok"]
    assert out["b@example.test"]["remote_mta"] == "mx-127-0-0-3.example.test"
    assert [m.recipients for m in peers.sink("127.0.0.3").messages()] == [["b@example.test"]]


def test_first_mx_421_greeting_second_takes_it(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2", greeting=421)
    peers.sink("127.0.0.3")
    out = run_outbound(site, "b@example.test")
    assert out["b@example.test"]["ok"] and out["b@example.test"]["remote_address"] == "127.0.0.3"
    assert peers.sink("127.0.0.2").messages() == []
    assert len(peers.sink("127.0.0.3").messages()) == 1


def test_first_mx_554_greeting_is_skipped_not_bounced(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2", greeting=554)
    peers.sink("127.0.0.3", greeting=554)
    out = run_outbound(site, "b@example.test")
    r = out["b@example.test"]
    assert not r["ok"] and not r["permanent"] and r["code"] == 451 and "554" in r["text"]


def test_first_mx_tls_handshake_fails_second_takes_it(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2", starttls="broken")
    peers.sink("127.0.0.3", starttls=True)
    out = run_outbound(site, "b@example.test")
    assert out["b@example.test"]["ok"] and out["b@example.test"]["remote_address"] == "127.0.0.3"
    [m] = peers.sink("127.0.0.3").messages()
    assert m.tls


def test_all_mx_down_is_temporary(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    out = run_outbound(site, "b@example.test", "c@example.test")
    for r in out.values():
        assert not r["ok"] and not r["permanent"] and 400 <= r["code"] < 500
        assert r["remote_mta"] == "mx-127-0-0-3.example.test"  # the last one tried
        assert "refused" in r["text"].lower()


def test_recipient_550_is_permanent_others_delivered(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2", rcpt={"nobody@example.test": 550, "busy@example.test": 451})
    peers.sink("127.0.0.3")
    out = run_outbound(site, "b@example.test", "nobody@example.test", "busy@example.test", "c@example.test")
    assert out["nobody@example.test"]["permanent"] and out["nobody@example.test"]["status"] == "5.1.1"
    assert out["busy@example.test"]["code"] == 451 and not out["busy@example.test"]["permanent"]
    assert out["busy@example.test"]["remote_mta"] == "mx-127-0-0-2.example.test"
    assert out["b@example.test"]["ok"] and out["c@example.test"]["ok"]
    [m] = peers.sink("127.0.0.2").messages()
    assert m.recipients == ["b@example.test", "c@example.test"]
    assert peers.sink("127.0.0.3").messages() == []  # a recipient's 4xx waits for the queue, not the next MX


def test_no_mx_falls_back_to_a_record(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.zone({"plain.test": [("A", "127.0.0.4")]})
    peers.sink("127.0.0.4")
    out = run_outbound(site, "b@plain.test")
    assert out["b@plain.test"]["ok"] and out["b@plain.test"]["remote_mta"] == "plain.test"
    assert len(peers.sink("127.0.0.4").messages()) == 1


def test_null_mx_is_permanent_5_1_10(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.zone({"nullmx.test": [("MX", 0, "."), ("A", "127.0.0.4")]})
    peers.sink("127.0.0.4")
    out = run_outbound(site, "b@nullmx.test")
    assert out["b@nullmx.test"]["permanent"] and out["b@nullmx.test"]["status"] == "5.1.10"
    assert peers.sink("127.0.0.4").messages() == []


def test_nxdomain_is_permanent_5_1_2(relay) -> None:  # type: ignore[no-untyped-def]
    site, _peers = relay
    out = run_outbound(site, "b@nowhere.test")
    r = out["b@nowhere.test"]
    assert r["permanent"] and r["status"] == "5.1.2" and "not found" in r["text"]
    assert r["remote_mta"] is None


def test_servfail_is_temporary_4_4_3(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.zone({"broken.test": "SERVFAIL"})
    out = run_outbound(site, "b@broken.test")
    r = out["b@broken.test"]
    assert not r["ok"] and not r["permanent"] and r["status"] == "4.4.3"


def test_mx_pointing_at_ourselves_is_a_loop(relay) -> None:  # type: ignore[no-untyped-def]
    """The Site's hostname is mail.example.test: an MX list whose best host is us loops (5.4.6)."""
    site, peers = relay
    peers.zone({"loop.test": [("MX", 10, "mail.example.test"), ("MX", 20, "mx2.loop.test")],
                "mail.example.test": [("A", "127.0.0.6")], "mx2.loop.test": [("A", "127.0.0.4")]})
    peers.sink("127.0.0.4")
    peers.sink("127.0.0.6")
    out = run_outbound(site, "b@loop.test")
    assert out["b@loop.test"]["permanent"] and out["b@loop.test"]["status"] == "5.4.6"
    assert peers.sink("127.0.0.4").messages() == [] and peers.sink("127.0.0.6").messages() == []


def test_address_literal_goes_straight_there(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.4")
    out = run_outbound(site, "b@[127.0.0.4]")
    assert out["b@[127.0.0.4]"]["ok"] and out["b@[127.0.0.4]"]["remote_mta"] == "[127.0.0.4]"
    assert peers.sink("127.0.0.4").messages()[0].recipients == ["b@[127.0.0.4]"]


def test_starttls_is_used_when_offered(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2", starttls=True)
    out = run_outbound(site, "b@example.test")
    assert out["b@example.test"]["ok"]
    [m] = peers.sink("127.0.0.2").messages()
    assert m.tls and m.esmtp and m.helo == "mail.example.test" and m.data == MESSAGE


def test_pipelining_peer_gets_the_envelope_in_one_go(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2", pipelining=True)
    run_outbound(site, "b@example.test", "c@example.test")
    [m] = peers.sink("127.0.0.2").messages()
    assert m.max_commands_per_read == 4  # MAIL, RCPT, RCPT, DATA in one write (RFC 2920)


def test_lockstep_peer_gets_one_command_at_a_time(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2", pipelining=False)
    out = run_outbound(site, "b@example.test", "c@example.test")
    assert all(r["ok"] for r in out.values())
    [m] = peers.sink("127.0.0.2").messages()
    assert m.max_commands_per_read == 1 and m.recipients == ["b@example.test", "c@example.test"]


def test_helo_when_ehlo_is_refused(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2", ehlo=False)
    out = run_outbound(site, "b@example.test")
    assert out["b@example.test"]["ok"]
    [m] = peers.sink("127.0.0.2").messages()
    assert not m.esmtp and m.mail_params == "" and m.data == MESSAGE


def test_dot_stuffing_and_8bit_round_trip_byte_exact(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2")
    message = (b".starts with a dot\r\nFrom: a@sender.test\r\nSubject: dots\r\n\r\n.\r\n..\r\n...\r\n"
               b". space\r\nmid.dle\r\n\xc3\xa9t\xc3\xa9 8-bit\r\n\r\n.\r\nx" * 3 + b"\r\n")
    out = run_outbound(site, "b@example.test", message=message)
    assert out["b@example.test"]["ok"]
    [m] = peers.sink("127.0.0.2").messages()
    assert m.data == message
    assert "BODY=8BITMIME" in m.mail_params and f"SIZE={len(message)}" in m.mail_params


def test_seven_bit_message_declares_no_body(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2")
    run_outbound(site, "b@example.test")
    [m] = peers.sink("127.0.0.2").messages()
    assert "BODY=" not in m.mail_params


def test_message_over_peer_size_is_permanent_5_3_4(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2", size=40)
    out = run_outbound(site, "b@example.test")
    assert out["b@example.test"]["permanent"] and out["b@example.test"]["status"] == "5.3.4"
    assert peers.sink("127.0.0.2").messages() == []


def test_smtputf8_required_but_not_offered_is_5_6_7(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2", smtputf8=False)
    out = run_outbound(site, "jörg@example.test")
    assert out["jörg@example.test"]["permanent"] and out["jörg@example.test"]["status"] == "5.6.7"
    peers.sink("127.0.0.2", smtputf8=True)
    out = run_outbound(site, "jörg@example.test", extra=["--smtputf8"])
    assert out["jörg@example.test"]["ok"]
    [m] = peers.sink("127.0.0.2").messages()
    assert "SMTPUTF8" in m.mail_params.split() and m.recipients == ["jörg@example.test"]


def test_dsn_parameters_pass_through_when_offered(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2", dsn=True)
    run_outbound(site, "b@example.test", extra=["--notify", "FAILURE,DELAY", "--envid", "QX123", "--ret", "HDRS"])
    [m] = peers.sink("127.0.0.2").messages()
    assert "RET=HDRS" in m.mail_params.split() and "ENVID=QX123" in m.mail_params.split()
    assert m.rcpt_params == ["NOTIFY=FAILURE,DELAY"]
    peers.sink("127.0.0.2", dsn=False)
    run_outbound(site, "b@example.test", extra=["--notify", "FAILURE", "--envid", "QX124", "--ret", "HDRS"])
    m = peers.sink("127.0.0.2").messages()[-1]
    assert "RET=" not in m.mail_params and "ENVID=" not in m.mail_params and m.rcpt_params == [""]


def test_null_sender_for_bounces(relay) -> None:  # type: ignore[no-untyped-def]
    site, peers = relay
    peers.sink("127.0.0.2")
    out = run_outbound(site, "b@example.test", sender="")
    assert out["b@example.test"]["ok"]
    assert peers.sink("127.0.0.2").messages()[0].sender == ""


def test_per_domain_concurrency_limit(tmp_path: Path) -> None:
    """max_per_domain = 2: six copies at once, never more than two sessions at the sink."""
    site = Site(tmp_path)
    with RemotePeers(tmp_path, mx_zone("example.test", [(10, "127.0.0.2")])) as peers:
        site.write_config("[smtp]\n" + peers.smtp_config() + "max_per_domain = 2\n")
        peers.sink("127.0.0.2", data_delay=0.3)
        out = run_outbound(site, "b@example.test", extra=["--copies", "6"])
        assert out["b@example.test"]["ok"]
        messages = peers.sink("127.0.0.2").messages()
        assert len(messages) == 6
        assert max(m.concurrent for m in messages) == 2


def _relay_site(tmp_path: Path, peers: RemotePeers, relayhost: str, password: str = "s3cret") -> Site:
    site = Site(tmp_path)
    secret = tmp_path / "relay.secret"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    site.write_config("[smtp]\n" + peers.smtp_config()
                      + f'relayhost = "{relayhost}"\nrelayhost_user = "relayuser"\nrelayhost_password_file = "{secret}"\n')
    return site


def test_relayhost_with_auth_plain_over_starttls(tmp_path: Path) -> None:
    with RemotePeers(tmp_path, mx_zone("example.test", [(10, "127.0.0.2")])) as peers:
        site = _relay_site(tmp_path, peers, f"[127.0.0.5]:{peers.smtp_port}")
        peers.sink("127.0.0.2")
        peers.sink("127.0.0.5", starttls=True, auth=("relayuser", "s3cret"))
        out = run_outbound(site, "b@example.test", "x@far.test", "y@nowhere.test")
        assert all(r["ok"] and r["remote_mta"] == "[127.0.0.5]" for r in out.values()), out
        [m] = peers.sink("127.0.0.5").messages()
        assert m.tls and m.auth == "relayuser" and sorted(m.recipients) == ["b@example.test", "x@far.test", "y@nowhere.test"]
        assert peers.sink("127.0.0.2").messages() == []  # no MX lookup: everything through the relayhost


def test_relayhost_by_name_and_wrong_password(tmp_path: Path) -> None:
    """ "host:port" without brackets looks up the MX of host; a refused AUTH keeps the mail (temporary)."""
    zone = mx_zone("relay.test", [(10, "127.0.0.5")])
    with RemotePeers(tmp_path, zone) as peers:
        site = _relay_site(tmp_path, peers, f"relay.test:{peers.smtp_port}", password="wrong")
        peers.sink("127.0.0.5", starttls=True, auth=("relayuser", "s3cret"))
        out = run_outbound(site, "x@far.test")
        r = out["x@far.test"]
        assert not r["ok"] and not r["permanent"] and "authentication failed" in r["text"].lower()
        assert r["remote_mta"] == "mx-127-0-0-5.relay.test"
        assert peers.sink("127.0.0.5").messages() == []


def test_relayhost_without_tls_gets_no_password(tmp_path: Path) -> None:
    with RemotePeers(tmp_path) as peers:
        site = _relay_site(tmp_path, peers, f"[127.0.0.5]:{peers.smtp_port}")
        peers.sink("127.0.0.5", starttls=False, auth=("relayuser", "s3cret"))
        out = run_outbound(site, "x@far.test")
        r = out["x@far.test"]
        assert not r["ok"] and not r["permanent"] and r["status"] == "4.7.0"
        assert peers.sink("127.0.0.5").messages() == []


# -- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "parsed"), [
    ("[smtp.example.net]:587", ("smtp.example.net", 587, False)),
    ("[192.0.2.1]", ("192.0.2.1", None, False)),
    ("[2001:db8::1]:25", ("2001:db8::1", 25, False)),
    ("example.net", ("example.net", None, True)),
    ("example.net:2525", ("example.net", 2525, True)),
])
def test_relayhost_syntax(text: str, parsed: tuple) -> None:
    from retrieval.config import parse_relayhost

    assert parse_relayhost(text) == parsed


def test_bad_outbound_settings_are_reported(site: Site) -> None:
    from conftest import run_cli

    site.write_config('[smtp]\nrelayhost = "[smtp.example.net:587"\nremote_port = 70000\nrelayhost_user = "u"\n')
    result = run_cli("check", "--config", str(site.config))
    out = result.stdout.decode()
    assert result.returncode == 1
    assert "smtp.relayhost" in out and "[host]:port" in out
    assert "smtp.remote_port" in out and "1..65535" in out
    assert "relayhost_password_file" in out


def test_check_wants_the_relayhost_password_file_private(site: Site) -> None:
    from conftest import run_cli

    secret = site.base / "relay.secret"
    secret.write_text("pw\n")
    secret.chmod(0o644)
    site.write_config(f'[smtp]\nrelayhost = "[smtp.example.net]:587"\nrelayhost_user = "u"\n'
                      f'relayhost_password_file = "{secret}"\n')
    result = run_cli("check", "--config", str(site.config))
    assert result.returncode == 1 and f"chmod 600 {secret}" in result.stdout.decode()
    secret.chmod(0o600)
    result = run_cli("check", "--config", str(site.config))
    assert result.returncode == 0, result.stdout.decode()


def test_relayhost_that_does_not_resolve_keeps_the_mail(tmp_path: Path) -> None:
    with RemotePeers(tmp_path) as peers:
        site = _relay_site(tmp_path, peers, f"[nosuch.test]:{peers.smtp_port}")
        r = run_outbound(site, "x@far.test")["x@far.test"]
        assert not r["ok"] and not r["permanent"] and "relayhost" in r["text"]


def test_silent_first_mx_times_out_and_the_second_takes_it(tmp_path: Path) -> None:
    site = Site(tmp_path)
    with RemotePeers(tmp_path, mx_zone("example.test", [(10, "127.0.0.2"), (20, "127.0.0.3")])) as peers:
        site.write_config("[smtp]\n" + peers.smtp_config(command_timeout=1.0))
        peers.sink("127.0.0.2", greeting=0)  # takes the connection, never greets
        peers.sink("127.0.0.3")
        out = run_outbound(site, "b@example.test")
        assert out["b@example.test"]["ok"] and out["b@example.test"]["remote_address"] == "127.0.0.3"
        assert len(peers.sink("127.0.0.3").wait_for(1)) == 1


def test_big_message_streams_byte_exact(relay) -> None:  # type: ignore[no-untyped-def]
    """Several MB go through the producer path; dots at line starts across chunk borders survive."""
    site, peers = relay
    peers.sink("127.0.0.2", size=0)
    line = b"." + bytes(range(48, 48 + 70)) + b"\r\n"
    message = b"Subject: big\r\n\r\n" + line * 60000
    out = run_outbound(site, "b@example.test", message=message)
    assert out["b@example.test"]["ok"]
    [m] = peers.sink("127.0.0.2").messages()
    assert m.data == message

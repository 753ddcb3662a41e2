"""The admin commands, run as real processes: check, deliver, index, demo."""

from __future__ import annotations

import os

from conftest import run_cli

MESSAGE = b"From: bob@example.test\nTo: alice@example.test\nSubject: hi\n\nHello Alice.\n"


def test_check_passes_on_a_good_site(site):
    result = run_cli("check", "--config", str(site.config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"OK" in result.stdout


def test_check_reports_config_passwd_and_location_problems(site):
    site.write_config('\n[imap]\nlisten_tls = ["127.0.0.1:10993"]\n[tls]\ncert = "nope.pem"\nkey = "nope.key"\n')
    with open(site.passwd, "a") as f:
        f.write("broken-line-without-fields\n")
        f.write("carol:{PLAIN}x:notanumber:100::/home/carol::\n")
    site.add_user("dave")
    (site.home("dave") / "Maildir").write_text("not a maildir")
    result = run_cli("check", "--config", str(site.config))
    out = result.stdout.decode()
    assert result.returncode == 1
    assert "nope.pem" in out
    assert f"{site.passwd}: line 2" in out and f"{site.passwd}: line 3" in out
    assert "dave" in out and "fix:" in out


def test_check_reports_bad_key_with_fix(site):
    site.write_config('\n[pop3]\nlisten = "localhost:0"\n')
    result = run_cli("check", "--config", str(site.config))
    assert result.returncode == 1
    assert b"key pop3.listen" in result.stdout and b"fix:" in result.stdout


def test_deliver_into_inbox_and_folder(site):
    result = run_cli("deliver", "--config", str(site.config), "-f", "bob@example.test", "alice", input=MESSAGE)
    assert result.returncode == 0, result.stderr
    result = run_cli("deliver", "--config", str(site.config), "-m", "Lists.Python", "alice", input=MESSAGE)
    assert result.returncode == 0, result.stderr
    store = site.store("alice")
    inbox = store.open("INBOX")
    (uid,) = inbox.uids()
    data = inbox.read(uid)
    assert data.startswith(b"Return-Path: <bob@example.test>\nDelivered-To: alice\nFrom: bob@example.test\n")
    assert data.endswith(b"\n\nHello Alice.\n")
    assert "Lists.Python" in store.list_folders()
    assert len(store.open("Lists.Python")) == 1
    store.close()


def test_deliver_takes_sender_from_an_mbox_from_line(site):
    message = b"From bob@example.test Thu Jan  1 00:00:00 2026\nReturn-Path: <forged@x>\n" + MESSAGE
    assert run_cli("deliver", "--config", str(site.config), "alice", input=message).returncode == 0
    store = site.store("alice")
    box = store.open("INBOX")
    data = box.read(box.uids()[0])
    assert data.startswith(b"Return-Path: <bob@example.test>\n")
    assert b"forged" not in data
    store.close()


def test_deliver_exit_codes(site):
    assert run_cli("deliver", "--config", str(site.config), "nobody", input=MESSAGE).returncode == 67
    assert run_cli("deliver", "--config", str(site.config), "alice", input=b"").returncode == 65
    assert run_cli("deliver", "--config", str(site.config), "alice", input=b"\x00\x01 garbage\n").returncode == 65
    assert run_cli("deliver", "--config", str(site.config), "-m", "../../etc", "alice", input=MESSAGE).returncode == 73
    # the mail folder cannot be created: temporary failure, and nothing half-written anywhere
    (site.home("alice") / "Maildir").write_text("in the way")
    result = run_cli("deliver", "--config", str(site.config), "alice", input=MESSAGE)
    assert result.returncode == 75, result.stderr
    assert (site.home("alice") / "Maildir").read_text() == "in the way"


def test_index_show_and_rebuild(site):
    for _ in range(3):
        run_cli("deliver", "--config", str(site.config), "alice", input=MESSAGE, check=True)
    shown = run_cli("index", "show", "--config", str(site.config), "alice", "INBOX", check=True).stdout.decode()
    assert "messages=3" in shown and "uid=3" in shown
    rebuilt = run_cli("index", "rebuild", "--config", str(site.config), "alice", check=True).stdout.decode()
    first = [line for line in shown.splitlines() if line.startswith("INBOX:")][0]
    uidvalidity = first.split("uidvalidity=")[1].split()[0]
    assert f"uidvalidity={uidvalidity}" in rebuilt and "messages=3" in rebuilt and "uidnext=4" in rebuilt


def test_demo_writes_a_working_setup(tmp_path):
    result = run_cli("demo", "--dir", str(tmp_path / "demo"), "--no-serve")
    assert result.returncode == 0, result.stderr
    config = tmp_path / "demo" / "retrieval.toml"
    check = run_cli("check", "--config", str(config))
    assert check.returncode == 0, check.stdout + check.stderr
    maildir = tmp_path / "demo" / "home" / "demo" / "Maildir"
    assert len(os.listdir(maildir / "new")) == 1
    # running it again keeps the user and the mail
    assert run_cli("demo", "--dir", str(tmp_path / "demo"), "--no-serve").returncode == 0
    assert len(os.listdir(maildir / "new")) == 1

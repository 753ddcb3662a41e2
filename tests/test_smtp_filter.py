"""The content filter hook (spamc -E style) with small shell scripts as filters, the antispam
config keys, `retrieval check` and `retrieval access check`."""

from __future__ import annotations

import json
import time
import stat
from pathlib import Path

import pytest

from conftest import Site, run_cli
from retrieval.config import load_config
from retrieval.problems import ProblemsError
from retrieval.smtp.filter import REJECTED, TEMPFAIL, marked_spam, run_filter

MESSAGE = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody line\r\n.dot line\r\n"


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def config(tmp_path: Path, command: str, **smtp: object):  # type: ignore[no-untyped-def]
    lines = [f"content_filter = {json.dumps(command)}"]  # a JSON string is a TOML basic string
    lines += [f"{key} = {json.dumps(value)}" for key, value in smtp.items()]
    path = tmp_path / "r.toml"
    path.write_text("[smtp]\n" + "\n".join(lines) + "\n")
    return load_config(path)


@pytest.fixture
def filters(tmp_path):  # type: ignore[no-untyped-def]
    class F:
        header = script(tmp_path, "header.sh", "printf 'X-Filtered: yes\\r\\n'\ncat\n")
        spam = script(tmp_path, "spam.sh", "printf 'X-Spam-Flag: YES\\r\\nX-Spam-Status: Yes, score=9\\r\\n'\ncat\nexit 1\n")
        flag = script(tmp_path, "flag.sh", "printf 'X-Spam-Flag: YES\\n'\ncat\n")  # spamc without -E: exit 0, flag set
        lf = script(tmp_path, "lf.sh", "tr -d '\\r'\n")
        judge = script(tmp_path, "judge.sh", "cat >/dev/null\nexit 1\n")  # says spam, outputs nothing
        broken = script(tmp_path, "broken.sh", "cat >/dev/null\necho 'cannot connect to spamd' >&2\nexit 74\n")
        hang = script(tmp_path, "hang.sh", f"sleep 300 &\necho $! > {tmp_path}/sleeper.pid\nwait\n")
        tmp = tmp_path

    return F


def test_a_clean_message_comes_back_with_the_filters_headers(filters):
    verdict = run_filter(config(filters.tmp, str(filters.header)), MESSAGE)
    assert verdict.action == "accept" and verdict.reply is None
    assert verdict.data == b"X-Filtered: yes\r\n" + MESSAGE


@pytest.mark.parametrize("action, expected", [("header", "accept"), ("junk", "junk"), ("reject", "reject")])
def test_exit_1_is_spam_and_the_configured_action_applies(filters, action, expected):
    verdict = run_filter(config(filters.tmp, str(filters.spam), content_filter_action=action), MESSAGE)
    assert verdict.action == expected and "spam (exit status 1)" in verdict.detail
    if expected == "reject":
        assert verdict.reply == REJECTED and (verdict.reply.code, verdict.reply.status) == (550, "5.7.1")
        assert verdict.data == MESSAGE
    else:
        assert verdict.reply is None
        assert verdict.data.startswith(b"X-Spam-Flag: YES\r\nX-Spam-Status: Yes, score=9\r\n") and verdict.data.endswith(MESSAGE)


def test_an_x_spam_flag_header_counts_even_with_exit_0(filters):
    verdict = run_filter(config(filters.tmp, str(filters.flag), content_filter_action="junk"), MESSAGE)
    assert verdict.action == "junk" and "X-Spam-Flag" in verdict.detail
    assert verdict.data == b"X-Spam-Flag: YES\r\n" + MESSAGE  # LF from the filter, CRLF again
    assert not marked_spam(b"Subject: x\r\n\r\nX-Spam-Flag: YES\r\n")  # in the body it is no verdict
    assert marked_spam(b"Subject: x\r\nX-Spam: Yes\r\n\r\nbody\r\n")


def test_output_line_ends_are_made_crlf_and_empty_output_means_unchanged(filters):
    assert run_filter(config(filters.tmp, str(filters.lf)), MESSAGE).data == MESSAGE
    verdict = run_filter(config(filters.tmp, str(filters.judge), content_filter_action="junk"), MESSAGE)
    assert verdict.action == "junk" and verdict.data == MESSAGE


def test_arguments_are_split_as_a_shell_would(filters):
    verdict = run_filter(config(filters.tmp, "sh -c 'printf \"X-Arg: %s\\r\\n\" \"$0\"; cat' 'two words'"), MESSAGE)
    assert verdict.data == b"X-Arg: two words\r\n" + MESSAGE


@pytest.mark.parametrize("failure", ["accept", "tempfail"])
def test_a_failing_filter_accepts_unchanged_or_tempfails(filters, failure):
    verdict = run_filter(config(filters.tmp, str(filters.broken), content_filter_failure=failure), MESSAGE)
    assert "exit status 74" in verdict.detail and "cannot connect to spamd" in verdict.detail
    assert verdict.data == MESSAGE
    if failure == "accept":
        assert verdict.action == "accept" and verdict.reply is None
    else:
        assert verdict.action == "tempfail" and verdict.reply == TEMPFAIL and verdict.reply.code == 451
    missing = run_filter(config(filters.tmp, str(filters.tmp / "no-such-filter"), content_filter_failure=failure), MESSAGE)
    assert missing.action == verdict.action and "cannot run" in missing.detail


def test_a_hanging_filter_is_killed_with_its_children(filters):
    verdict = run_filter(config(filters.tmp, str(filters.hang), content_filter_timeout=0.5), MESSAGE)
    assert verdict.action == "accept" and verdict.data == MESSAGE and "no verdict within 0.5s" in verdict.detail
    # the script's `sleep` died with it (it was in the filter's process group)
    sleeper = (filters.tmp / "sleeper.pid").read_text().strip()
    deadline = time.monotonic() + 10
    while _alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(sleeper)
    verdict = run_filter(config(filters.tmp, str(filters.hang), content_filter_timeout=0.5,
                                content_filter_failure="tempfail"), MESSAGE)
    assert verdict.action == "tempfail"


def _alive(pid: str) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False



def test_no_filter_configured_accepts_as_is(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[smtp]\ncontent_filter = \"\"\n")
    cfg = load_config(path)
    assert cfg.smtp.content_filter is None
    verdict = run_filter(cfg, MESSAGE)
    assert verdict.action == "accept" and verdict.data is MESSAGE


# -- the config keys -----------------------------------------------------------------------


def test_antispam_defaults_and_values(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[smtp]\n")
    smtp = load_config(path).smtp
    assert (smtp.access, smtp.dnsbl, smtp.helo_checks, smtp.greet_pause) == (None, (), False, 0.0)
    assert (smtp.content_filter, smtp.content_filter_action, smtp.content_filter_failure) == (None, "header", "accept")
    path.write_text('[smtp]\naccess = "access"\ndnsbl = ["Zen.Spamhaus.org", "bl.example."]\nhelo_checks = true\n'
                    'greet_pause = 3\ncontent_filter = "/usr/bin/spamc -E"\ncontent_filter_action = "junk"\n'
                    'content_filter_timeout = 30\ncontent_filter_failure = "tempfail"\n')
    smtp = load_config(path).smtp
    assert smtp.access == tmp_path / "access" and smtp.dnsbl == ("zen.spamhaus.org", "bl.example")
    assert smtp.helo_checks and smtp.greet_pause == 3.0 and smtp.content_filter == "/usr/bin/spamc -E"
    assert (smtp.content_filter_action, smtp.content_filter_timeout, smtp.content_filter_failure) == ("junk", 30.0, "tempfail")


@pytest.mark.parametrize(
    "line, key",
    [
        ('dnsbl = ["not a zone"]', "smtp.dnsbl"),
        ("helo_checks = 1", "smtp.helo_checks"),
        ("greet_pause = -1", "smtp.greet_pause"),
        ("content_filter = \"spamc 'unclosed\"", "smtp.content_filter"),
        ('content_filter_action = "drop"', "smtp.content_filter_action"),
        ("content_filter_timeout = 0", "smtp.content_filter_timeout"),
        ('content_filter_failure = "bounce"', "smtp.content_filter_failure"),
        ("access = 5", "smtp.access"),
    ],
)
def test_bad_antispam_values_name_their_key(tmp_path, line, key):
    path = tmp_path / "r.toml"
    path.write_text(f"[smtp]\n{line}\n")
    with pytest.raises(ProblemsError) as exc:
        load_config(path)
    assert any(f"key {key}:" in str(p) and "fix:" in str(p) for p in exc.value.problems), exc.value.problems


def test_retrieval_check_reports_access_table_and_filter_problems(tmp_path):
    site = Site(tmp_path)
    site.add_user("alice")
    (tmp_path / "access").write_text("192.168.1 RELAY\nexample.com MAYBE\n")
    site.write_config('[smtp]\naccess = "access"\ncontent_filter = "/nonexistent/spamc -E"\n')
    result = run_cli("check", "--config", str(site.config))
    out = result.stdout.decode()
    assert result.returncode == 1
    assert f"{tmp_path / 'access'}: line 2: unknown action 'MAYBE'" in out
    assert "key smtp.content_filter: /nonexistent/spamc is not an executable program" in out
    (tmp_path / "access").unlink()
    out = run_cli("check", "--config", str(site.config)).stdout.decode()
    assert "key smtp.access: " in out and "does not exist" in out


def test_access_check_command(tmp_path):
    site = Site(tmp_path)
    site.add_user("alice")
    access = tmp_path / "access"
    access.write_text("# test table\nConnect:192.168.1 RELAY\n203.0.113 REJECT\nFrom:spam.example ERROR:5.7.1:Go away\n"
                      "To:partner.example RELAY\n")
    site.write_config('[smtp]\naccess = "access"\nmynetworks = ["127.0.0.0/8"]\n')
    cfg = str(site.config)

    result = run_cli("access", "check", "192.168.1.20", "--config", cfg)
    assert result.returncode == 0
    assert f"client 192.168.1.20: RELAY ({access}:2: Connect:192.168.1 RELAY)" in result.stdout.decode()

    result = run_cli("access", "check", "203.0.113.5", "-c", cfg)
    assert result.returncode == 1
    assert (f"client 203.0.113.5: REJECT ({access}:3: 203.0.113 REJECT) -> "
            "550 5.7.1 Client host [203.0.113.5] rejected: Access denied") in result.stdout.decode()

    out = run_cli("access", "check", "bob@spam.example", "-c", cfg).stdout.decode().splitlines()
    assert out == [f"sender bob@spam.example: ERROR ({access}:4: From:spam.example ERROR:5.7.1:Go away) -> 550 5.7.1 Go away",
                   "recipient bob@spam.example: no entry"]

    # the whole conversation: MAIL and each RCPT as the server would answer them
    result = run_cli("access", "check", "-c", cfg, "--client", "198.51.100.7", "--from", "a@example.org",
                     "--to", "alice@mail.example.test", "--to", "x@partner.example", "--to", "x@elsewhere.example")
    out = result.stdout.decode()
    assert result.returncode == 1
    assert "MAIL FROM:<a@example.org> -> 250 2.1.0 Ok" in out
    assert "RCPT TO:<alice@mail.example.test> -> 250 2.1.5 Ok" in out
    assert "RCPT TO:<x@partner.example> -> 250 2.1.5 Ok  [RemoteTarget(address='x@partner.example')]" in out
    assert f"  recipient: RELAY ({access}:5: To:partner.example RELAY)" in out
    assert "RCPT TO:<x@elsewhere.example> -> 554 5.7.1 Relay access denied" in out

    result = run_cli("access", "check", "-c", cfg, "--client", "203.0.113.1", "--from", "<>")
    assert result.returncode == 1 and "MAIL FROM:<> -> 550 5.7.1 Client host [203.0.113.1] rejected" in result.stdout.decode()

    assert run_cli("access", "check", "-c", cfg).returncode == 2
    site.write_config("")
    result = run_cli("access", "check", "1.2.3.4", "-c", cfg)
    assert result.returncode == 2 and "[smtp] access is not set" in result.stderr.decode()

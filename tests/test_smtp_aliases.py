"""Aliases, :include:, .forward, and delivery to |command and /file targets.

Real files, real child processes (as `nobody` when we are root), a real
server spoken to with smtplib."""

from __future__ import annotations

import os
import pwd
import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest

from conftest import Server, Site, run_cli, wait_until
from retrieval.auth.passwd import PasswdFile
from retrieval.config import load_config
from retrieval.problems import ProblemsError
from retrieval.smtp.aliases import classify, parse_aliases, split_targets
from retrieval.smtp.expand import Expander, check_aliases
from retrieval.smtp.external import deliver_to_file, deliver_to_pipe
from retrieval.smtp.policy import RecipientPolicy
from retrieval.smtp.targets import FileTarget, LocalTarget, PipeTarget, RemoteTarget
from retrieval.store.mboxfile import read_raw, scan_file

ROOT = os.getuid() == 0
NOBODY = pwd.getpwnam("nobody")

# -- the file format ------------------------------------------------------------------------

PARSE_CASES = [
    ("a: b", {"a": ["b"]}, []),
    ("A: B, c@example.org", {"a": ["B", "c@example.org"]}, []),
    ("a: b,\n  c,\n\td\n", {"a": ["b", "c", "d"]}, []),
    ("# comment\na: b\n\n  # indented comment inside\n  c", {"a": ["b", "c"]}, []),
    ('list: "|/usr/bin/prog arg, with comma", /var/log/x', {"list": ['"|/usr/bin/prog arg, with comma"', "/var/log/x"]}, []),
    ('"with space": b', {"with space": ["b"]}, []),
    ("a: b\na: c", {"a": ["b"]}, ["line 2: duplicate alias a (the entry on line 1 is used)"]),
    ("  b, c\na: d", {"a": ["d"]}, ["line 1: continuation line without an entry before it"]),
    ("no colon here\na: b", {"a": ["b"]}, ["line 1: no colon in 'no colon here'"]),
    ("a:\nb: c", {"b": ["c"]}, ["line 1: alias a has no targets"]),
    ("x@y: c", {}, ["line 1: bad alias name 'x@y'"]),
    ('"open: c', {}, ["line 1: unterminated quoted name or no colon after it"]),
]


@pytest.mark.parametrize("text, entries, problems", PARSE_CASES)
def test_parse(text, entries, problems):
    parsed, found = parse_aliases(text, "/etc/aliases")
    assert {name: [t for t, _ in e.targets] for name, e in parsed.items()} == entries
    assert [f"{p.where}: {p.message}" for p in found] == problems
    assert all(p.file == "/etc/aliases" for p in found)


def test_targets_keep_their_own_line_numbers():
    parsed, _ = parse_aliases("# x\nstaff: a,\n  b, c\n\n  d\n", "f")
    assert parsed["staff"].targets == (("a", 2), ("b", 3), ("c", 3), ("d", 5))
    assert parsed["staff"].line == 2


CLASSIFY_CASES = [
    ("alice", "address", "alice"),
    ("bob@example.org", "address", "bob@example.org"),
    ("Bob Smith <bob@example.org>", "address", "bob@example.org"),
    ("|/usr/bin/procmail", "command", "/usr/bin/procmail"),
    ('"|/usr/bin/prog -a \\"x\\""', "command", '/usr/bin/prog -a "x"'),
    ("/var/mail/archive", "file", "/var/mail/archive"),
    ('"/var/mail/with space"', "file", "/var/mail/with space"),
    (":include:/etc/lists/staff", "include", "/etc/lists/staff"),
    (":INCLUDE:/etc/lists/staff", "include", "/etc/lists/staff"),
    ("\\alice", "local", "alice"),
    ('"odd local"@example.org', "address", '"odd local"@example.org'),
]


@pytest.mark.parametrize("token, kind, value", CLASSIFY_CASES)
def test_classify(token, kind, value):
    parsed = classify(token)
    assert (parsed.kind, parsed.value) == (kind, value)


@pytest.mark.parametrize("token", ["|", ":include:relative/list", "/var/mail/dir/", "two words", "@x", "\\", "\\a@b"])
def test_classify_refuses(token):
    with pytest.raises(ValueError):
        classify(token)


def test_split_targets_respects_quotes():
    assert split_targets('a, "b, c" ,, d') == ["a", '"b, c"', "d"]


# -- expansion ---------------------------------------------------------------------------------


def make_site(base: Path) -> Site:
    """alice, bob, carol@example.org and root; an alias file, an include list, some .forward files."""
    site = Site(base)
    for user in ("alice", "bob", "root", "dave", "erin"):
        site.add_user(user)
    from retrieval.auth.passwd import add_user

    (base / "home" / "carol").mkdir(parents=True)
    add_user(site.passwd, "carol@example.org", "x", scheme="PLAIN", home=str(base / "home" / "carol"))
    (base / "staff.list").write_text("# the staff\nalice\nbob, friend@remote.example\n:include:" + str(base / "nested.list") + "\n")
    (base / "nested.list").write_text("carol@example.org\n")
    (base / "loop.list").write_text(f":include:{base / 'loop.list'}\n")
    (base / "aliases").write_text(f"""# aliases(5)
staff: :include:{base / 'staff.list'}
team: alice, Bob,
  outside@Remote.Example
root: root, admin@remote.example
webmaster: root
sales: alice+sales
support: nobody-here
ring1: ring2
ring2: ring3
ring3: ring1
self: self
prog: "|/bin/cat", {base / 'archive'}
loopy: :include:{base / 'loop.list'}
missing: :include:{base / 'no-such.list'}
bounces: \\alice
info: alice@localhost, alice@mail.example.test
mixed: alice, nobody-here
""")
    (base / "home" / "dave" / ".forward").write_text("# dave forwards\ndave@remote.example, \\dave\n")
    (base / "home" / "erin" / ".forward").write_text('erin, "|/usr/bin/vacation erin"\n')
    (base / "home" / "erin" / ".forward+lists").write_text("erin-lists@remote.example\n")
    site.write_config(f'[smtp]\naliases = "{base / "aliases"}"\nlocal_domains = ["mail.example.test", "localhost", "example.org"]\n')
    return site


@pytest.fixture
def expander(tmp_path) -> Expander:
    site = make_site(tmp_path)
    return Expander(load_config(site.config), PasswdFile(site.passwd))


L, R = LocalTarget, RemoteTarget
EXPAND_CASES = [
    # address -> targets, error statuses
    ("alice@localhost", [L("alice")], []),
    ("ALICE@Mail.Example.Test", [L("alice")], []),
    ("alice+work@localhost", [L("alice", "work")], []),
    ("friend@remote.example", [R("friend@remote.example")], []),
    ("team@localhost", [L("alice"), L("bob"), R("outside@Remote.Example")], []),
    ("TEAM@example.org", [L("alice"), L("bob"), R("outside@Remote.Example")], []),
    ("team+news@localhost", [L("alice", "news"), L("bob", "news"), R("outside@Remote.Example")], []),
    ("staff@localhost", [L("alice"), L("bob"), R("friend@remote.example"), L("carol@example.org")], []),
    ("root@localhost", [L("root"), R("admin@remote.example")], []),
    ("webmaster@localhost", [L("root"), R("admin@remote.example")], []),
    ("sales@localhost", [L("alice", "sales")], []),
    ("support@localhost", [], ["5.1.1"]),
    ("mixed@localhost", [L("alice")], ["5.1.1"]),
    ("ring1@localhost", [], ["5.4.6"]),
    ("self@localhost", [], ["5.4.6"]),
    ("loopy@localhost", [], ["5.4.6"]),
    ("missing@localhost", [], ["4.3.0"]),
    ("bounces@localhost", [L("alice")], []),
    ("info@localhost", [L("alice")], []),
    ("nobody-here@localhost", [], ["5.1.1"]),
    ("postmaster@localhost", [L("alice")], []),
    ("Postmaster", [L("alice")], []),
    ("MAILER-DAEMON@mail.example.test", [L("alice")], []),
    ("dave@localhost", [R("dave@remote.example"), L("dave")], []),
    ("dave+x@localhost", [R("dave@remote.example"), L("dave", "x")], []),
    ("erin+lists@localhost", [R("erin-lists@remote.example")], []),
    ("carol@example.org", [L("carol@example.org")], []),
]


@pytest.mark.parametrize("address, targets, errors", EXPAND_CASES)
def test_expand(expander, address, targets, errors):
    result = expander.expand(address)
    assert result.targets == targets
    assert [reply.status for _, reply in result.errors] == errors
    assert all(reply.code == (451 if reply.status.startswith("4") else 550) for _, reply in result.errors)


def test_expand_commands_and_files(expander, tmp_path):
    result = expander.expand("prog@localhost")
    assert result.targets == [PipeTarget("/bin/cat", None, "alias prog"), FileTarget(str(tmp_path / "archive"), None, "alias prog")]
    erin = expander.expand("erin@localhost")
    home = tmp_path / "home" / "erin"
    assert erin.targets == [L("erin"), PipeTarget("/usr/bin/vacation erin", "erin", str(home / ".forward"))]
    assert erin.errors == []


def test_allow_commands_and_files_restrict_by_origin(tmp_path):
    site = make_site(tmp_path)
    text = site.config.read_text().replace("[smtp]\n", '[smtp]\nallow_commands = ["alias"]\nallow_files = []\n')
    site.config.write_text(text)
    exp = Expander(load_config(site.config), PasswdFile(site.passwd))
    prog = exp.expand("prog@localhost")
    assert prog.targets == [PipeTarget("/bin/cat", None, "alias prog")]
    assert [(r.code, r.status) for _, r in prog.errors] == [(550, "5.7.1")]
    assert "mail to file is restricted" in prog.errors[0][1].text
    erin = exp.expand("erin@localhost")
    assert erin.targets == [L("erin")]
    assert "mail to command is restricted" in erin.errors[0][1].text


def test_the_delimiter_setting(tmp_path):
    site = make_site(tmp_path)
    site.config.write_text(site.config.read_text().replace("[smtp]\n", '[smtp]\nrecipient_delimiter = "-"\n'))
    exp = Expander(load_config(site.config), PasswdFile(site.passwd))
    assert exp.expand("alice-work@localhost").targets == [L("alice", "work")]
    assert exp.expand("team-x@localhost").targets == [L("alice", "x"), L("bob", "x"), R("outside@Remote.Example")]
    assert [r.status for _, r in exp.expand("alice+work@localhost").errors] == ["5.1.1"]


def test_forward_off_and_unsafe_forward_files(tmp_path, caplog):
    site = make_site(tmp_path)
    config = load_config(site.config)
    passwd = PasswdFile(site.passwd)
    forward = tmp_path / "home" / "dave" / ".forward"
    forward.chmod(0o664)
    assert Expander(config, passwd).expand("dave@localhost").targets == [L("dave")]
    assert "writable by group or others" in caplog.text
    forward.chmod(0o644)
    if ROOT:
        os.chown(forward, NOBODY.pw_uid, NOBODY.pw_gid)
        caplog.clear()
        assert Expander(config, passwd).expand("dave@localhost").targets == [L("dave")]
        assert "owned by uid" in caplog.text
        os.chown(forward, 0, 0)
    assert Expander(config, passwd).expand("dave@localhost").targets == [R("dave@remote.example"), L("dave")]
    site.config.write_text(site.config.read_text().replace("[smtp]\n", "[smtp]\nforward = false\n"))
    assert Expander(load_config(site.config), passwd).expand("dave@localhost").targets == [L("dave")]


def test_an_unreadable_forward_defers(tmp_path):
    site = Site(tmp_path)
    from retrieval.auth.passwd import add_user

    (tmp_path / "a-file").write_text("x")
    add_user(site.passwd, "frank", "x", scheme="PLAIN", home=str(tmp_path / "a-file"))  # home is no folder
    result = Expander(load_config(site.config), PasswdFile(site.passwd)).expand("frank@localhost")
    assert result.targets == []
    assert [(r.code, r.status) for _, r in result.errors] == [(451, "4.3.0")]


def test_alias_file_changes_apply_at_once_and_a_missing_file_defers(tmp_path):
    site = make_site(tmp_path)
    exp = Expander(load_config(site.config), PasswdFile(site.passwd))
    assert exp.exists("newname@localhost") is False
    with open(tmp_path / "aliases", "a") as f:
        f.write("newname: bob, alice\n")
    assert exp.expand("newname@localhost").targets == [L("bob"), L("alice")]
    assert exp.exists("newname@localhost") is True
    (tmp_path / "aliases").rename(tmp_path / "aliases.old")
    assert exp.exists("team@localhost") is None
    assert [(r.code, r.status) for _, r in exp.expand("team@localhost").errors] == [(451, "4.3.0")]
    assert exp.expand("x@remote.example").targets == [R("x@remote.example")]  # not ours: unaffected


def test_exists(expander):
    assert expander.exists("team@localhost") is True
    assert expander.exists("Team+tag@localhost") is True
    assert expander.exists("alice@example.org") is True
    assert expander.exists("MAILER-DAEMON@localhost") is True
    assert expander.exists("postmaster@example.org") is True
    assert expander.exists("ghost@localhost") is False
    assert expander.exists("someone@remote.example") is None


def test_without_an_alias_file_only_the_builtins(tmp_path):
    site = Site(tmp_path)
    site.add_user("zed")
    site.add_user("postmaster")
    exp = Expander(load_config(site.config), PasswdFile(site.passwd))
    assert exp.expand("postmaster@localhost").targets == [L("postmaster")]
    assert exp.expand("mailer-daemon@localhost").targets == [L("postmaster")]
    assert exp.expand("zed@localhost").targets == [L("zed")]


# -- the recipient policy -------------------------------------------------------------------------


def test_policy_accepts_alias_names_like_users(tmp_path):
    site = make_site(tmp_path)
    config = load_config(site.config)
    policy = RecipientPolicy.from_config(config, PasswdFile(site.passwd))
    for address in ("team@localhost", "TEAM+x@mail.example.test", "mailer-daemon@localhost", "support@example.org"):
        reply, target = policy.check(address, "203.0.113.9", False)
        assert (reply.code, reply.status, target) == (250, "2.1.5", None), address
    assert policy.check("alice@localhost", "203.0.113.9", False)[1] == LocalTarget("alice")
    assert policy.check("ghost@localhost", "203.0.113.9", False)[0].code == 550
    assert policy.check("team", "203.0.113.9", False)[0].code == 501
    (tmp_path / "aliases").chmod(0)
    (tmp_path / "aliases").rename(tmp_path / "gone")
    assert policy.check("team@localhost", "203.0.113.9", False)[0].code == 451


def test_policy_postmaster_alias_wins():
    policy = RecipientPolicy(["localhost"], [], {"alice": "alice"}.get, lambda: "alice",
                             alias_exists=lambda local: local.lower() == "postmaster")
    assert policy.check("postmaster@localhost", None, False)[1] is None
    assert policy.check("Postmaster", None, False)[1] is None


# -- delivery to commands and files ---------------------------------------------------------------


@pytest.fixture
def shared_dir():
    """A folder `nobody` can reach (pytest's tmp_path is root-only), with out/ writable by it."""
    path = Path(tempfile.mkdtemp(prefix="retrieval-aliases-", dir="/tmp"))
    path.chmod(0o755)
    out = path / "out"
    out.mkdir()
    if ROOT:
        os.chown(out, NOBODY.pw_uid, NOBODY.pw_gid)
    yield path
    shutil.rmtree(path)


def pipe_setup(tmp_path: Path, shared: Path, timeout: float = 300.0):  # type: ignore[no-untyped-def]
    site = Site(tmp_path)
    site.add_user("alice")
    from retrieval.auth.passwd import add_user

    (tmp_path / "home" / "uidman").mkdir(parents=True)
    add_user(site.passwd, "uidman", "x", scheme="PLAIN", uid=4321, gid=4322, home=str(tmp_path / "home" / "uidman"))
    site.write_config(f"[smtp]\ncommand_time_limit = {timeout}\n")
    script = shared / "catch.sh"
    script.write_text(f"""#!/bin/sh
dir={shared}/out/$1
mkdir -p "$dir"
cat > "$dir/message"
id -u > "$dir/uid"
id -g > "$dir/gid"
env > "$dir/env"
""")
    script.chmod(0o755)
    (shared / "out").chmod(0o777)  # for nobody and for uid 4321
    return load_config(site.config), PasswdFile(site.passwd), script


MESSAGE = b"Subject: hello\r\nReturn-Path: <forged@example.org>\r\n\r\nline one\r\nFrom the start\r\n"


def test_pipe_delivery_as_default_privs(tmp_path, shared_dir):
    config, passwd, script = pipe_setup(tmp_path, shared_dir)
    target = PipeTarget(f"{script} alias", None, "alias prog")
    reply = deliver_to_pipe(target, MESSAGE, "sender@example.org", "prog+ext@mail.example.test", config, passwd)
    assert (reply.code, reply.status) == (250, "2.0.0")
    out = shared_dir / "out" / "alias"
    data = (out / "message").read_bytes()
    first, rest = data.split(b"\n", 1)
    assert first.startswith(b"From sender@example.org  ")
    assert rest == (b"Return-Path: <sender@example.org>\nDelivered-To: prog+ext@mail.example.test\n"
                    b"Subject: hello\n\nline one\nFrom the start\n")
    expected_uid = NOBODY.pw_uid if ROOT else os.getuid()
    assert int((out / "uid").read_text()) == expected_uid
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines() if "=" in line)
    assert env["SENDER"] == "sender@example.org"
    assert env["RECIPIENT"] == "prog+ext@mail.example.test"
    assert (env["LOCAL"], env["DOMAIN"], env["EXTENSION"]) == ("prog+ext", "mail.example.test", "ext")
    assert env["USER"] == ("nobody" if ROOT else env["USER"])
    assert "PYTHONPATH" not in env and "PWD" in env  # a clean environment (sh adds PWD itself)


@pytest.mark.skipif(not ROOT, reason="changing uid needs root")
def test_pipe_delivery_as_the_forward_owner(tmp_path, shared_dir):
    config, passwd, script = pipe_setup(tmp_path, shared_dir)
    target = PipeTarget(f"{script} owner", "uidman", "/home/uidman/.forward")
    reply = deliver_to_pipe(target, MESSAGE, "", "uidman@localhost", config, passwd)
    assert reply.code == 250, reply
    out = shared_dir / "out" / "owner"
    assert int((out / "uid").read_text()) == 4321 and int((out / "gid").read_text()) == 4322
    assert (out / "message").read_bytes().startswith(b"From MAILER-DAEMON  ")
    assert b"\nReturn-Path: <>\n" in (out / "message").read_bytes()
    env = dict(line.split("=", 1) for line in (out / "env").read_text().splitlines() if "=" in line)
    assert env["HOME"] == str(tmp_path / "home" / "uidman") and env["USER"] == "uidman"


EXIT_CASES = [
    ("exit 75", 451, "4.3.0", "status 75"),
    ("exit 67", 550, "5.1.1", "status 67"),
    ("echo 'no such list' >&2; exit 1", 550, "5.3.0", "Command output: no such list"),
    ("echo 'first'; echo 'second'; exit 78", 550, "5.3.5", "Command output: first"),
    ("kill -9 $$", 550, "5.3.0", "signal 9"),
    ("cat >/dev/null; exit 0", 250, "2.0.0", "delivered"),
    ("exit 0", 250, "2.0.0", "delivered"),  # a command that does not read its input is fine
]


@pytest.mark.parametrize("command, code, status, text", EXIT_CASES)
def test_pipe_exit_codes(tmp_path, shared_dir, command, code, status, text):
    config, passwd, _ = pipe_setup(tmp_path, shared_dir)
    reply = deliver_to_pipe(PipeTarget(command, None, "alias x"), MESSAGE * 2000, "s@example.org", "x@localhost",
                            config, passwd)
    assert (reply.code, reply.status) == (code, status)
    assert text in reply.text


def test_pipe_time_limit_kills_the_command(tmp_path, shared_dir):
    config, passwd, _ = pipe_setup(tmp_path, shared_dir, timeout=1)
    marker = shared_dir / "out" / "late"
    reply = deliver_to_pipe(PipeTarget(f"echo started; sleep 60; touch {marker}", None, "alias x"), MESSAGE,
                            "s@example.org", "x@localhost", config, passwd)
    assert (reply.code, reply.status) == (550, "5.3.0")
    assert "Command time limit exceeded" in reply.text and "Command output: started" in reply.text
    assert not marker.exists()


def read_mbox(path: Path) -> list[bytes]:
    with open(path, "rb") as f:
        return [read_raw(f, entry) for entry in scan_file(f)]


def test_file_delivery_appends_valid_mbox(tmp_path, shared_dir):
    config, passwd, _ = pipe_setup(tmp_path, shared_dir)
    path = shared_dir / "out" / "archive"
    target = FileTarget(str(path), None, "alias archive")
    for n in range(2):
        reply = deliver_to_file(target, MESSAGE.replace(b"hello", b"hello %d" % n), "s@example.org",
                                "archive@localhost", config, passwd)
        assert (reply.code, reply.status) == (250, "2.0.0"), reply
    data = path.read_bytes()
    assert data.startswith(b"From s@example.org  ")
    assert b"\r\n" not in data and b"\n>From the start\n" in data  # mboxrd quoting of the body line
    messages = read_mbox(path)
    assert len(messages) == 2
    for n, message in enumerate(messages):
        assert message.startswith(b"Return-Path: <s@example.org>\nDelivered-To: archive@localhost\n")
        assert b"Subject: hello %d\n" % n in message and b"forged" not in message
        assert message.rstrip(b"\n").endswith(b"line one\n>From the start")  # as stored, quoted
    assert not os.path.exists(str(path) + ".lock")
    if ROOT:
        assert path.stat().st_uid == NOBODY.pw_uid  # written as nobody, not as root


def test_file_delivery_refusals(tmp_path, shared_dir):
    config, passwd, _ = pipe_setup(tmp_path, shared_dir)

    def deliver(path: str):  # type: ignore[no-untyped-def]
        return deliver_to_file(FileTarget(path, None, "alias x"), MESSAGE, "s@example.org", "x@localhost", config, passwd)

    assert deliver("relative/file").code == 550
    assert deliver("/dev/null").code == 250
    assert deliver(str(shared_dir / "no-such-dir" / "file")).status == "5.2.0"
    (shared_dir / "out" / "adir").mkdir()
    assert deliver(str(shared_dir / "out" / "adir")).status == "5.2.0"
    if ROOT:
        locked_away = shared_dir / "root-only"
        locked_away.mkdir(mode=0o755)
        reply = deliver(str(locked_away / "file"))
        assert reply.status == "5.2.0" and not (locked_away / "file").exists()  # nobody may not write there


# -- checks and the command line ------------------------------------------------------------------


def test_check_aliases_names_file_and_line(tmp_path):
    site = make_site(tmp_path)
    with open(tmp_path / "aliases", "a") as f:
        f.write("broken line\nbad: two words\n")
    found = [str(p) for p in check_aliases(load_config(site.config), PasswdFile(site.passwd))]
    aliases = tmp_path / "aliases"
    for expected in (
        f"{aliases}: line 8: nobody-here: no such local user or alias",
        f"{aliases}: line 9: alias ring1: Mail forwarding loop",
        f"{aliases}: line 10: alias ring2: Mail forwarding loop",
        f"{aliases}: line 12: alias self: Mail forwarding loop",
        f"{aliases}: line 14: alias loopy: Mail forwarding loop",
        f"{aliases}: line 15: cannot read include file {tmp_path / 'no-such.list'}",
        f"{aliases}: line 18: nobody-here: no such local user or alias",
        f"{aliases}: line 19: no colon in 'broken line'",
        f"{aliases}: line 20: 'two words' is not an address",
    ):
        assert any(line.startswith(expected) for line in found), (expected, found)
    assert not any("line 3:" in line or "line 4:" in line for line in found)  # team is fine


def test_cli_aliases_compile_and_check(tmp_path):
    site = make_site(tmp_path)
    check = run_cli("aliases", "check", "--config", str(site.config))
    assert check.returncode == 1
    assert f"{tmp_path / 'aliases'}: line 8: nobody-here: no such local user or alias" in check.stdout.decode()
    compiled = run_cli("aliases", "compile", "--config", str(site.config))
    assert compiled.returncode == 0 and "aliases, OK" in compiled.stdout.decode()  # syntax only
    (tmp_path / "aliases").write_text("team: alice, bob\nteam2: team, friend@remote.example\n")
    assert run_cli("aliases", "check", "-c", str(site.config)).returncode == 0
    (tmp_path / "aliases").write_text("team alice\n")
    compiled = run_cli("aliases", "compile", "-c", str(site.config))
    assert compiled.returncode == 1 and "line 1: no colon" in compiled.stdout.decode()
    whole = run_cli("check", "-c", str(site.config))
    assert whole.returncode == 1 and "line 1: no colon" in whole.stdout.decode()


def test_config_keys(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[smtp]\naliases = "aliases"\nforward = false\nallow_commands = ["alias", "include"]\n'
                    'allow_files = []\ncommand_time_limit = 5\ndefault_privs = "daemon"\n')
    smtp = load_config(path).smtp
    assert (smtp.aliases, smtp.forward, smtp.allow_commands, smtp.allow_files, smtp.command_time_limit, smtp.default_privs) == (
        tmp_path / "aliases", False, ("alias", "include"), (), 5.0, "daemon")
    path.write_text("")
    defaults = load_config(path).smtp
    assert (defaults.aliases, defaults.forward, defaults.allow_commands) == (None, True, ("alias", "forward"))
    path.write_text('[smtp]\nallow_files = ["everyone"]\n')
    with pytest.raises(ProblemsError) as info:
        load_config(path)
    assert "key smtp.allow_files" in str(info.value)


# -- over real SMTP ----------------------------------------------------------------------------------


def subjects(site: Site, user: str) -> list[bytes]:
    store = site.store(user)
    try:
        inbox = store.open("INBOX")
        return [inbox.read_crlf(row.uid).split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for row in inbox.messages()]
    finally:
        store.close()


def test_alias_accepted_at_rcpt_and_delivered_over_smtp(tmp_path, shared_dir):
    site = make_site(tmp_path)
    archive = shared_dir / "out" / "archive"
    piped = shared_dir / "out" / "piped"
    script = shared_dir / "to-file.sh"
    script.write_text(f"#!/bin/sh\ncat > {piped}.tmp && id -u >> {piped}.tmp && mv {piped}.tmp {piped}\n")
    script.chmod(0o755)
    (shared_dir / "out").chmod(0o777)
    with open(tmp_path / "aliases", "a") as f:
        f.write(f"archive: {archive}, bob\npiped: \"|{script}\"\n")
    server = Server(site, protocols=("smtp",), smtp_extra=f'aliases = "{tmp_path / "aliases"}"\n'
                    'local_domains = ["mail.example.test", "localhost", "example.org"]\n').start()
    try:
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
            s.ehlo("client.example")
            assert s.mail("sender@remote.example")[0] == 250
            assert s.rcpt("team@mail.example.test")[0] == 250
            code, text = s.rcpt("ghost@localhost")
            assert (code, text[:5]) == (550, b"5.1.1")
            code, text = s.data(b"Subject: to the team\r\n\r\nhello team\r\n")
            assert code == 250, text
            refused = s.sendmail("sender@remote.example", ["Archive+x@localhost", "sales@example.org", "PIPED@localhost"],
                                 b"Subject: archived\r\n\r\nkeep me\r\n")
            assert refused == {}
        wait_until(lambda: sorted(subjects(site, "bob")) == [b"archived", b"to the team"], "bob's two messages")
        # sales: alice+sales, and alice has no folder "sales": INBOX
        wait_until(lambda: sorted(subjects(site, "alice")) == [b"archived", b"to the team"], "alice's two messages")
        wait_until(archive.exists, "the archive file")
        wait_until(piped.exists, "the command's output")
    finally:
        server.stop()
    (message,) = read_mbox(archive)
    assert b"Delivered-To: Archive+x@localhost\n" in message and b"\nReceived: from client.example" in message
    assert message.rstrip(b"\n").endswith(b"keep me")
    output = piped.read_bytes()
    assert output.startswith(b"From sender@remote.example  ") and b"\nDelivered-To: PIPED@localhost\n" in output
    assert output.endswith(b"keep me\n%d\n" % (NOBODY.pw_uid if ROOT else os.getuid()))
    if ROOT:
        assert archive.stat().st_uid == NOBODY.pw_uid

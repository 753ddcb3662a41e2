"""`retrieval config show [-n] [--config FILE]`: every setting as TOML that reads back to the same Config."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from conftest import run_cli

from retrieval.config import _SCHEMA, Config, config_from_dict, load_config

# Non-default values for many keys, with the awkward cases: a relative path, quotes, a
# backslash and non-ASCII in a string, upper-case domains (stored lower-case), a custom
# special_use table, a single listen string instead of a list.
FULL = r'''
[server]
hostname = "mäil \"quoted\" \\ host"
state_dir = "state"
user = "nobody"

[auth]
passwd_file = "etc/passwd"
allow_plaintext = true
default_scheme = "PLAIN"
failure_delay = 0.25

[tls]
cert = "certs/server.pem"
key = "/etc/ssl/private/server.key"

[store]
mail_location = "mbox:~/mail:INBOX=/var/mail/%u"
lock_timeout = 5
fsync = false

[imap]
listen = "127.0.0.1:1143"
listen_tls = ["127.0.0.1:1993", "[::1]:1993"]
max_literal = 1000
special_use = { Sent = "\\Sent", "Gesendete Objekte" = "\\Sent", Trash = "\\Trash" }

[pop3]
listen = ["127.0.0.1:1110"]
uidl_format = "%v.%u"

[smtp]
listen = ["127.0.0.1:1025"]
submissions = ["127.0.0.1:1465"]
local_domains = ["Example.ORG", "mail.example.org."]
mynetworks = ["10.0.0.0/8"]
recipient_delimiter = "-"
postmaster = "alice"
max_recipients = 7
'''


def show(*args: str) -> str:
    result = run_cli("config", "show", *args)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def reload(text: str, where: Path) -> Config:
    """What retrieval makes of the printed TOML, as if it were a config file at `where`."""
    return config_from_dict(tomllib.loads(text), where)


def same(a: Config, b: Config) -> bool:
    return dataclasses.replace(a, path=b.path) == b


def section_lines(text: str, section: str) -> list[str]:
    """The lines of one [section] in the output."""
    match = re.search(rf"^\[{section}\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    assert match, f"[{section}] missing from:\n{text}"
    return [line for line in match.group(1).splitlines() if line]


def test_defaults_read_back_to_the_default_config(tmp_path):
    text = show()
    assert text.startswith("# retrieval's built-in defaults")
    elsewhere = tmp_path / "elsewhere.toml"
    assert reload(text, elsewhere) == Config(path=elsewhere)
    assert "# default:" not in text  # nothing differs from its default


def test_every_schema_key_is_shown(tmp_path):
    """New keys in config._SCHEMA appear without a change here (set ones as `key =`, unset as `# key =`)."""
    text = show()
    for section, schema in _SCHEMA.items():
        lines = section_lines(text, section)
        for key in schema:
            assert any(re.match(rf"(# )?{re.escape(key)} = ", line) for line in lines), f"{section}.{key} not shown"


def test_a_full_config_reads_back_to_the_same_config(tmp_path):
    conf = tmp_path / "etc" / "retrieval.toml"
    conf.parent.mkdir()
    conf.write_text(FULL)
    original = load_config(conf)
    text = show("--config", str(conf))
    assert text.startswith(f"# effective settings from {conf}")
    # read back from another folder: relative paths were printed resolved
    other = tmp_path / "other" / "copy.toml"
    assert same(reload(text, other), original)
    # the resolved path, and the default beside a changed value
    assert f'state_dir = "{tmp_path}/etc/state"  # default: "/var/lib/retrieval"' in text
    assert 'local_domains = ["example.org", "mail.example.org"]  # default: []' in text
    assert "max_message_size = 52428800\n" in text  # a default: no comment
    assert "# group =  (unset)" in text
    assert 'cert = "' + str(tmp_path / "etc" / "certs" / "server.pem") + '"  # default: unset' in text
    # the awkward string survived as TOML
    assert tomllib.loads(text)["server"]["hostname"] == 'mäil "quoted" \\ host'
    # a second round gives the same settings
    other.parent.mkdir()
    other.write_text(text)
    assert show("--config", str(other)).split("\n", 1)[1] == text.split("\n", 1)[1]


def test_n_shows_only_what_the_file_sets(tmp_path):
    conf = tmp_path / "retrieval.toml"
    conf.write_text(FULL)
    original = load_config(conf)
    text = show("-n", "--config", str(conf))
    assert text.startswith(f"# settings set in {conf}")
    data = tomllib.loads(text)
    written = tomllib.loads(FULL)
    assert {s: set(t) for s, t in data.items()} == {s: set(t) for s, t in written.items()}
    assert "max_message_size" not in text and "idle_timeout" not in text
    assert same(reload(text, tmp_path / "copy.toml"), original)


def test_n_on_a_small_file_omits_untouched_sections(tmp_path):
    conf = tmp_path / "retrieval.toml"
    conf.write_text('[server]\nhostname = "mx.example.test"\n')
    text = show("-n", "-c", str(conf))
    assert text.splitlines()[1:] == ["[server]", 'hostname = "mx.example.test"  # default: "localhost"']


def test_a_bad_config_prints_its_problems_and_nothing_else(tmp_path):
    conf = tmp_path / "retrieval.toml"
    conf.write_text('[smtp]\nmax_recipients = "many"\n')
    result = run_cli("config", "show", "--config", str(conf))
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"key smtp.max_recipients" in result.stderr and b"fix:" in result.stderr


def test_n_without_a_config_file_is_refused():
    result = run_cli("config", "show", "-n")
    assert result.returncode == 2
    assert result.stdout == b""
    assert b"-n needs --config" in result.stderr

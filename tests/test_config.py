"""Config loading: every mistake names the key and says how to fix it."""

from __future__ import annotations

import pytest

from retrieval.config import load_config, parse_listen
from retrieval.problems import ProblemsError


def write(tmp_path, text):
    path = tmp_path / "retrieval.toml"
    path.write_text(text)
    return path


def problems_of(path):
    with pytest.raises(ProblemsError) as info:
        load_config(path)
    return [str(p) for p in info.value.problems]


def test_full_config_loads_with_relative_paths(tmp_path):
    path = write(
        tmp_path,
        """
[server]
hostname = "mail.example.test"
state_dir = "state"
[auth]
passwd_file = "passwd"
allow_plaintext = false
default_scheme = "blf-crypt"
[tls]
cert = "certs/server.pem"
key = "certs/server.key"
[store]
mail_location = "mbox:~/mail:INBOX=/var/mail/%u"
[imap]
listen = ["127.0.0.1:143", "[::1]:143"]
listen_tls = ["127.0.0.1:993"]
[pop3]
listen = ["127.0.0.1:110"]
listen_tls = ["127.0.0.1:995"]
""",
    )
    config = load_config(path)
    assert config.server.state_dir == tmp_path / "state"
    assert config.tls.cert == tmp_path / "certs" / "server.pem"
    assert config.imap.listen == ("127.0.0.1:143", "[::1]:143")
    assert config.pop3.enabled and config.imap.enabled
    assert config.auth.allow_plaintext is False


def test_unknown_keys_and_sections_are_named(tmp_path):
    found = problems_of(write(tmp_path, '[server]\nhostnme = "x"\n[imapd]\nlisten = []\n'))
    assert any("key server.hostnme: unknown key" in p and "hostname" in p for p in found)
    assert any("section [imapd]: unknown section" in p for p in found)


@pytest.mark.parametrize(
    "text, key",
    [
        ('[auth]\nallow_plaintext = "yes"\n', "auth.allow_plaintext"),
        ('[imap]\nlisten = ["127.0.0.1:99999"]\n', "imap.listen"),
        ('[imap]\nlisten = ["mail.example:143"]\n', "imap.listen"),
        ('[imap]\nmax_literal = -5\n', "imap.max_literal"),
        ('[store]\nmail_location = "sdbox:~/mail"\n', "store.mail_location"),
        ('[store]\nmail_location = "maildir:~/Maildir:BOGUS=1"\n', "store.mail_location"),
        ('[auth]\ndefault_scheme = "ROT13"\n', "auth.default_scheme"),
    ],
)
def test_bad_values_name_their_key(tmp_path, text, key):
    found = problems_of(write(tmp_path, text))
    assert any(f"key {key}:" in p and "fix:" in p for p in found), found


def test_tls_listener_needs_a_certificate(tmp_path):
    found = problems_of(write(tmp_path, '[imap]\nlisten_tls = ["127.0.0.1:993"]\n'))
    assert any("[tls]" in p for p in found)


def test_same_port_twice_is_refused(tmp_path):
    found = problems_of(write(tmp_path, '[imap]\nlisten = ["127.0.0.1:1143"]\n[pop3]\nlisten = ["127.0.0.1:1143"]\n'))
    assert any("also used by imap.listen" in p for p in found)


def test_syntax_error_and_missing_file(tmp_path):
    assert any("syntax" in p for p in problems_of(write(tmp_path, "[server\n")))
    assert any("not found" in p for p in problems_of(tmp_path / "nope.toml"))


def test_parse_listen():
    assert parse_listen("127.0.0.1:143") == ("127.0.0.1", 143)
    assert parse_listen("[::1]:993") == ("::1", 993)
    assert parse_listen("*:110") == ("", 110)
    for bad in ("127.0.0.1", "host:0", "[::1]143", "300.1.1.1:25"):
        with pytest.raises(ValueError):
            parse_listen(bad)

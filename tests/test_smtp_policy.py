"""Recipient decisions, trace headers, local delivery and the [smtp] config, without sockets."""

from __future__ import annotations

import datetime
import re

import pytest

from conftest import Site, site_for
from retrieval.auth.passwd import PasswdFile
from retrieval.config import load_config
from retrieval.problems import ProblemsError
from retrieval.smtp import local
from retrieval.smtp.delivery import queue_for
from retrieval.smtp.policy import RecipientPolicy
from retrieval.smtp.targets import LocalTarget, RemoteTarget
from retrieval.smtp.session import Envelope, Recipient

USERS = {"alice": "alice", "bob": "bob", "carol@example.org": "carol@example.org"}


def policy(**kw) -> RecipientPolicy:  # type: ignore[no-untyped-def]
    args = dict(
        local_domains=["mail.example.test", "localhost", "example.org", "xn--mnchen-3ya.example"],
        mynetworks=["127.0.0.0/8", "::1/128", "192.168.1.0/24"],
        lookup=USERS.get,
        first_user=lambda: "alice",
    )
    args.update(kw)
    return RecipientPolicy(**args)  # type: ignore[arg-type]


# address, client ip, authenticated -> (code, status, target)
CASES = [
    ("alice@mail.example.test", "203.0.113.9", False, 250, "2.1.5", LocalTarget("alice")),
    ("alice@LOCALHOST", "203.0.113.9", False, 250, "2.1.5", LocalTarget("alice")),
    ("alice@mail.example.test.", "203.0.113.9", False, 250, "2.1.5", LocalTarget("alice")),
    ("Alice@mail.example.test", "203.0.113.9", False, 250, "2.1.5", LocalTarget("alice")),
    ("alice+lists@localhost", "203.0.113.9", False, 250, "2.1.5", LocalTarget("alice", "lists")),
    ("alice+@localhost", "203.0.113.9", False, 250, "2.1.5", LocalTarget("alice")),
    ('"alice"@localhost', "203.0.113.9", False, 250, "2.1.5", LocalTarget("alice")),
    ("carol@example.org", "203.0.113.9", False, 250, "2.1.5", LocalTarget("carol@example.org")),
    ("bob@münchen.example", "203.0.113.9", False, 250, "2.1.5", LocalTarget("bob")),
    ("nobody@localhost", "203.0.113.9", False, 550, "5.1.1", None),
    ("nobody@localhost", "127.0.0.1", True, 550, "5.1.1", None),
    ("carol@localhost", "203.0.113.9", False, 550, "5.1.1", None),
    ("+lists@localhost", "203.0.113.9", False, 550, "5.1.1", None),
    ("postmaster@localhost", "203.0.113.9", False, 250, "2.1.5", LocalTarget("alice")),
    ("Postmaster", "203.0.113.9", False, 250, "2.1.5", LocalTarget("alice")),
    ("someone", "203.0.113.9", False, 501, "5.1.3", None),
    ("friend@elsewhere.example", "203.0.113.9", False, 554, "5.7.1", None),
    ("friend@elsewhere.example", "192.168.1.77", False, 250, "2.1.5", RemoteTarget("friend@elsewhere.example")),
    ("friend@elsewhere.example", "::ffff:127.0.0.1", False, 250, "2.1.5", RemoteTarget("friend@elsewhere.example")),
    ("friend@elsewhere.example", "::1", False, 250, "2.1.5", RemoteTarget("friend@elsewhere.example")),
    ("friend@elsewhere.example", "203.0.113.9", True, 250, "2.1.5", RemoteTarget("friend@elsewhere.example")),
    ("friend@sub.example.org", "203.0.113.9", False, 554, "5.7.1", None),
]


@pytest.mark.parametrize("address, ip, authenticated, code, status, target", CASES)
def test_recipient_decisions(address, ip, authenticated, code, status, target):
    reply, got = policy().check(address, ip, authenticated)
    assert (reply.code, reply.status, got) == (code, status, target)


def test_reply_texts():
    assert policy().check("nobody@localhost", "203.0.113.9", False)[0].text == "No such user here"
    assert policy().check("x@elsewhere.example", "203.0.113.9", False)[0].text == "Relay access denied"


def test_postmaster_choice_and_delimiters():
    assert policy(postmaster="bob").check("postmaster@localhost", None, False)[1] == LocalTarget("bob")
    with_user = {**USERS, "postmaster": "postmaster"}
    assert policy(lookup=with_user.get).check("POSTMASTER@localhost", None, False)[1] == LocalTarget("postmaster")
    nobody = policy(lookup={}.get, first_user=lambda: None).check("postmaster@localhost", None, False)[0]
    assert nobody.code == 451
    assert policy(recipient_delimiter="").check("alice+x@localhost", None, False)[0].code == 550
    assert policy(recipient_delimiter="-+").check("alice-x@localhost", None, False)[1] == LocalTarget("alice", "x")


ALIASES = {"staff", "root", "postmaster"}


@pytest.mark.parametrize("address, code, status, target", [
    ("staff@localhost", 250, "2.1.5", None),  # an alias: no target, expanded at delivery
    ("STAFF@mail.example.test", 250, "2.1.5", None),
    ("staff+news@localhost", 250, "2.1.5", None),  # the base name after the delimiter
    ("postmaster@localhost", 250, "2.1.5", None),  # an alias for postmaster wins over the default
    ("MAILER-DAEMON@localhost", 250, "2.1.5", None),  # built in, like postmaster
    ("alice@localhost", 250, "2.1.5", LocalTarget("alice")),
    ("staff", 501, "5.1.3", None),  # only postmaster may come without a domain
    ("stuff@localhost", 550, "5.1.1", None),
    ("staff@elsewhere.example", 554, "5.7.1", None),  # an alias name does not make a domain ours
])
def test_alias_names_are_accepted_like_users(address, code, status, target):
    from retrieval.smtp.aliases import split_extension

    def alias_exists(local: str) -> bool:
        return local.lower() in ALIASES or split_extension(local.lower(), "+")[0] in ALIASES

    reply, got = policy(alias_exists=alias_exists).check(address, "203.0.113.9", False)
    assert (reply.code, reply.status, got) == (code, status, target)


def test_an_unreadable_alias_file_is_a_temporary_failure():
    reply, target = policy(alias_exists=lambda local: None).check("alice@localhost", "203.0.113.9", False)
    assert (reply.code, reply.status, target) == (451, "4.3.0", None)


def test_an_unreadable_passwd_file_is_a_temporary_failure(tmp_path):
    from retrieval.config import Config

    passwd = PasswdFile(tmp_path / "missing")
    p = RecipientPolicy.from_config(Config(path=tmp_path / "r.toml"), passwd)
    reply, target = p.check("alice@localhost", "203.0.113.9", False)
    assert (reply.code, reply.status, target) == (451, "4.3.0", None)
    assert p.check("x@elsewhere.example", "203.0.113.9", False)[0].code == 554


# -- trace headers ------------------------------------------------------------------------

ENV = Envelope(sender="s@example.org", recipients=(Recipient("alice@localhost", LocalTarget("alice")),), helo="client.example",
               esmtp=True, tls=True, auth_user="alice", body=None, smtputf8=False, size=10)
NOW = datetime.datetime(2024, 6, 4, 12, 30, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))


def test_received_header_as_rfc_5321_section_4_4():
    header = local.received_header(ENV, local.Client("192.0.2.7", "client.example", "TLSv1.3 with cipher X"),
                                   "mx.test", "QID1", "alice@localhost", NOW)
    assert header == (
        b"Received: from client.example (client.example [192.0.2.7])\r\n"
        b"\t(using TLSv1.3 with cipher X)\r\n"
        b"\tby mx.test (retrieval) with ESMTPSA id QID1\r\n"
        b"\tfor <alice@localhost>; Tue, 04 Jun 2024 12:30:05 +0200\r\n"
    )
    plain = local.received_header(Envelope(**{**ENV.__dict__, "tls": False, "auth_user": None, "helo": "evil (x)\\"}),
                                  local.Client("::1"), "mx.test", "QID2", None, NOW)
    assert plain == (b"Received: from evil??x?? (unknown [IPv6:::1])\r\n"
                     b"\tby mx.test (retrieval) with ESMTP id QID2; Tue, 04 Jun 2024 12:30:05 +0200\r\n")


def test_protocol_names():
    assert Envelope(**{**ENV.__dict__, "esmtp": False}).protocol == "SMTP"
    assert Envelope(**{**ENV.__dict__, "tls": False}).protocol == "ESMTPA"
    assert Envelope(**{**ENV.__dict__, "auth_user": None}).protocol == "ESMTPS"
    assert Envelope(**{**ENV.__dict__, "smtputf8": True}).protocol == "UTF8SMTPSA"


def test_message_id_and_date_added_when_missing():
    data = b"Subject: x\r\nmessage-id: <a@b>\r\n\r\nbody\r\n"
    added = local.add_missing_headers(data, "QID", "mx.test", NOW)
    assert added == b"Subject: x\r\nmessage-id: <a@b>\r\nDate: Tue, 04 Jun 2024 12:30:05 +0200\r\n\r\nbody\r\n"
    full = b"Date: Mon, 3 Jun 2024 10:00:00 +0000\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n"
    assert local.add_missing_headers(full, "QID", "mx.test", NOW) == full
    assert local.add_missing_headers(b"\r\nbody only\r\n", "QID", "mx.test", NOW).startswith(b"Message-ID: <QID@mx.test>\r\nDate: ")
    assert local.add_missing_headers(b"Subject: no body", "QID", "mx.test", NOW).startswith(b"Subject: no body\r\nMessage-ID:")


def test_queue_ids_are_unique_and_sortable_by_time():
    ids = [local.new_queue_id() for _ in range(1000)]
    assert len(set(ids)) == 1000 and all(re.fullmatch(r"[0-9A-Z]{10,20}", i) for i in ids)


# -- local delivery through the MDA path ---------------------------------------------------


def accept_and_deliver(config, passwd, envelope, data, client, submission):  # type: ignore[no-untyped-def]
    """What the server does for DATA and then for the queued message, without the reactor."""
    from twisted.internet import reactor

    from retrieval.smtp.delivery import accept, make_runner

    runner = make_runner(config, passwd, reactor)  # its threads' work, called here directly
    queue = runner.queue
    queue.create()
    reply, meta, stored = accept(config, queue, envelope, data, client, submission)
    attempt = runner._local_phase(meta.id, (meta, stored))
    try:
        runner._finish_phase(attempt)
    finally:
        import os

        os.close(attempt.fd)
    return reply, meta.id, {key: outcome for key, (_, outcome) in attempt.outcomes.items()}


@pytest.mark.parametrize("layout", ["maildir", "mbox"])
def test_deliver_envelope_into_inbox_and_existing_folder(tmp_path, layout):
    site = site_for(tmp_path, layout)
    site.add_user("alice")
    store = site.store("alice")
    store.create("Lists")
    store.close()
    config = load_config(site.config)
    passwd = PasswdFile(site.passwd)
    env = Envelope(**{**ENV.__dict__, "recipients": (
        Recipient("alice@localhost", LocalTarget("alice")),
        Recipient("alice@mail.example.test", LocalTarget("alice")),  # the same mailbox: one copy
        Recipient("alice+lists@localhost", LocalTarget("alice", "lists")),  # matched to Lists
        Recipient("alice+nosuch@localhost", LocalTarget("alice", "NoSuch")),  # no such folder: INBOX
    )})
    reply, qid, outcomes = accept_and_deliver(config, passwd, env, b"Subject: hi\r\n\r\nbody\r\n",
                                              local.Client("127.0.0.1", "localhost"), submission=True)
    assert (reply.code, reply.text) == (250, f"Ok: queued as {qid}")
    # alice, alice@ another local domain and alice+nosuch are one copy in INBOX
    assert [o.code for o in outcomes.values()] == [250, 250]
    store = site.store("alice")
    inbox = store.open("INBOX")
    rows = inbox.messages()
    assert len(rows) == 1
    first = inbox.read_crlf(rows[0].uid)
    assert first.startswith(b"Return-Path: <s@example.org>\r\nDelivered-To: alice\r\nReceived: from client.example (localhost [127.0.0.1])\r\n")
    # four recipients: the trace names none of them (Postfix too: Bcc recipients stay private)
    assert b"\tfor <" not in first and f"\r\nMessage-ID: <{qid}@mail.example.test>\r\n".encode() in first
    assert first.endswith(b"\r\n\r\nbody\r\n")
    lists = store.open("Lists")
    (row,) = lists.messages()
    assert lists.read_crlf(row.uid) == first
    if layout == "maildir":
        (path,) = (tmp_path / "home" / "alice" / "Maildir" / ".Lists" / "new").iterdir()
        assert b"\r\n" not in path.read_bytes()  # stored with Unix line ends, as Postfix does
    store.close()


def test_a_failed_local_copy_is_deferred_and_stays_queued(tmp_path):
    site = Site(tmp_path)
    site.add_user("alice")
    (tmp_path / "home" / "alice" / "Maildir").write_text("not a folder")
    config = load_config(site.config)
    reply, qid, outcomes = accept_and_deliver(config, PasswdFile(site.passwd), ENV, b"Subject: x\r\n\r\n",
                                              local.Client("127.0.0.1"), submission=False)
    assert reply.code == 250
    (outcome,) = outcomes.values()
    assert outcome.code == 451 and outcome.status == "4.2.0"
    queue = queue_for(config)
    assert queue.ids() == [qid] and queue.state(qid).attempts == 1 and queue.state(qid).next_attempt > 0


# -- the [smtp] section ----------------------------------------------------------------------


def problems_of(tmp_path, text: str) -> list[str]:
    path = tmp_path / "r.toml"
    path.write_text(text)
    try:
        load_config(path)
    except ProblemsError as exc:
        return [str(p) for p in exc.problems]
    return []


def test_smtp_section_defaults_and_values(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[smtp]\nlisten = ["127.0.0.1:25"]\n')
    smtp = load_config(path).smtp
    assert smtp.enabled and smtp.mynetworks == ("127.0.0.0/8", "::1/128")
    assert smtp.max_message_size == 50 * 1024 * 1024 and smtp.recipient_delimiter == "+"
    assert smtp.local_domains == () and smtp.postmaster is None
    path.write_text(
        '[tls]\ncert = "c.pem"\nkey = "c.key"\n'
        '[smtp]\nlisten = "127.0.0.1:25"\nsubmission = ["127.0.0.1:587"]\nsubmissions = ["127.0.0.1:465"]\n'
        'local_domains = ["Example.ORG.", "mail.example.org"]\nmynetworks = ["10.0.0.0/8"]\n'
        'max_message_size = 1000\nrecipient_delimiter = ""\npostmaster = "bob"\n'
    )
    smtp = load_config(path).smtp
    assert smtp.local_domains == ("example.org", "mail.example.org") and smtp.recipient_delimiter == ""
    assert smtp.submissions == ("127.0.0.1:465",) and smtp.postmaster == "bob"
    assert not load_config(tmp_path / "r.toml").imap.enabled


@pytest.mark.parametrize(
    "text, key",
    [
        ('[smtp]\nlisten = ["mx.example:25"]\n', "smtp.listen"),
        ('[smtp]\nmynetworks = ["10.0.0.300/8"]\n', "smtp.mynetworks"),
        ('[smtp]\nlocal_domains = ["bad domain"]\n', "smtp.local_domains"),
        ('[smtp]\nmax_message_size = 0\n', "smtp.max_message_size"),
        ('[smtp]\nrecipient_delimiter = "@"\n', "smtp.recipient_delimiter"),
        ('[smtp]\nrelayhost = "[mail.example.org"\n', "smtp.relayhost"),
    ],
)
def test_bad_smtp_values_name_their_key(tmp_path, text, key):
    found = problems_of(tmp_path, text)
    assert any(f"key {key}:" in p and "fix:" in p for p in found), found


def test_smtp_cross_checks(tmp_path):
    assert any("[tls]" in p for p in problems_of(tmp_path, '[smtp]\nsubmissions = ["127.0.0.1:465"]\n'))
    assert any("smtp.submission" in p for p in problems_of(tmp_path, '[smtp]\nsubmission = ["127.0.0.1:587"]\n'))
    both = '[pop3]\nlisten = ["127.0.0.1:2525"]\n[smtp]\nlisten = ["127.0.0.1:2525"]\n'
    assert any("also used by pop3.listen" in p for p in problems_of(tmp_path, both))

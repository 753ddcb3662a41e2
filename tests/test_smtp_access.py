"""The access table and the antispam decisions, without sockets: a table of inputs and expected answers."""

from __future__ import annotations

import os

import pytest

from retrieval.smtp.access import AccessTable, decide, parse_action
from retrieval.smtp.dnsbl import Listing, query_name
from retrieval.smtp.policy import Peer, RecipientPolicy, helo_problem
from retrieval.smtp.session import Reply
from retrieval.smtp.targets import DiscardTarget, LocalTarget, RemoteTarget

TABLE = """\
# clients
Connect:192.168.1            RELAY
203.0.113.0/24               REJECT
203.0.113.7                  OK
10                           REJECT
10.1.2.3                     DISCARD
IPv6:2001:db8::/32           REJECT
2001:db8::25                 OK
Connect:mx.partner.example   OK
Connect:relay.friend.example RELAY

# names: for clients, senders and recipients alike
spam.example                 REJECT
example.net                  ERROR:5.7.1:550 We do not talk to example.net
badguy.example               ERROR:"550 Go away"
sub.badguy.example           OK

# senders and recipients
From:spammer@example.com     DISCARD
From:<>                      OK
From:relay@example.org       RELAY
To:partner.example           RELAY
abuse@                       OK
To:bob@mail.example.test     ERROR:4.2.2:450 Mailbox full
alice+spam@mail.example.test DISCARD
From:ceo@                    REJECT
To:ceo@                      OK
"""


@pytest.fixture
def table(tmp_path) -> AccessTable:
    path = tmp_path / "access"
    path.write_text(TABLE)
    t = AccessTable(path)
    assert t.problems == [] and t.unavailable is None
    return t


def line_of(key: str) -> int:
    return next(i for i, line in enumerate(TABLE.splitlines(), 1) if line.split() and line.split()[0] == key)


# role, key -> (action, the key that decided) or None
LOOKUPS = [
    ("client", "192.168.1.77", "RELAY", "Connect:192.168.1"),
    ("client", "192.168.10.1", None, None),  # whole octets: 192.168.1 is not 192.168.10
    ("client", "203.0.113.9", "REJECT", "203.0.113.0/24"),
    ("client", "203.0.113.7", "OK", "203.0.113.7"),  # exact beats the network
    ("client", "::ffff:203.0.113.7", "OK", "203.0.113.7"),  # IPv4-mapped is IPv4
    ("client", "10.200.0.1", "REJECT", "10"),
    ("client", "10.1.2.3", "DISCARD", "10.1.2.3"),
    ("client", "2001:db8::1", "REJECT", "IPv6:2001:db8::/32"),
    ("client", "2001:db8::25", "OK", "2001:db8::25"),
    ("client", "2001:db9::1", None, None),
    ("client", "mx.partner.example", "OK", "Connect:mx.partner.example"),
    ("client", "a.mx.partner.example", "OK", "Connect:mx.partner.example"),  # a domain covers its subdomains
    ("client", "partner.example", None, None),  # ... but not its parent (To:partner.example is no client key)
    ("client", "host.spam.example", "REJECT", "spam.example"),  # untagged: clients too
    ("client", "x.sub.badguy.example", "OK", "sub.badguy.example"),  # most specific domain wins
    ("client", "www.badguy.example", "ERROR", "badguy.example"),
    ("sender", "someone@spam.example", "REJECT", "spam.example"),
    ("sender", "someone@Deep.Spam.Example", "REJECT", "spam.example"),
    ("sender", "spammer@example.com", "DISCARD", "From:spammer@example.com"),
    ("sender", "SPAMMER@example.com", "DISCARD", "From:spammer@example.com"),
    ("sender", "other@example.com", None, None),
    ("sender", "<>", "OK", "From:<>"),
    ("sender", "abuse@anywhere.example", "OK", "abuse@"),  # user@ at any domain
    ("sender", "abuse@spam.example", "OK", "abuse@"),  # user@ is more specific than the domain
    ("sender", "ceo@example.org", "REJECT", "From:ceo@"),
    ("recipient", "ceo@example.org", "OK", "To:ceo@"),  # the same key, tagged for each role
    ("recipient", "friend@partner.example", "RELAY", "To:partner.example"),
    ("recipient", "friend@mail.partner.example", "RELAY", "To:partner.example"),
    ("sender", "friend@partner.example", None, None),  # To: only
    ("recipient", "bob@mail.example.test", "ERROR", "To:bob@mail.example.test"),
    ("recipient", "alice+spam@mail.example.test", "DISCARD", "alice+spam@mail.example.test"),
    ("recipient", "alice@mail.example.test", None, None),
    ("recipient", '"abuse"@example.org', "OK", "abuse@"),  # quoting does not hide an address
    ("recipient", "abuse+x@example.org", "OK", "abuse@"),  # nor does a +detail
    ("recipient", "x@example.net.", "ERROR", "example.net"),
    ("recipient", "x@[192.0.2.1]", None, None),
]


@pytest.mark.parametrize("role, key, action, decided_by", LOOKUPS)
def test_lookups(table, role, key, action, decided_by):
    rule = table.lookup(role, key)
    if action is None:
        assert rule is None
    else:
        assert (rule.action, rule.key) == (action, decided_by)
        assert rule.source == f"{table.path}:{line_of(decided_by)}"


# client ip, client name, sender, recipient -> reply (code, status, text) or None, ok, relay, discard key
DECISIONS = [
    ("198.51.100.1", None, "a@b.example", "c@d.example", None, False, False, None),
    ("203.0.113.9", None, "a@b.example", "c@d.example",
     (550, "5.7.1", "Client host [203.0.113.9] rejected: Access denied"), False, False, None),
    ("198.51.100.1", None, "x@spam.example", None,
     (550, "5.7.1", "<x@spam.example>: Sender address rejected: Access denied"), False, False, None),
    ("198.51.100.1", None, "a@b.example", "x@spam.example",
     (550, "5.7.1", "<x@spam.example>: Recipient address rejected: Access denied"), False, False, None),
    ("198.51.100.1", None, "a@example.net", None, (550, "5.7.1", "We do not talk to example.net"), False, False, None),
    ("198.51.100.1", None, "a@badguy.example", None, (550, "5.7.1", "Go away"), False, False, None),
    ("198.51.100.1", None, "a@b.example", "bob@mail.example.test", (450, "4.2.2", "Mailbox full"), False, False, None),
    # the client's REJECT wins over the sender's OK: an OK only lifts DNSBL and HELO checks
    ("203.0.113.9", None, "", None, (550, "5.7.1", "Client host [203.0.113.9] rejected: Access denied"),
     False, False, None),
    ("203.0.113.7", None, "a@b.example", "c@d.example", None, True, False, None),
    ("192.168.1.5", None, "a@b.example", "c@d.example", None, True, True, None),  # client RELAY: relay, and OK
    ("198.51.100.1", "relay.friend.example", "a@b.example", "c@d.example", None, True, True, None),
    ("198.51.100.1", None, "relay@example.org", "c@d.example", None, True, False, None),  # sender RELAY: OK only
    ("198.51.100.1", None, "a@b.example", "c@partner.example", None, False, True, None),  # To: RELAY: no OK
    ("198.51.100.1", None, "spammer@example.com", "c@d.example", None, False, False, "From:spammer@example.com"),
    ("10.1.2.3", None, "a@b.example", "c@d.example", None, False, False, "10.1.2.3"),
    ("198.51.100.1", None, "a@b.example", "alice+spam@mail.example.test", None, False, False,
     "alice+spam@mail.example.test"),
    # the host name is looked up before the IP, as Sendmail does
    ("203.0.113.9", "mx.partner.example", "a@b.example", None, None, True, False, None),
]


@pytest.mark.parametrize("ip, name, sender, recipient, reply, ok, relay, discard", DECISIONS)
def test_decisions(table, ip, name, sender, recipient, reply, ok, relay, discard):
    d = decide(table, ip, name, sender, recipient)
    assert (d.reply.code, d.reply.status, d.reply.text) == reply if reply else d.reply is None
    if reply is None:
        assert (d.ok, d.relay) == (ok, relay)
        assert (d.discard.key if d.discard else None) == discard
    else:
        assert d.decided_by is not None and d.rules[-1][1] is d.decided_by


def test_no_table_decides_nothing():
    assert decide(None, "203.0.113.9", None, "a@b", "c@d") == decide(None, None)


# -- actions and parse errors -------------------------------------------------------------


@pytest.mark.parametrize(
    "text, action, reply",
    [
        ("ok", "OK", None),
        ("Relay", "RELAY", None),
        ("REJECT", "REJECT", None),
        ("DISCARD", "DISCARD", None),
        ("ERROR:5.7.1:Go away", "ERROR", Reply(550, "5.7.1", "Go away")),
        ("ERROR:4.7.1:Slow down", "ERROR", Reply(450, "4.7.1", "Slow down")),
        ('ERROR:"550 Go away"', "ERROR", Reply(550, "5.7.1", "Go away")),
        ('ERROR:"554 5.7.0 No thanks"', "ERROR", Reply(554, "5.7.0", "No thanks")),
        ("ERROR:5.7.1:550 Mail from you is not accepted", "ERROR", Reply(550, "5.7.1", "Mail from you is not accepted")),
        ('ERROR:5.2.2:"552 Over quota"', "ERROR", Reply(552, "5.2.2", "Over quota")),
        ("ERROR:421 4.3.2 Later", "ERROR", Reply(421, "4.3.2", "Later")),
        ("ERROR:Not here", "ERROR", Reply(550, "5.7.1", "Not here")),
        ("ERROR:550", "ERROR", Reply(550, "5.7.1", "Access denied")),
    ],
)
def test_actions(text, action, reply):
    assert parse_action(text) == (action, reply)


@pytest.mark.parametrize("text", ["ACCEPT", "ERROR:250 fine", "ERROR:5.7.1:450 mixed", "ERROR:6.0.0:x",
                                  "ERROR:5.7.1:550 4.7.1 two codes", "ERROR:600 x"])
def test_bad_actions(text):
    with pytest.raises(ValueError):
        parse_action(text)


def test_parse_problems_name_file_and_line(tmp_path):
    path = tmp_path / "access"
    path.write_text(
        "192.168.1 RELAY\n"
        "\n"
        "lonely-key\n"  # 3: no action
        "example.com ACCEPT\n"  # 4: unknown action
        "192.168.300 REJECT\n"  # 5: not an IP prefix
        "Connect:<> REJECT\n"  # 6: <> is a sender
        "@example.com REJECT\n"  # 7: no local part
        "bad_domain..example REJECT\n"  # 8
        "192.168.1 REJECT\n"  # 9: duplicate of line 1
        "IPv6:10.0.0.0/8 OK\n"  # 10
        "2001:db8::/200 OK\n"  # 11
        "example.com OK   # trailing comment\n"  # fine
    )
    table = AccessTable(path)
    where = [(p.file, p.where) for p in table.problems]
    assert where == [(str(path), f"line {n}") for n in (3, 4, 5, 6, 7, 8, 9, 10, 11)], table.problems
    assert all(p.fix for p in table.problems)
    assert "already on line 1" in table.problems[6].message
    # the good lines are in force, the first of the duplicates counts
    assert table.lookup("client", "192.168.1.9").action == "RELAY"
    assert table.lookup("sender", "x@example.com").action == "OK"
    assert len(table) == 2


def test_reload_on_change_and_unreadable_file(tmp_path):
    path = tmp_path / "access"
    path.write_text("203.0.113 REJECT\n")
    table = AccessTable(path)
    assert not table.changed() and table.refresh() is None
    assert decide(table, "203.0.113.5").reply.code == 550
    path.write_text("203.0.113 OK\n198.51.100 REJECT\n")
    assert table.changed()
    assert table.refresh() == []
    assert decide(table, "203.0.113.5").ok and decide(table, "198.51.100.1").reply.code == 550
    os.unlink(path)
    assert table.changed()
    table.refresh()
    # an unreadable table is a temporary failure for everyone: neither its REJECTs nor its OKs are lost
    assert table.unavailable and (decide(table, "192.0.2.1").reply.code, decide(table, "192.0.2.1").reply.status) == (451, "4.3.0")
    assert not table.changed()
    path.write_text("")
    assert table.refresh() == [] and table.unavailable is None and decide(table, "192.0.2.1").reply is None


# -- the recipient policy with the access step and the antispam checks ----------------------

USERS = {"alice": "alice", "bob": "bob"}


def policy(table: AccessTable | None, **kw) -> RecipientPolicy:  # type: ignore[no-untyped-def]
    return RecipientPolicy(["mail.example.test", "localhost"], ["127.0.0.0/8", "172.16.9.0/24"], USERS.get,
                           lambda: "alice", access=table, hostname="mx.example.test", **kw)


LISTED = Listing("zen.test", "127.0.0.2")

# peer, sender, recipient -> code, status, target
POLICY = [
    (Peer("198.51.100.1"), "a@b.example", "alice@mail.example.test", 250, "2.1.5", LocalTarget("alice")),
    (Peer("198.51.100.1"), "a@b.example", "friend@elsewhere.example", 554, "5.7.1", None),
    # RELAY for the client: relaying allowed
    (Peer("192.168.1.5"), "a@b.example", "friend@elsewhere.example", 250, "2.1.5",
     RemoteTarget("friend@elsewhere.example")),
    (Peer("198.51.100.1", "relay.friend.example"), "a@b.example", "friend@elsewhere.example", 250, "2.1.5",
     RemoteTarget("friend@elsewhere.example")),
    # RELAY for a recipient domain
    (Peer("198.51.100.1"), "a@b.example", "friend@partner.example", 250, "2.1.5", RemoteTarget("friend@partner.example")),
    # a sender's RELAY grants nothing: anyone can write any sender
    (Peer("198.51.100.1"), "relay@example.org", "friend@elsewhere.example", 554, "5.7.1", None),
    # the unknown-user check stays, whatever the table says
    (Peer("203.0.113.7"), "a@b.example", "nobody@mail.example.test", 550, "5.1.1", None),
    (Peer("192.168.1.5"), "a@b.example", "nobody@mail.example.test", 550, "5.1.1", None),
    (Peer("203.0.113.9"), "a@b.example", "alice@mail.example.test", 550, "5.7.1", None),
    (Peer("198.51.100.1"), "spammer@example.com", "alice@mail.example.test", 250, "2.1.5", "discard"),
    (Peer("198.51.100.1"), "a@b.example", "alice+spam@mail.example.test", 250, "2.1.5", "discard"),
    (Peer("198.51.100.1"), "spammer@example.com", "nobody@mail.example.test", 550, "5.1.1", None),
    # DNSBL: listed clients are refused unless trusted, authenticated or OK in the table
    (Peer("198.51.100.1", listing=LISTED), "a@b.example", "alice@mail.example.test", 554, "5.7.1", None),
    (Peer("172.16.9.9", listing=LISTED), "a@b.example", "alice@mail.example.test", 250, "2.1.5", LocalTarget("alice")),
    (Peer("198.51.100.1", listing=LISTED, authenticated=True), "a@b.example", "alice@mail.example.test",
     250, "2.1.5", LocalTarget("alice")),
    (Peer("203.0.113.7", listing=LISTED), "a@b.example", "alice@mail.example.test", 250, "2.1.5", LocalTarget("alice")),
    (Peer("198.51.100.1", listing=LISTED), "", "alice@mail.example.test", 250, "2.1.5", LocalTarget("alice")),
    (Peer("198.51.100.1", listing=LISTED), "a@b.example", "abuse@mail.example.test", 550, "5.1.1", None),
    (Peer("198.51.100.1", listing=LISTED), "a@b.example", "friend@partner.example", 554, "5.7.1", None),
    # HELO sanity (helo_checks on in this policy)
    (Peer("198.51.100.1", helo="mail.client.example"), "a@b.example", "alice@mail.example.test", 250, "2.1.5",
     LocalTarget("alice")),
    (Peer("198.51.100.1", helo="localhost"), "a@b.example", "alice@mail.example.test", 550, "5.7.1", None),
    (Peer("198.51.100.1", helo="mx.example.test"), "a@b.example", "alice@mail.example.test", 550, "5.7.1", None),
    (Peer("198.51.100.1", helo="bad_name!"), "a@b.example", "alice@mail.example.test", 501, "5.5.2", None),
    (Peer("198.51.100.1", helo="[198.51.100.1]"), "a@b.example", "alice@mail.example.test", 250, "2.1.5",
     LocalTarget("alice")),
    (Peer("127.0.0.1", helo="localhost"), "a@b.example", "alice@mail.example.test", 250, "2.1.5", LocalTarget("alice")),
    (Peer("203.0.113.7", helo="localhost"), "a@b.example", "alice@mail.example.test", 250, "2.1.5",
     LocalTarget("alice")),
]


@pytest.mark.parametrize("peer, sender, recipient, code, status, target", POLICY)
def test_policy_with_access_and_antispam(table, peer, sender, recipient, code, status, target):
    reply, got = policy(table, helo_checks=True).check(recipient, peer.ip, peer.authenticated, sender, peer)
    assert (reply.code, reply.status) == (code, status), reply
    if target == "discard":
        assert isinstance(got, DiscardTarget) and got.address == recipient and "DISCARD" in got.reason
    else:
        assert got == target


def test_dnsbl_reply_text_and_sender_check(table):
    p = policy(table)
    reply, _ = p.check("alice@mail.example.test", "198.51.100.1", False, "a@b.example",
                       Peer("198.51.100.1", listing=LISTED))
    assert reply.text == "Service unavailable; client [198.51.100.1] blocked using zen.test"
    assert p.check_sender("a@b.example", Peer("198.51.100.1")) == Reply(250, "2.1.0", "Ok")
    assert p.check_sender("a@b.example", Peer("203.0.113.9")).code == 550
    assert p.check_sender("x@spam.example", Peer("198.51.100.1")).text.startswith("<x@spam.example>: Sender address")
    # no HELO checks unless configured
    assert p.check("alice@localhost", "198.51.100.1", False, "", Peer("198.51.100.1", helo="x"))[0].code == 250


def test_policy_without_table_keeps_its_answers():
    p = policy(None)
    assert p.check("friend@elsewhere.example", "198.51.100.1", False)[0].code == 554
    assert p.check("friend@elsewhere.example", "172.16.9.1", False)[0].code == 250
    assert p.check_sender("a@b.example", Peer("198.51.100.1")).code == 250


@pytest.mark.parametrize(
    "helo, code",
    [
        ("mail.example.org", None), ("MAIL.Example.ORG.", None), ("a-b.c", None), ("[192.0.2.1]", None),
        ("[IPv6:2001:db8::1]", None),
        ("localhost", 550), ("example", 550), ("192.0.2.1", 550), ("mail.example.123", 550),
        ("mx.example.test", 550), ("LOCALHOST.", 550), ("mail.example.test", 550),
        ("[192.0.2.300]", 501), ("[2001:db8::1]", 501), ("[IPv6:192.0.2.1]", 501), ("[192.0.2.1", 501),
        ("-bad.example", 501), ("bad..example", 501), ("under score!.example", 501), ("x" * 64 + ".example", 501),
    ],
)
def test_helo_sanity(helo, code):
    problem = helo_problem(helo, {"mx.example.test", "mail.example.test", "localhost"})
    assert (problem.code if problem else None) == code


def test_dnsbl_query_names():
    assert query_name("127.0.0.2", "zen.spamhaus.org") == "2.0.0.127.zen.spamhaus.org"
    assert query_name("::ffff:192.0.2.99", "zen.test.") == "99.2.0.192.zen.test"
    assert query_name("2001:db8::1", "zen.test") == (
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.zen.test")
    assert query_name("not-an-ip", "zen.test") is None


# -- the session's MAIL verdict (Policy.check_sender) -----------------------------------------


def test_mail_waits_for_the_sender_verdict_and_pipelined_commands_wait_behind_it():
    from retrieval.events import Send
    from retrieval.smtp import session as S

    def sent(events) -> bytes:  # type: ignore[no-untyped-def]
        return b"".join(e.data for e in events if isinstance(e, Send))

    session = S.SmtpSession(S.Policy(hostname="mx.test", check_sender=True))
    session.feed(b"EHLO client.example\r\n")
    events = session.feed(b"MAIL FROM:<bad@example.org>\r\nRCPT TO:<alice@mx.test>\r\nNOOP\r\n")
    assert events == [S.CheckSender("bad@example.org", False)] and session.waiting
    events = session.sender_done(Reply(550, "5.7.1", "<bad@example.org>: Sender address rejected: Access denied"))
    assert sent(events) == (b"550 5.7.1 <bad@example.org>: Sender address rejected: Access denied\r\n"
                            b"503 5.5.1 Error: need MAIL command\r\n250 2.0.0 Ok\r\n")
    events = session.feed(b"MAIL FROM:<> SIZE=10\r\nRCPT TO:<alice@mx.test>\r\n")
    assert events == [S.CheckSender("", False)]
    events = session.sender_done(Reply(250, "2.1.0", "Ok"))
    assert sent(events) == b"250 2.1.0 Ok\r\n"
    assert [e for e in events if not isinstance(e, Send)] == [S.CheckRecipient("alice@mx.test", "", False)]
    # a temporary answer (an unreadable table) is no error count, and no transaction either
    session.recipient_done(Reply(250, "2.1.5", "Ok"))
    session.feed(b"RSET\r\n")
    session.feed(b"MAIL FROM:<a@example.org>\r\n")
    assert sent(session.sender_done(Reply(451, "4.3.0", "Temporary lookup failure"))) == b"451 4.3.0 Temporary lookup failure\r\n"
    assert sent(session.feed(b"DATA\r\n")) == b"503 5.5.1 Error: need MAIL command\r\n"

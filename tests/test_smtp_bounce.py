"""DSN: the RFC 3461 parameters over a real connection, xtext, and the RFC 3464 reports
read back with Python's email package."""

from __future__ import annotations

import datetime
import email
import email.policy
import smtplib
import time
import uuid
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import Server, Site
from retrieval.config import load_config
from retrieval.problems import ProblemsError
from retrieval.smtp import dsn, schedule
from retrieval.smtp.bounce import REPORT_SENDER, RecipientReport, make_report, report_body, wants_report

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ARRIVAL = NOW - datetime.timedelta(hours=4, minutes=10)
UNTIL = ARRIVAL + datetime.timedelta(days=5)
ORIGINAL = (
    b"Received: from client.example (unknown [192.0.2.1])\r\n\tby mail.example.test (retrieval) with ESMTP id 4AB\r\n"
    b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: lunch\r\n"
    b"Message-ID: <lunch@example.org>\r\n\r\nShall we?\r\n-- \r\nAlice\r\n"
)
BOB = RecipientReport(
    "bob@example.com",
    "5.1.1",
    orcpt="rfc822;Bob@Example.com",
    remote_mta="mx.example.com",
    remote_ip="192.0.2.25",
    in_reply_to="RCPT TO",
    diagnostic="550-5.1.1 <bob@example.com>: Recipient address rejected:\r\n550 5.1.1 User unknown",
    last_attempt=NOW - datetime.timedelta(minutes=1),
)


def report(kind: str = "failed", recipients=(BOB,), message: bytes = ORIGINAL, **kw) -> email.message.EmailMessage:  # type: ignore[no-untyped-def]
    data = make_report(kind, hostname="mail.example.test", sender="alice@example.org", recipients=recipients,
                       message=message, arrival=ARRIVAL, now=NOW, **kw)
    assert data.count(b"\n") == data.count(b"\r\n")  # CRLF everywhere
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert not msg.defects
    return msg


def parts(msg):  # type: ignore[no-untyped-def]
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    human, status, returned = msg.get_payload()
    return human, status, returned


def status_groups(part, data: bytes = b"") -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    if part.get_content_type() == "message/delivery-status":
        blocks = part.get_payload()
    else:  # message/global-delivery-status: the email package does not know it; same syntax, UTF-8
        raw = data.split(b"Content-Type: message/global-delivery-status\r\n")[1].split(b"\r\n--")[0]
        raw = raw.split(b"\r\n", 2)[-1] if raw.startswith(b"Content-Transfer-Encoding") else raw[2:]
        blocks = [email.message_from_bytes(b, policy=email.policy.default) for b in raw.split(b"\r\n\r\n") if b.strip()]
    return [{k: str(v) for k, v in block.items()} for block in blocks]


# -- the reports ----------------------------------------------------------------------------


def test_failure_report_structure_and_fields():
    msg = report(queue_id="4AB", envid="abc+x")
    assert msg["From"].addresses[0].addr_spec == "MAILER-DAEMON@mail.example.test"
    assert msg["From"].addresses[0].display_name == "Mail Delivery System"
    assert msg["To"] == "alice@example.org"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Message-ID"].endswith("@mail.example.test>")
    assert msg["Date"].datetime == NOW
    human, status, returned = parts(msg)
    assert human.get_content_type() == "text/plain" and human.get_content_charset() == "us-ascii"
    text = human.get_content()
    assert text.startswith("This is the mail system at host mail.example.test.\r\n\r\nI'm sorry to have to inform you")
    assert "<bob@example.com>: host mx.example.com[192.0.2.25] said: 550-5.1.1\r\n    <bob@example.com>:" in text
    assert text.endswith("User unknown\r\n    (in reply to RCPT TO command)\r\n")
    assert status.get_content_type() == "message/delivery-status"
    per_message, bob = status_groups(status)
    assert per_message == {
        "Reporting-MTA": "dns; mail.example.test",
        "X-Retrieval-Queue-ID": "4AB",
        "X-Retrieval-Sender": "rfc822; alice@example.org",
        "Original-Envelope-Id": "abc+x",
        "Arrival-Date": "Sat, 28 Nov 2026 07:50:00 +0000",
    }
    assert bob == {
        "Final-Recipient": "rfc822; bob@example.com",
        "Original-Recipient": "rfc822; Bob@Example.com",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.example.com",
        "Diagnostic-Code": "smtp; 550-5.1.1 <bob@example.com>: Recipient address rejected: 550 5.1.1 User unknown",
        "Last-Attempt-Date": "Sat, 28 Nov 2026 11:59:00 +0000",
    }
    assert returned.get_content_type() == "message/rfc822"
    assert returned["Content-Description"] == "Undelivered Message"
    inner = returned.get_payload()[0]
    assert inner["Subject"] == "lunch" and inner.get_content() == "Shall we?\r\n-- \r\nAlice\r\n"
    data = make_report("failed", hostname="h.test", sender="alice@example.org", recipients=(BOB,), message=ORIGINAL,
                       arrival=ARRIVAL, now=NOW)
    assert b"\r\n\r\n" + ORIGINAL + b"\r\n--" in data  # returned octet for octet


def test_several_recipients_and_no_queue_id_or_envid():
    carol = RecipientReport("carol@example.net", "5.4.4", reason="Host or domain name not found. Name service error")
    msg = report(recipients=(BOB, carol))
    human, status, _ = parts(msg)
    groups = status_groups(status)
    assert len(groups) == 3
    assert "X-Retrieval-Queue-ID" not in groups[0] and "Original-Envelope-Id" not in groups[0]
    assert groups[2] == {
        "Final-Recipient": "rfc822; carol@example.net",
        "Action": "failed",
        "Status": "5.4.4",
        "Last-Attempt-Date": "Sat, 28 Nov 2026 12:00:00 +0000",
    }
    assert "<carol@example.net>: Host or domain name not found. Name service error" in human.get_content()


@pytest.mark.parametrize("ret", [None, "FULL"])
def test_ret_full_or_absent_returns_the_message(ret):
    _, _, returned = parts(report(ret=ret))
    assert returned.get_content_type() == "message/rfc822"


def test_ret_hdrs_returns_the_header_only():
    _, _, returned = parts(report(ret="HDRS"))
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned["Content-Description"] == "Undelivered Message Headers"
    header = ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"
    assert returned.get_payload(decode=True) == header
    assert b"Shall we?" not in returned.as_bytes()


def test_size_limit_returns_the_header_of_a_big_message():
    _, _, returned = parts(report(size_limit=len(ORIGINAL)))
    assert returned.get_content_type() == "message/rfc822"
    _, _, returned = parts(report(size_limit=len(ORIGINAL) - 1))
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned.get_payload(decode=True) == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n"


def test_a_huge_header_is_cut_between_fields():
    big = b"".join(b"X-Filler-%d: %s\r\n\tmore\r\n" % (i, b"y" * 60) for i in range(100)) + b"\r\nbody\r\n"
    _, _, returned = parts(report(message=big, size_limit=1000))
    header = returned.get_payload(decode=True)
    assert 0 < len(header) <= 1000 and big.startswith(header) and header.endswith(b"\tmore\r\n")


def test_bare_lf_message_comes_back_with_crlf():
    _, _, returned = parts(report(message=ORIGINAL.replace(b"\r\n", b"\n")))
    assert returned.get_payload()[0]["Subject"] == "lunch"


def test_delay_report():
    bob = RecipientReport("bob@example.com", "4.4.1", remote_mta="mx.example.com",
                          reason="connect to mx.example.com[192.0.2.25]:25: Connection refused")
    msg = report("delayed", recipients=(bob,), retry_until=UNTIL)
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    human, status, returned = parts(msg)
    text = human.get_content()
    assert "THIS IS A WARNING ONLY" in text
    assert "Your message could not be delivered for 4 hours.\r\n" in text
    assert "It will be retried until Thu, 03 Dec 2026 07:50:00 +0000." in text
    assert "<bob@example.com>: connect to mx.example.com[192.0.2.25]:25: Connection\r\n    refused" in text
    _, group = status_groups(status)
    assert group["Action"] == "delayed" and group["Status"] == "4.4.1"
    assert group["Will-Retry-Until"] == "Thu, 03 Dec 2026 07:50:00 +0000"
    assert "Diagnostic-Code" not in group and group["Remote-MTA"] == "dns; mx.example.com"
    assert returned.get_content_type() == "text/rfc822-headers"  # even with RET=FULL
    _, _, returned = parts(report("delayed", recipients=(bob,), ret="FULL"))
    assert returned.get_content_type() == "text/rfc822-headers"


def test_delay_report_takes_the_retry_date_from_the_recipients():
    bob = RecipientReport("bob@example.com", "4.2.2", will_retry_until=UNTIL)
    human, status, _ = parts(report("delayed", recipients=(bob,)))
    assert "retried until Thu, 03 Dec 2026" in human.get_content()
    assert status_groups(status)[1]["Will-Retry-Until"] == "Thu, 03 Dec 2026 07:50:00 +0000"


@pytest.mark.parametrize("kind", ["delivered", "relayed"])
def test_success_reports(kind):
    alice = RecipientReport("bob@example.com", "2.0.0", orcpt="rfc822;bob@example.com")
    lists = RecipientReport("team@example.com", "2.0.0", action="expanded")
    msg = report(kind, recipients=(alice, lists), ret="FULL")
    assert msg["Subject"] == "Successful Mail Delivery Report"
    human, status, returned = parts(msg)
    assert "Your message was successfully delivered to the destination(s)" in human.get_content()
    _, first, second = status_groups(status)
    assert first["Action"] == kind and first["Status"] == "2.0.0" and "Will-Retry-Until" not in first
    assert second["Action"] == "expanded"
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned["Content-Description"] == "Message Headers"


def test_eight_bit_message_is_labelled():
    latin = ORIGINAL.replace(b"Shall we?", "Déjeuner ?".encode())
    data = make_report("failed", hostname="h.test", sender="a@example.org", recipients=(BOB,), message=latin,
                       arrival=ARRIVAL, now=NOW)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["Content-Transfer-Encoding"] == "8bit"
    _, _, returned = parts(msg)
    assert returned["Content-Transfer-Encoding"] == "8bit" and returned.get_content_type() == "message/rfc822"
    assert latin in data and report_body(data) == "8BITMIME"
    assert report_body(make_report("failed", hostname="h.test", sender="a@example.org", recipients=(BOB,),
                                   message=ORIGINAL, arrival=ARRIVAL, now=NOW)) is None


def test_smtputf8_original_gets_a_global_report():
    original = "From: jörg@exämple.org\r\nTo: 用户@例子.example\r\nSubject: grüße\r\n\r\nça va\r\n".encode()
    rcpt = RecipientReport("用户@例子.example", "5.1.1", orcpt="utf-8;用户@例子.example")
    data = make_report("failed", hostname="h.test", sender="jörg@exämple.org", recipients=(rcpt,),
                       message=original, arrival=ARRIVAL, now=NOW, smtputf8=True)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg["To"] == "jörg@exämple.org"
    human, status, returned = parts(msg)
    assert human.get_content_charset() == "utf-8" and "<用户@例子.example>" in human.get_content()
    assert status.get_content_type() == "message/global-delivery-status"
    assert status_groups(status, data)[1]["Final-Recipient"] == "utf-8; 用户@例子.example"
    assert returned.get_content_type() == "message/global"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert original in data
    text = data.decode("utf-8")
    assert "Final-Recipient: utf-8; 用户@例子.example\r\n" in text
    assert "Original-Recipient: utf-8; 用户@例子.example\r\n" in text
    assert "X-Retrieval-Sender: utf-8; jörg@exämple.org\r\n" in text
    data = make_report("failed", hostname="h.test", sender="jörg@exämple.org", recipients=(rcpt,),
                       message=original, arrival=ARRIVAL, now=NOW, smtputf8=True, ret="HDRS")
    assert "message/global-headers" in data.decode()


def test_utf8_address_in_a_plain_report_is_escaped():
    rcpt = RecipientReport("bob@example.com", "5.1.1", orcpt="utf-8;bøb@example.com")
    _, status, _ = parts(report(recipients=(rcpt,)))
    assert status_groups(status)[1]["Original-Recipient"] == "utf-8; b\\x{F8}b@example.com"


@pytest.mark.parametrize(
    "kind, rcpt, sender",
    [
        ("failed", RecipientReport("b@example.com", "2.0.0"), "a@example.org"),  # class must be 5 or 4
        ("delayed", RecipientReport("b@example.com", "5.1.1"), "a@example.org"),
        ("delivered", RecipientReport("b@example.com", "2.0.0", action="bounced"), "a@example.org"),
        ("failed", RecipientReport("b@example.com", "5.1"), "a@example.org"),
        ("bounced", RecipientReport("b@example.com", "5.1.1"), "a@example.org"),
        ("failed", RecipientReport("b@example.com", "5.1.1"), ""),  # never to the null sender
    ],
)
def test_make_report_refuses_inconsistent_input(kind, rcpt, sender):
    with pytest.raises(ValueError):
        make_report(kind, hostname="h", sender=sender, recipients=(rcpt,), message=ORIGINAL, arrival=ARRIVAL)


_field_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


@given(diagnostic=_field_text, reason=_field_text, envid=st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=100),
       body=st.binary(max_size=300), smtputf8=st.booleans(), kind=st.sampled_from(["failed", "delayed"]))
def test_any_diagnostic_reason_and_body_make_a_well_formed_report(diagnostic, reason, envid, body, smtputf8, kind):
    rcpt = RecipientReport("bob@example.com", {"failed": "5.0.0", "delayed": "4.0.0"}[kind],
                           remote_mta="mx.example.com", diagnostic=diagnostic or None, reason=reason or None)
    data = make_report(kind, hostname="h.test", sender="a@example.org", recipients=(rcpt,), envid=envid,
                       message=b"Subject: x\r\n\r\n" + body, arrival=ARRIVAL, now=NOW, smtputf8=smtputf8)
    assert data.count(b"\n") == data.count(b"\r\n") and max(map(len, data.split(b"\r\n")[:60])) < 998
    msg = email.message_from_bytes(data, policy=email.policy.default)
    human, status, returned = parts(msg)
    per_message, group = status_groups(status, data)
    assert per_message.get("Original-Envelope-Id", "") == envid.strip()
    assert group["Action"] == kind and group["Final-Recipient"] == "rfc822; bob@example.com"
    if diagnostic.strip():
        code = group["Diagnostic-Code"]
        assert code.startswith("smtp; ") and "\r" not in code and "\n" not in code
        assert smtputf8 or code.isascii()


def test_expired_recipient_fails_with_its_transient_status():
    rcpt = RecipientReport("bob@example.com", "4.4.7", reason="delivery time expired (last: 451 4.4.1 no answer)")
    _, status, _ = parts(report(recipients=(rcpt,)))
    group = status_groups(status)[1]
    assert (group["Action"], group["Status"]) == ("failed", "4.4.7")


def test_reports_go_out_from_the_null_path():
    assert REPORT_SENDER == ""
    assert not wants_report(REPORT_SENDER, None, "failed")  # a report about a report: never


# -- who gets a report ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender, notify, kind, expected",
    [
        ("a@example.org", None, "failed", True),
        ("a@example.org", None, "delayed", True),
        ("a@example.org", None, "delivered", False),
        ("a@example.org", None, "relayed", False),
        ("a@example.org", ("NEVER",), "failed", False),
        ("a@example.org", ("NEVER",), "delayed", False),
        ("a@example.org", ("SUCCESS",), "delivered", True),
        ("a@example.org", ("SUCCESS",), "relayed", True),
        ("a@example.org", ("SUCCESS",), "expanded", True),
        ("a@example.org", ("SUCCESS",), "failed", False),
        ("a@example.org", ("SUCCESS", "FAILURE"), "failed", True),
        ("a@example.org", ("SUCCESS", "FAILURE"), "delayed", False),
        ("a@example.org", ("DELAY",), "delayed", True),
        ("a@example.org", ("FAILURE", "DELAY"), "delivered", False),
        ("", None, "failed", False),
        ("", ("SUCCESS", "FAILURE", "DELAY"), "failed", False),
        ("", ("SUCCESS",), "delivered", False),
    ],
)
def test_wants_report(sender, notify, kind, expected):
    assert wants_report(sender, notify, kind) is expected


def test_wants_report_unknown_kind():
    with pytest.raises(ValueError):
        wants_report("a@example.org", None, "bounced")


# -- xtext and the parameters ------------------------------------------------------------------


@given(st.text())
def test_xtext_round_trip(text):
    encoded = dsn.xtext_encode(text)
    assert encoded.isascii() and "=" not in encoded and " " not in encoded
    assert dsn.xtext_decode(encoded) == text


@given(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126)))
def test_xtext_leaves_plain_characters_alone(text):
    assert dsn.xtext_encode(text) == text.replace("+", "+2B").replace("=", "+3D")


@pytest.mark.parametrize("bad", ["a+", "a+4", "a+G1", "a=b", "a b", "caf\u00e9", "+FF", "a\x01"])
def test_xtext_decode_refuses(bad):
    with pytest.raises(ValueError):
        dsn.xtext_decode(bad)


def test_xtext_examples():
    assert dsn.xtext_decode("abc+2Bx") == "abc+x"
    assert dsn.xtext_decode("a+2bx") == "a+x"  # lower-case hex taken, as Postfix does
    assert dsn.xtext_encode("Bob Smith=1+1") == "Bob+20Smith+3D1+2B1"


@given(st.from_regex(r"[a-z0-9.+=_-]{1,20}@[a-z0-9]{1,10}\.example", fullmatch=True))
def test_orcpt_round_trip_rfc822(address):
    kept = dsn.parse_orcpt(dsn.format_orcpt("rfc822;" + address))
    assert kept == "rfc822;" + address


@given(st.text(alphabet=st.characters(min_codepoint=33, blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")),
               min_size=1, max_size=40))
def test_orcpt_round_trip_utf8(address):
    value = dsn.format_orcpt("utf-8;" + address)
    assert value.isascii()
    assert dsn.parse_orcpt(value) == "utf-8;" + address


def test_parameters_to_pass_on():
    assert dsn.mail_params(None, None) == []
    assert dsn.mail_params("HDRS", "abc+x") == ["RET=HDRS", "ENVID=abc+2Bx"]
    assert dsn.rcpt_params(None, None) == []
    assert dsn.rcpt_params(("SUCCESS", "DELAY"), "rfc822;b+1@example.com") == [
        "NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;b+2B1@example.com"]
    assert dsn.rcpt_params(("NEVER",), "utf-8;bøb@example.com") == ["NOTIFY=NEVER", "ORCPT=utf-8;b\\x{F8}b@example.com"]


# -- the schedule and its settings --------------------------------------------------------------


def test_next_retry_doubles_up_to_the_cap():
    config = SimpleNamespace(smtp=SimpleNamespace(retry_min=300.0, retry_max=4000.0))
    assert [schedule.next_retry(n, config) for n in range(0, 8)] == [300, 300, 600, 1200, 2400, 4000, 4000, 4000]
    assert schedule.next_retry(10**6, config) == 4000
    assert schedule.next_retry(3, SimpleNamespace(retry_min=60, retry_max=60)) == 60  # an SmtpConfig works too


def test_delay_warning_and_expiry():
    smtp = SimpleNamespace(delay_warning=4 * 3600.0, max_queue_lifetime=5 * 86400.0)
    assert not schedule.delay_warning_due(4 * 3600 - 1, False, smtp)
    assert schedule.delay_warning_due(4 * 3600, False, smtp)
    assert not schedule.delay_warning_due(5 * 3600, True, smtp)  # once only
    assert not schedule.delay_warning_due(10**6, False, SimpleNamespace(delay_warning=0.0))  # turned off
    assert not schedule.expired(5 * 86400 - 1, smtp) and schedule.expired(5 * 86400, smtp)
    assert schedule.retry_until(ARRIVAL, smtp) == UNTIL


def test_config_defaults_and_keys(tmp_path):
    (tmp_path / "a.toml").write_text("[smtp]\n")
    smtp = load_config(tmp_path / "a.toml").smtp
    assert (smtp.bounce_size_limit, smtp.delay_warning, smtp.max_queue_lifetime, smtp.retry_min, smtp.retry_max) == (
        50000, 14400.0, 432000.0, 300.0, 4000.0)
    assert [schedule.next_retry(n, smtp) for n in (1, 2, 5)] == [300, 600, 4000]
    (tmp_path / "b.toml").write_text(
        "[smtp]\nbounce_size_limit = 1000\ndelay_warning = 0\nmax_queue_lifetime = 86400\nretry_min = 60\nretry_max = 600\n")
    smtp = load_config(tmp_path / "b.toml").smtp
    assert (smtp.bounce_size_limit, smtp.delay_warning, smtp.max_queue_lifetime, smtp.retry_min, smtp.retry_max) == (
        1000, 0.0, 86400.0, 60.0, 600.0)
    (tmp_path / "c.toml").write_text("[smtp]\nretry_min = 5000\nmax_queue_lifetime = 0\nbounce_size_limit = -1\n")
    with pytest.raises(ProblemsError) as info:
        load_config(tmp_path / "c.toml")
    text = "\n".join(str(p) for p in info.value.problems)
    assert "smtp.retry_min" in text and "smtp.max_queue_lifetime" in text and "smtp.bounce_size_limit" in text


# -- over the wire ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mta(tmp_path_factory):  # type: ignore[no-untyped-def]
    site = Site(tmp_path_factory.mktemp("dsn"))
    site.add_user("alice")
    server = Server(site, protocols=("smtp",)).start()
    yield server
    server.stop()


def new_messages(server: Server) -> list[bytes]:
    folder = server.site.home("alice") / "Maildir" / "new"
    return [p.read_bytes() for p in sorted(folder.iterdir())] if folder.is_dir() else []


def wait_for(server: Server, marker: bytes) -> bytes:
    """The delivered message holding `marker` (a 250 means queued; delivery follows)."""
    deadline = time.monotonic() + 30
    while True:
        found = [m for m in new_messages(server) if marker in m]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{marker!r} delivered {len(found)} times"
            return found[0]
        time.sleep(0.05)


def test_smtplib_dsn_options_are_taken(mta):
    marker = f"dsn-{uuid.uuid4().hex}".encode()
    with smtplib.SMTP("127.0.0.1", mta.ports["smtp"]) as client:
        client.ehlo()
        assert client.has_extn("dsn")
        refused = client.sendmail(
            "bob@example.org", ["alice@mail.example.test"], b"Subject: dsn\r\n\r\n" + marker + b"\r\n",
            mail_options=["RET=HDRS", "ENVID=abc+2Bx"],
            rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;bob@example.com"],
        )
    assert refused == {}
    assert marker in wait_for(mta, marker)


@pytest.mark.parametrize(
    "mail_options, rcpt_options, error",
    [
        (["RET=ALL"], [], smtplib.SMTPSenderRefused),
        (["ENVID=a+zz"], [], smtplib.SMTPSenderRefused),
        ([], ["NOTIFY=NEVER,DELAY"], smtplib.SMTPRecipientsRefused),
        ([], ["ORCPT=bob@example.com"], smtplib.SMTPRecipientsRefused),
        ([], ["NOTIFY=DELAY", "NOTIFY=FAILURE"], smtplib.SMTPRecipientsRefused),
    ],
)
def test_bad_dsn_options_are_refused_with_501(mta, mail_options, rcpt_options, error):
    refused_marker = f"refused-{uuid.uuid4().hex}".encode()
    after_marker = f"after-{uuid.uuid4().hex}".encode()
    with smtplib.SMTP("127.0.0.1", mta.ports["smtp"]) as client:
        with pytest.raises(error) as info:
            client.sendmail("bob@example.org", ["alice@mail.example.test"], b"Subject: x\r\n\r\n" + refused_marker,
                            mail_options=mail_options, rcpt_options=rcpt_options)
        exc = info.value
        code = exc.smtp_code if isinstance(exc, smtplib.SMTPSenderRefused) else exc.recipients["alice@mail.example.test"][0]
        assert code == 501
        client.rset()
        # the session goes on, and what it takes next arrives alone
        client.sendmail("bob@example.org", ["alice@mail.example.test"], b"Subject: y\r\n\r\n" + after_marker)
    wait_for(mta, after_marker)
    assert not any(refused_marker in m for m in new_messages(mta))

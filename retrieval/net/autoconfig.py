"""Thunderbird autoconfig: the clientConfig file (version 1.1) built from the config's
listeners, served over HTTP so that an e-mail address and a password set up an account.

Thunderbird asks, for alice@example.org:
  https://autoconfig.example.org/mail/config-v1.1.xml?emailaddress=alice@example.org
  https://example.org/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=...
  (and the same over http://)
so the admin points autoconfig.<domain> at this listener (or proxies those paths to it).

The answer lists what the config really serves: IMAP and POP3 with implicit TLS
("SSL") before STARTTLS, SMTP submissions (465) before submission (587); port 25
is for other servers, not for clients. The answer is the same whoever asks and
whatever address is asked about, so it tells nobody which accounts exist.
"""

from __future__ import annotations

from xml.etree import ElementTree as ET

from twisted.logger import Logger
from twisted.web import resource, server

from retrieval.config import Config, parse_listen
from retrieval.logline import format_line, ip_text, new_session_id
from retrieval.net.listen import Listener

log = Logger(namespace="retrieval.autoconfig")
PATHS = (b"/mail/config-v1.1.xml", b"/.well-known/autoconfig/mail/config-v1.1.xml")


def _ports(addresses: tuple[str, ...]) -> list[int]:
    ports: list[int] = []
    for address in addresses:
        port = parse_listen(address)[1]
        if port not in ports:
            ports.append(port)
    return ports


def servers(config: Config) -> list[tuple[str, str, int, str]]:
    """(direction, type, port, socketType) for each client-facing port, in the order
    Thunderbird should prefer them."""
    tls = config.tls.cert is not None
    starttls = "STARTTLS" if tls else "plain"  # plain only in a test setup without [tls]
    out: list[tuple[str, str, int, str]] = []
    for kind, section in (("imap", config.imap), ("pop3", config.pop3)):
        out += [("incoming", kind, port, "SSL") for port in _ports(section.listen_tls)]
        out += [("incoming", kind, port, starttls) for port in _ports(section.listen)]
    out += [("outgoing", "smtp", port, "SSL") for port in _ports(config.smtp.submissions)]
    out += [("outgoing", "smtp", port, starttls) for port in _ports(config.smtp.submission)]
    return out


def domains(config: Config) -> tuple[str, ...]:
    return config.autoconfig.domains or config.smtp.local_domains or (config.server.hostname,)


def username_placeholder(user_names: list[str]) -> str:
    """Users named "alice@example.org" log in with the address, users named "alice" with its local part."""
    return "%EMAILADDRESS%" if any("@" in name for name in user_names) else "%EMAILLOCALPART%"


def client_config(config: Config, user_names: list[str]) -> bytes:
    """The clientConfig XML document for this config."""
    names = domains(config)
    hostname = config.autoconfig.hostname or config.server.hostname
    username = username_placeholder(user_names)
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=names[0])
    for name in names:
        ET.SubElement(provider, "domain").text = name
    ET.SubElement(provider, "displayName").text = config.autoconfig.display_name or names[0]
    ET.SubElement(provider, "displayShortName").text = config.autoconfig.display_name or names[0]
    for direction, kind, port, socket_type in servers(config):
        element = ET.SubElement(provider, f"{direction}Server", type=kind)
        ET.SubElement(element, "hostname").text = hostname
        ET.SubElement(element, "port").text = str(port)
        ET.SubElement(element, "socketType").text = socket_type
        ET.SubElement(element, "username").text = username
        ET.SubElement(element, "authentication").text = "password-cleartext"
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True) + b"\n"


class ConfigFile(resource.Resource):
    """Both paths, GET and HEAD; `?emailaddress=` is accepted and does not change the answer."""

    isLeaf = True

    def __init__(self, config: Config, passwd) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.config = config
        self.passwd = passwd

    def render_GET(self, request) -> bytes:  # type: ignore[no-untyped-def]
        if request.path not in PATHS:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Not found: the autoconfig file is at /mail/config-v1.1.xml\n"
        body = client_config(self.config, [record.name for record in self.passwd.users()])
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        request.setHeader(b"cache-control", b"max-age=3600")
        return body

    render_HEAD = render_GET


class AutoconfigSite(server.Site):
    """A twisted.web Site that logs each request as one line in the sessions' format."""

    noisy = False

    def log(self, request) -> None:  # type: ignore[no-untyped-def]
        peer = request.getClientAddress()
        log.info("{log_line}", log_line=format_line(
            "http", new_session_id(), "request", ip_text(getattr(peer, "host", None)),
            method=request.method.decode("latin-1"), path=request.path.decode("latin-1"), status=request.code,
            bytes_out=request.sentLength))


def site(config: Config, passwd) -> server.Site:  # type: ignore[no-untyped-def]
    return AutoconfigSite(ConfigFile(config, passwd))


def listeners(config: Config, passwd, reactor) -> list[Listener]:  # type: ignore[no-untyped-def]
    """autoconfig (HTTP) and autoconfig-https (with [tls]'s certificate)."""
    from retrieval.net.tls import options_from_config

    factory = site(config, passwd)
    out = [Listener("autoconfig", factory, config.autoconfig.listen)]
    tls = options_from_config(config)
    if tls is not None:  # (config checks refuse listen_tls without [tls])
        out.append(Listener("autoconfig-https", factory, config.autoconfig.listen_tls, tls))
    return out

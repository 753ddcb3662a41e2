"""The TOML configuration, read once into frozen dataclasses.

Every error names the file, the key and a fix, and all errors are reported at
once: an admin editing a config file wants the whole list, not one per restart.
Relative paths are taken relative to the config file's folder.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.problems import Problem, ProblemsError


@dataclass(frozen=True)
class ServerConfig:
    hostname: str = "localhost"
    state_dir: Path = Path("/var/lib/retrieval")
    user: str | None = None
    group: str | None = None
    # processes sharing the listening sockets; 0: one per core; 1: no supervisor process
    workers: int = 0
    # SIGTERM: seconds open sessions get to finish their command before they are cut
    shutdown_timeout: float = 30.0


@dataclass(frozen=True)
class AuthConfig:
    passwd_file: Path = Path("/etc/retrieval/passwd")
    allow_plaintext: bool = False
    default_scheme: str = "BLF-CRYPT"
    failure_delay: float = 2.0


@dataclass(frozen=True)
class TLSConfig:
    """The default certificate (full chain) and key, and more pairs chosen by server name (SNI)."""

    cert: Path | None = None
    key: Path | None = None
    sni: tuple[tuple[str, Path, Path], ...] = ()  # (server name or "*.domain", cert, key)


@dataclass(frozen=True)
class StoreConfig:
    mail_location: str = "maildir:~/Maildir"
    lock_timeout: float = 30.0
    fsync: bool = True


@dataclass(frozen=True)
class ListenConfig:
    listen: tuple[str, ...] = ()
    listen_tls: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.listen or self.listen_tls)


@dataclass(frozen=True)
class ImapConfig(ListenConfig):
    max_literal: int = 50 * 1024 * 1024
    max_line: int = 64 * 1024
    idle_timeout: float = 30 * 60.0
    max_connections_per_user_ip: int = 20
    special_use: tuple[tuple[str, str], ...] = (
        ("Drafts", "\\Drafts"),
        ("Sent", "\\Sent"),
        ("Trash", "\\Trash"),
        ("Junk", "\\Junk"),
        ("Archive", "\\Archive"),
    )


@dataclass(frozen=True)
class Pop3Config(ListenConfig):
    idle_timeout: float = 10 * 60.0
    uidl_format: str = "%08Xu%08Xv"
    max_bad_commands: int = 10


@dataclass(frozen=True)
class SmtpConfig:
    """The relay: MX traffic on `listen` (25), submission with STARTTLS (587) and implicit TLS (465)."""

    listen: tuple[str, ...] = ()
    submission: tuple[str, ...] = ()
    submissions: tuple[str, ...] = ()
    local_domains: tuple[str, ...] = ()  # like Postfix's mydestination; empty: server.hostname and localhost
    mynetworks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 1000
    max_errors: int = 20
    recipient_delimiter: str = "+"  # "" turns user+folder addressing off
    postmaster: str | None = None  # passwd-file user for postmaster@; default "postmaster", else the first user
    idle_timeout: float = 300.0  # RFC 5321 4.5.3.2.7: at least 5 minutes
    dns_servers: tuple[str, ...] = ()  # "ip:port" resolvers for MX and DNSBL lookups; empty: /etc/resolv.conf
    # The queue's schedule and its reports (RFC 3464), with Postfix's defaults and reasons:
    bounce_size_limit: int = 50000  # a failure report returns the whole message up to this size, else its headers
    delay_warning: float = 4 * 3600.0  # a "still trying" report after this long in the queue; 0: none
    max_queue_lifetime: float = 5 * 86400.0  # then give up and send the failure report
    retry_min: float = 300.0  # the first retry waits this long, each next one twice as long ...
    retry_max: float = 4000.0  # ... but never longer: a host back from an outage gets its mail within ~1 h
    queue_dir: Path | None = None  # the mail queue; default STATE_DIR/queue
    # outbound delivery
    relayhost: str | None = None  # "[host]:port" (no MX lookup, as Postfix) or "host:port" / "host" (MX of host)
    relayhost_user: str | None = None  # AUTH PLAIN/LOGIN to the relayhost, only inside TLS
    relayhost_password_file: Path | None = None  # a file (mode 0600) holding the password
    remote_port: int = 25  # where remote MX hosts listen (tests use another)
    connect_timeout: float = 30.0  # Postfix's smtp_connect_timeout
    command_timeout: float = 300.0  # RFC 5321 4.5.3.2: 5 minutes per reply, twice that for the end of DATA
    max_per_domain: int = 5  # connections at once to one destination (Postfix's initial destination concurrency)
    access: Path | None = None  # Sendmail-style access table (retrieval.smtp.access); reread when it changes
    dnsbl: tuple[str, ...] = ()  # DNSBL zones, e.g. ["zen.spamhaus.org"]; a listed client gets 554 at RCPT
    helo_checks: bool = False  # reject (at RCPT) a HELO that is no FQDN or address literal, or claims to be us
    greet_pause: float = 0.0  # seconds to hold the banner on `listen`; a client that talks first is dropped
    content_filter: str | None = None  # a command (spamc -E style): message on stdin, filtered one on stdout
    content_filter_action: str = "header"  # what a spam verdict does: "header" (keep it), "junk", "reject"
    content_filter_timeout: float = 60.0
    content_filter_failure: str = "accept"  # the filter failed or timed out: "accept" unchanged, or "tempfail"
    aliases: Path | None = None  # aliases(5) file; unset: only the built-in postmaster and MAILER-DAEMON
    forward: bool = True  # honour ~/.forward of local users
    allow_commands: tuple[str, ...] = ("alias", "forward")  # Postfix's allow_mail_to_commands
    allow_files: tuple[str, ...] = ("alias", "forward")  # Postfix's allow_mail_to_files
    command_time_limit: float = 300.0  # seconds a |command may run, then it is killed (as Postfix)
    default_privs: str = "nobody"  # system account for |command and /file of aliases when run as root

    @property
    def enabled(self) -> bool:
        return bool(self.listen or self.submission or self.submissions)


@dataclass(frozen=True)
class AutoconfigConfig(ListenConfig):
    """Thunderbird's autoconfig file over HTTP (`listen`) or HTTPS (`listen_tls`, [tls]'s certificate);
    off unless a listener is set."""

    hostname: str | None = None  # the mail server's name in the answer; default [server] hostname
    display_name: str | None = None  # what Thunderbird shows as the provider; default the first domain
    domains: tuple[str, ...] = ()  # mail domains served; default [smtp] local_domains, else [server] hostname


@dataclass(frozen=True)
class Config:
    path: Path
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    imap: ImapConfig = field(default_factory=ImapConfig)
    pop3: Pop3Config = field(default_factory=Pop3Config)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    autoconfig: AutoconfigConfig = field(default_factory=AutoconfigConfig)


# key -> (kind, fix hint); kinds: str, path, optpath, bool, int, float, listen, optstr
_SCHEMA: dict[str, dict[str, str]] = {
    "server": {
        "hostname": "str",
        "state_dir": "path",
        "user": "optstr",
        "group": "optstr",
        "workers": "count",
        "shutdown_timeout": "float",
    },
    "auth": {
        "passwd_file": "path",
        "allow_plaintext": "bool",
        "default_scheme": "str",
        "failure_delay": "float",
    },
    "tls": {"cert": "optpath", "key": "optpath", "sni": "sni"},
    "store": {"mail_location": "str", "lock_timeout": "float", "fsync": "bool"},
    "imap": {
        "listen": "listen",
        "listen_tls": "listen",
        "max_literal": "int",
        "max_line": "int",
        "idle_timeout": "float",
        "max_connections_per_user_ip": "int",
        "special_use": "special_use",
    },
    "pop3": {
        "listen": "listen",
        "listen_tls": "listen",
        "idle_timeout": "float",
        "uidl_format": "str",
        "max_bad_commands": "int",
    },
    "smtp": {
        "listen": "listen",
        "submission": "listen",
        "submissions": "listen",
        "local_domains": "domains",
        "mynetworks": "networks",
        "max_message_size": "int",
        "max_recipients": "int",
        "max_errors": "int",
        "recipient_delimiter": "delimiter",
        "postmaster": "optstr",
        "idle_timeout": "float",
        "dns_servers": "listen",
        "bounce_size_limit": "int",
        "delay_warning": "float",
        "max_queue_lifetime": "float",
        "retry_min": "float",
        "retry_max": "float",
        "queue_dir": "optpath",
        "relayhost": "relayhost",
        "relayhost_user": "optstr",
        "relayhost_password_file": "optpath",
        "remote_port": "port",
        "connect_timeout": "float",
        "command_timeout": "float",
        "max_per_domain": "int",
        "access": "optpath",
        "dnsbl": "domains",
        "helo_checks": "bool",
        "greet_pause": "float",
        "content_filter": "command",
        "content_filter_action": "filter_action",
        "content_filter_timeout": "posfloat",
        "content_filter_failure": "filter_failure",
        "aliases": "optpath",
        "forward": "bool",
        "allow_commands": "origins",
        "allow_files": "origins",
        "command_time_limit": "posfloat",
        "default_privs": "str",
    },
    "autoconfig": {
        "listen": "listen",
        "listen_tls": "listen",
        "hostname": "optstr",
        "display_name": "optstr",
        "domains": "domains",
    },
}

_SECTION_CLASSES = {
    "server": ServerConfig,
    "auth": AuthConfig,
    "tls": TLSConfig,
    "store": StoreConfig,
    "imap": ImapConfig,
    "pop3": Pop3Config,
    "smtp": SmtpConfig,
    "autoconfig": AutoconfigConfig,
}


def parse_listen(address: str) -> tuple[str, int]:
    """Split "host:port" / "[v6]:port" / "port"; raise ValueError with the reason."""
    address = address.strip()
    if address.isdigit():
        host, port_text = "", address
    elif address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("IPv6 addresses are written [addr]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep:
            raise ValueError("expected host:port")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text!r} is not a number in 1..65535")
    if host and host not in ("*", "localhost"):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IP address") from None
    return ("" if host == "*" else host), int(port_text)


def parse_relayhost(text: str) -> tuple[str, int | None, bool]:
    """`[host]:port` / `[host]` / `host:port` / `host` -> (host, port or None, look up MX?).

    Brackets turn the MX lookup off, as in Postfix's relayhost; an IPv6 address
    goes in brackets ("[2001:db8::1]:587")."""
    text = text.strip()
    mx = not text.startswith("[")
    if not mx:
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("write [host]:port")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = text.partition(":")
    if not host or not re.fullmatch(r"[A-Za-z0-9_.:\-]+", host):
        raise ValueError(f"{host!r} is not a host name or address")
    if port_text and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
        raise ValueError(f"port {port_text!r} is not a number in 1..65535")
    return host.rstrip("."), (int(port_text) if port_text else None), mx


def _convert(kind: str, value: Any, base: Path) -> Any:
    if kind in ("str", "optstr"):
        if not isinstance(value, str) or (kind == "str" and not value):
            raise ValueError("expected a non-empty string")
        return value
    if kind in ("path", "optpath"):
        if not isinstance(value, str) or not value:
            raise ValueError("expected a path (a non-empty string)")
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)
    if kind == "port":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise ValueError("expected a port number in 1..65535")
        return value
    if kind == "relayhost":
        if not isinstance(value, str):
            raise ValueError("expected a string")
        parse_relayhost(value)
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError("expected true or false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError("expected a positive whole number")
        return value
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("expected a whole number >= 0")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError("expected a number >= 0")
        return float(value)
    if kind == "posfloat":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError("expected a number > 0")
        return float(value)
    if kind == "command":
        if not isinstance(value, str):
            raise ValueError("expected a command in a string")
        if not value.strip():
            return None
        try:
            shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split it into words: {exc}") from None
        return value
    if kind in _CHOICES:
        if value not in _CHOICES[kind]:
            raise ValueError(f"expected one of {', '.join(_CHOICES[kind])}")
        return value
    if kind == "listen":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError('expected a list of "host:port" strings')
        for item in value:
            try:
                parse_listen(item)
            except ValueError as exc:
                raise ValueError(f"{item!r}: {exc}") from None
        return tuple(value)
    if kind == "special_use":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v.startswith("\\") for k, v in value.items()
        ):
            raise ValueError('expected a table like {Drafts = "\\\\Drafts", Sent = "\\\\Sent"}')
        return tuple(value.items())
    if kind == "domains":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ValueError("expected a list of domain names")
        for item in value:
            if not re.fullmatch(r"[A-Za-z0-9_\-\u0080-\U0010ffff]+(\.[A-Za-z0-9_\-\u0080-\U0010ffff]+)*\.?", item):
                raise ValueError(f"{item!r} is not a domain name")
        return tuple(v.lower().rstrip(".") for v in value)
    if kind == "networks":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("expected a list of networks")
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP network") from None
        return tuple(value)
    if kind == "sni":
        return _convert_sni(value, base)
    if kind == "origins":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(v in ("alias", "forward", "include") for v in value):
            raise ValueError('expected a list of "alias", "forward", "include"')
        return tuple(value)
    if kind == "delimiter":
        if not isinstance(value, str) or len(value) > 8 or any(c in value for c in '@ "<>\\') or not value.isprintable():
            raise ValueError("expected a few characters such as \"+\" (or \"\" for none)")
        return value
    raise AssertionError(kind)


_CHOICES = {"filter_action": ("header", "junk", "reject"), "filter_failure": ("accept", "tempfail")}


_SERVER_NAME = re.compile(r"(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def _convert_sni(value: Any, base: Path) -> tuple[tuple[str, Path, Path], ...]:
    """{ "mail.example.org" = { cert = "...", key = "..." }, "*.example.net" = {...} } -> tuples."""
    if not isinstance(value, dict):
        raise ValueError("expected a table of server names")
    entries: list[tuple[str, Path, Path]] = []
    seen: set[str] = set()
    for name, pair in value.items():
        norm = name.strip().rstrip(".").lower()
        if not _SERVER_NAME.fullmatch(norm):
            raise ValueError(f"{name!r} is not a server name (write e.g. \"mail.example.org\" or \"*.example.org\", "
                             "IDNs as xn--)")
        if norm in seen:
            raise ValueError(f"{name!r} is given twice")
        seen.add(norm)
        if not isinstance(pair, dict) or set(pair) != {"cert", "key"}:
            raise ValueError(f"{name!r}: expected a table with exactly cert and key")
        cert, key = (_convert("path", pair[k], base) for k in ("cert", "key"))
        entries.append((norm, cert, key))
    return tuple(entries)


_FIXES = {
    "posfloat": "write a number above 0 without quotes",
    "command": 'write e.g. "/usr/bin/spamc -E" (or "" for none)',
    "filter_action": 'write "header", "junk" or "reject"',
    "filter_failure": 'write "accept" or "tempfail"',
    "str": "write it as a quoted string",
    "optstr": "write it as a quoted string, or remove the key",
    "path": 'write a path in quotes, e.g. "/var/lib/retrieval"',
    "optpath": 'write a path in quotes, e.g. "certs/server.pem", or remove the key',
    "bool": "write true or false, without quotes",
    "int": "write a whole number without quotes",
    "count": "write a whole number without quotes (0: one per CPU core)",
    "float": "write a number without quotes",
    "listen": 'write e.g. ["127.0.0.1:143", "[::1]:143"]',
    "special_use": 'write e.g. { Drafts = "\\\\Drafts" }',
    "domains": 'write e.g. ["example.org", "mail.example.org"]',
    "networks": 'write e.g. ["127.0.0.0/8", "::1/128", "192.168.1.0/24"]',
    "delimiter": 'write e.g. "+" (or "" to turn it off)',
    "port": "write a port number such as 25",
    "relayhost": 'write e.g. "[smtp.example.net]:587" (brackets: no MX lookup) or "example.net"',
    "sni": 'write e.g. [tls.sni."mail.example.org"] with cert = "..." and key = "..." below it',
    "origins": 'write e.g. ["alias", "forward"] (or [] to forbid)',
}


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ProblemsError listing every problem."""
    path = Path(path).absolute()
    name = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ProblemsError([Problem(name, "file", "not found", "pass the right --config path")]) from None
    except OSError as exc:
        raise ProblemsError([Problem(name, "file", f"cannot be read: {exc.strerror}", "check permissions")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ProblemsError([Problem(name, "syntax", str(exc), "fix the TOML syntax at that place")]) from None
    return config_from_dict(data, path)


def config_from_dict(data: dict[str, Any], path: Path) -> Config:
    name = str(path)
    base = path.parent
    problems: list[Problem] = []
    sections: dict[str, Any] = {}
    for section, table in data.items():
        schema = _SCHEMA.get(section)
        if schema is None:
            problems.append(
                Problem(name, f"section [{section}]", "unknown section",
                        f"use one of: {', '.join('[' + s + ']' for s in _SCHEMA)}")
            )
            continue
        if not isinstance(table, dict):
            problems.append(Problem(name, f"key {section}", "expected a [section] table", f"write [{section}]"))
            continue
        values: dict[str, Any] = {}
        for key, value in table.items():
            kind = schema.get(key)
            if kind is None:
                problems.append(
                    Problem(name, f"key {section}.{key}", "unknown key",
                            f"remove it, or use one of: {', '.join(schema)}")
                )
                continue
            try:
                values[key] = _convert(kind, value, base)
            except ValueError as exc:
                problems.append(Problem(name, f"key {section}.{key}", f"bad value {value!r}: {exc}", _FIXES[kind]))
        sections[section] = _SECTION_CLASSES[section](**values)
    config = Config(path=path, **sections)
    problems.extend(_cross_checks(config))
    if problems:
        raise ProblemsError(problems)
    return config


def _cross_checks(config: Config) -> list[Problem]:
    name = str(config.path)
    problems: list[Problem] = []
    from retrieval.store.location import parse_mail_location

    try:
        parse_mail_location(config.store.mail_location)
    except ValueError as exc:
        problems.append(
            Problem(name, "key store.mail_location", str(exc),
                    'write e.g. "maildir:~/Maildir" or "mbox:~/mail:INBOX=/var/mail/%u"')
        )
    needs_tls = bool(config.imap.listen_tls or config.pop3.listen_tls or config.smtp.submissions
                     or config.autoconfig.listen_tls)
    if needs_tls and (config.tls.cert is None or config.tls.key is None):
        problems.append(
            Problem(name, "section [tls]", "a TLS listener (listen_tls, smtp.submissions) is set but tls.cert or tls.key is missing",
                    'set cert = "certs/server.pem" and key = "certs/server.key"')
        )
    if (config.tls.cert is None) != (config.tls.key is None):
        problems.append(Problem(name, "section [tls]", "cert and key must be given together", "set both or neither"))
    if config.tls.sni and config.tls.cert is None:
        problems.append(Problem(name, "key tls.sni", "SNI certificates need a default one for clients that send "
                                "no or an unknown server name", "set cert and key in [tls] too"))
    from retrieval.auth.schemes import SCHEMES, is_known_scheme

    if not is_known_scheme(config.auth.default_scheme):
        problems.append(
            Problem(name, "key auth.default_scheme", f"unknown scheme {config.auth.default_scheme!r}",
                    f"use one of: {', '.join(SCHEMES)}")
        )
    if config.smtp.submission and config.tls.cert is None and not config.auth.allow_plaintext:
        problems.append(
            Problem(name, "key smtp.submission", "submission needs AUTH, and AUTH needs TLS, but [tls] is not set",
                    'set cert and key in [tls] (or auth.allow_plaintext = true for a test setup)')
        )
    smtp = config.smtp
    if smtp.retry_min <= 0 or smtp.retry_min > smtp.retry_max:
        problems.append(
            Problem(name, "key smtp.retry_min", f"{smtp.retry_min:g} must be above 0 and at most retry_max ({smtp.retry_max:g})",
                    "e.g. retry_min = 300 and retry_max = 4000 (seconds)")
        )
    if smtp.max_queue_lifetime <= 0:
        problems.append(
            Problem(name, "key smtp.max_queue_lifetime", "must be above 0", "e.g. 432000 (5 days, in seconds)")
        )
    if (smtp.relayhost_user is None) != (smtp.relayhost_password_file is None):
        problems.append(Problem(name, "key smtp.relayhost_user", "relayhost_user and relayhost_password_file go together",
                                "set both (or neither)"))
    if smtp.relayhost_user is not None and smtp.relayhost is None:
        problems.append(Problem(name, "key smtp.relayhost_user", "relayhost_user is set but relayhost is not",
                                'set relayhost, e.g. "[smtp.example.net]:587"'))
    seen: dict[tuple[str, int], str] = {}
    listeners = (("imap", ("listen", "listen_tls")), ("pop3", ("listen", "listen_tls")),
                 ("smtp", ("listen", "submission", "submissions")), ("autoconfig", ("listen", "listen_tls")))
    for section, keys in listeners:
        for key in keys:
            for address in getattr(getattr(config, section), key):
                parsed = parse_listen(address)
                if parsed in seen:
                    problems.append(
                        Problem(name, f"key {section}.{key}", f"{address} is also used by {seen[parsed]}",
                                "give each listener its own port")
                    )
                seen[parsed] = f"{section}.{key}"
    return problems

"""The access table: Sendmail's access db as a text file, compiled for lookups.

One entry a line, `key  ACTION`, `#` starts a comment:

    # clients (by IP, prefix, CIDR or verified host name)
    Connect:192.168.1        RELAY
    203.0.113.0/24           REJECT
    IPv6:2001:db8::/32       OK
    # senders and recipients
    From:spammer@example.com DISCARD
    From:<>                  OK
    To:partner.example       RELAY
    abuse@                   OK
    example.net              ERROR:5.7.1:550 We do not talk to example.net
    badguy.example           ERROR:"550 Go away"

Keys: an IPv4 address or a prefix of whole octets (`192.168.1`), a CIDR
network, an IPv6 address or network (optionally written `IPv6:...`), a domain
(which covers its subdomains), an address `user@domain`, `user@` (that local
part at any domain) or `<>` (the null sender). The tags `Connect:`, `From:`
and `To:` limit a key to the client, the sender or the recipients; a key
without a tag applies to all three, as in Sendmail.

Actions: OK (accept even where DNSBL or HELO checks would reject), RELAY (the
client may relay, or mail to this domain may be relayed; for a client it
implies OK; for a sender it means only OK, since anyone can write any
sender), REJECT (550 5.7.1), DISCARD (accept, then drop), ERROR:... (a reply
of your own).

Most specific first: for an address the full address (`user+detail@domain`,
then `user@domain`), then `user@`, then the domain and its parents; for a
client its verified host name and the name's parent domains (as Sendmail
does), then its IP address and ever shorter prefixes. At each step the
tagged key is tried before the untagged one.

The table is reread when the file changes (mtime, size or inode). A file that
cannot be read makes every decision a temporary failure, as Postfix does with
a missing map: nothing is let through that a REJECT line might have stopped,
and nothing is bounced for good.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from retrieval.problems import Problem
from retrieval.smtp.session import Reply, split_address, unquote_local

TAGS = ("connect", "from", "to")
ROLES = {"client": "connect", "sender": "from", "recipient": "to"}

_DOMAIN = re.compile(r"[a-z0-9_\u0080-\U0010ffff]([a-z0-9_\-\u0080-\U0010ffff]*[a-z0-9_\u0080-\U0010ffff])?"
                     r"(\.[a-z0-9_\u0080-\U0010ffff]([a-z0-9_\-\u0080-\U0010ffff]*[a-z0-9_\u0080-\U0010ffff])?)*")
_LOCAL = re.compile(r"[^\s@<>()\[\]\\,;:\"]+")
_DSN = re.compile(r"([45])\.\d{1,3}\.\d{1,3}")


@dataclass(frozen=True)
class Rule:
    """One line of the table."""

    action: str  # OK | RELAY | REJECT | DISCARD | ERROR
    reply: Reply | None  # ERROR's own reply; None for the others (REJECT's wording depends on the role)
    key: str  # as written, tag included
    text: str  # the action as written
    source: str  # "path:line"

    def __str__(self) -> str:
        return f"{self.source}: {self.key} {self.text}"


def parse_action(text: str) -> tuple[str, Reply | None]:
    """`OK` / `RELAY` / `REJECT` / `DISCARD` / `ERROR:[D.S.N:]["]NNN text["]`; raise ValueError."""
    word = text.upper()
    if word in ("OK", "RELAY", "REJECT", "DISCARD"):
        return word, None
    if not word.startswith("ERROR:"):
        raise ValueError(f"unknown action {text!r}")
    rest = text[6:].strip()
    status = None
    m = re.match(r"(\d\.\d{1,3}\.\d{1,3}):", rest)
    if m:
        status, rest = m.group(1), rest[m.end():].strip()
    if len(rest) >= 2 and rest[0] == '"' and rest[-1] == '"':
        rest = rest[1:-1].strip()
    code = None
    m = re.match(r"(\d{3})(?:[ -]+|$)", rest)
    if m:
        code, rest = int(m.group(1)), rest[m.end():].strip()
    m = re.match(r"(\d\.\d{1,3}\.\d{1,3})(?: +|$)", rest)
    if m:
        if status is not None and status != m.group(1):
            raise ValueError(f"two status codes, {status} and {m.group(1)}")
        status, rest = m.group(1), rest[m.end():].strip()
    if code is not None and not (400 <= code < 600):
        raise ValueError(f"reply code {code} is not 4xx or 5xx")
    if status is not None and _DSN.fullmatch(status) is None:
        raise ValueError(f"status {status} is not 4.X.X or 5.X.X")
    if code is None:
        code = 450 if status and status.startswith("4") else 550
    if status is None:
        status = f"{code // 100}.7.1"
    if str(code)[0] != status[0]:
        raise ValueError(f"reply code {code} and status {status} disagree")
    if any(ord(c) < 32 or ord(c) == 127 for c in rest):
        raise ValueError("control characters in the text")
    return "ERROR", Reply(code, status, rest or "Access denied")


@dataclass
class _Compiled:
    names: dict[tuple[str, str], Rule] = field(default_factory=dict)  # (tag, address/user@/domain/<>) -> rule
    nets: dict[tuple[str, int, int], dict[int, Rule]] = field(default_factory=dict)  # (tag, version, bits) -> {int: rule}
    lengths: dict[int, list[int]] = field(default_factory=dict)  # version -> prefix lengths in use, longest first
    host_keys: bool = False  # a domain key applies to clients: their names must be known first
    size: int = 0


def _network(key: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The network an IP-ish key means, None if it is no IP key; ValueError if it is a broken one."""
    text = key[5:] if key.startswith("ipv6:") else key
    if key.startswith("ipv6:") or ":" in text:
        net = ipaddress.ip_network(text, strict=False)
        if net.version != 6:
            raise ValueError("IPv6: is followed by an IPv4 network")
        return net
    if "/" in text:
        return ipaddress.ip_network(text, strict=False)
    parts = text.split(".")
    if all(p.isdigit() for p in parts):
        if len(parts) > 4 or any(int(p) > 255 or (len(p) > 1 and p.startswith("0")) for p in parts):
            raise ValueError("not an IPv4 address or prefix")
        octets = [int(p) for p in parts] + [0] * (4 - len(parts))
        return ipaddress.ip_network((bytes(octets), 8 * len(parts)))
    return None


def compile_table(text: str, name: str) -> tuple[_Compiled, list[Problem]]:
    """Parse the file's text; every bad line becomes a Problem naming it, and is left out."""
    table = _Compiled()
    problems: list[Problem] = []
    seen: dict[tuple, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"line {number}"
        parts = line.split(None, 1)
        if len(parts) < 2:
            problems.append(Problem(name, where, f"{line!r} has no action", "write `key  ACTION`, e.g. `192.168.1  RELAY`"))
            continue
        written, action_text = parts[0], parts[1].strip()
        if " #" in action_text and not action_text.upper().startswith("ERROR:"):
            action_text = action_text.split(" #", 1)[0].strip()
        try:
            action, reply = parse_action(action_text)
        except ValueError as exc:
            problems.append(Problem(name, where, str(exc),
                                    'use OK, RELAY, REJECT, DISCARD or ERROR:5.7.1:"550 text"'))
            continue
        key = written.lower()
        tag = ""
        head, colon, rest = key.partition(":")
        if colon and head in TAGS:
            tag, key = head, rest
        rule = Rule(action, reply, written, action_text, f"{name}:{number}")
        try:
            index = _add(table, tag, key)
        except ValueError as exc:
            problems.append(Problem(name, where, f"key {written!r}: {exc}",
                                    "write an IP, a prefix like 192.168.1, a CIDR network, a domain, "
                                    "user@domain, user@ or <>, with an optional Connect:/From:/To: tag"))
            continue
        if index in seen:
            problems.append(Problem(name, where, f"key {written!r} is already on line {seen[index]}",
                                    "remove one of them (the first one counts)"))
            continue
        seen[index] = number
        if index[0] == "net":
            _, _, version, bits, value = index
            table.nets.setdefault((tag, version, bits), {})[value] = rule
        else:
            table.names[(tag, index[2])] = rule
            if index[3] and tag in ("", "connect"):
                table.host_keys = True
        table.size += 1
    for (_tag, version, bits) in table.nets:
        lengths = table.lengths.setdefault(version, [])
        if bits not in lengths:
            lengths.append(bits)
    for lengths in table.lengths.values():
        lengths.sort(reverse=True)
    return table, problems


def _add(table: _Compiled, tag: str, key: str) -> tuple:
    """Classify a key (lower-cased, tag removed): the index it is stored under. ValueError if malformed."""
    if not key:
        raise ValueError("empty key")
    if key == "<>":
        if tag not in ("", "from"):
            raise ValueError("<> is the null sender: only a From: key")
        return ("name", tag, "<>", False)
    if "@" in key:
        local, _, domain = key.rpartition("@")
        if not local:
            raise ValueError("an address key needs a local part (write the bare domain for a whole domain)")
        if _LOCAL.fullmatch(local) is None:
            raise ValueError("bad local part")
        if domain and _DOMAIN.fullmatch(domain.rstrip(".")) is None:
            raise ValueError("bad domain")
        return ("name", tag, f"{local}@{domain.rstrip('.')}", False)
    net = _network(key)
    if net is not None:
        return ("net", tag, net.version, net.prefixlen, int(net.network_address))
    domain = key.rstrip(".")
    if domain.startswith(".") or _DOMAIN.fullmatch(domain) is None:
        raise ValueError("not an IP, a network, a domain or an address")
    return ("name", tag, domain, True)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _parents(domain: str) -> list[str]:
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


class AccessTable:
    """The compiled table of one file, reread when the file changes."""

    def __init__(self, path: str | Path, delimiter: str = "+") -> None:
        self.path = Path(path)
        self.delimiter = delimiter
        self._table = _Compiled()
        self._stamp: tuple[int, int, int] | None = None
        self.problems: list[Problem] = []
        self.unavailable: str | None = None  # why the table cannot be used (answer 451), None when it can
        self.reload()

    # -- the file ------------------------------------------------------------------

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def changed(self) -> bool:
        """Cheap (one stat): has the file changed since it was read?"""
        stamp = self._stat()
        return stamp != self._stamp or (stamp is None and self.unavailable is None)

    def reload(self) -> list[Problem]:
        """BLOCKING: read and compile the file; the new table replaces the old one in one step."""
        stamp = self._stat()
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            self._stamp, self._table = stamp, _Compiled()
            self.unavailable = f"{self.path}: cannot be read: {why}"
            self.problems = [Problem(str(self.path), "file", f"cannot be read: {why}",
                                     "create it (it may be empty) or unset [smtp] access")]
            return self.problems
        table, problems = compile_table(text, str(self.path))
        self._stamp, self._table, self.problems, self.unavailable = stamp, table, problems, None
        return problems

    def refresh(self) -> list[Problem] | None:
        """BLOCKING when the file changed: reread it. The new problems, or None when unchanged."""
        if not self.changed():
            return None
        return self.reload()

    @property
    def uses_hostnames(self) -> bool:
        return self._table.host_keys

    def __len__(self) -> int:
        return self._table.size

    # -- lookups ---------------------------------------------------------------------

    def _name(self, tag: str, key: str) -> Rule | None:
        names = self._table.names
        return names.get((tag, key)) or names.get(("", key))

    def _domain(self, tag: str, domain: str) -> Rule | None:
        domain = domain.lower().rstrip(".")
        if not domain or domain.startswith("["):
            return None
        for candidate in _parents(domain):
            rule = self._name(tag, candidate)
            if rule is not None:
                return rule
        return None

    def _address_ip(self, tag: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Rule | None:
        value, width = int(ip), ip.max_prefixlen
        nets = self._table.nets
        for bits in self._table.lengths.get(ip.version, ()):
            network = value >> (width - bits) << (width - bits) if bits else 0
            for t in (tag, ""):
                rule = nets.get((t, ip.version, bits), {}).get(network)
                if rule is not None:
                    return rule
        return None

    def client(self, ip: str | None, name: str | None = None) -> Rule | None:
        """The rule for a client: its verified host name (and parent domains), then its IP and prefixes."""
        if name and name != "unknown":
            rule = self._domain("connect", name)
            if rule is not None:
                return rule
        address = _ip(ip) if ip else None
        return self._address_ip("connect", address) if address is not None else None

    def _address(self, tag: str, address: str) -> Rule | None:
        if address == "":
            return self._name(tag, "<>")
        local, domain = split_address(address)
        local = unquote_local(local).lower()
        domain = domain.lower().rstrip(".")
        locals_ = [local]
        if self.delimiter:
            cut = min((i for i in (local.find(c) for c in self.delimiter) if i > 0), default=-1)
            if cut > 0:
                locals_.append(local[:cut])
        if domain:
            for part in locals_:
                rule = self._name(tag, f"{part}@{domain}")
                if rule is not None:
                    return rule
        for part in locals_:
            rule = self._name(tag, f"{part}@")
            if rule is not None:
                return rule
        return self._domain(tag, domain) if domain else None

    def lookup(self, role: str, key: str) -> Rule | None:
        """One role's rule for a key as an admin types it: an IP or a host name for "client",
        an address, `<>` or a bare domain for "sender" and "recipient"."""
        tag = ROLES[role]
        if role == "client":
            address = _ip(key)
            return self.client(key, None) if address is not None else self.client(None, key)
        if key == "<>":
            key = ""
        if key and "@" not in key:
            return self._domain(tag, key)
        return self._address(tag, key)

    def sender(self, address: str) -> Rule | None:
        """The rule for an envelope sender ("" is the null sender, key `<>`)."""
        return self._address("from", address)

    def recipient(self, address: str) -> Rule | None:
        return self._address("to", address)


# -- the decision -------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What the table says about one client / sender / recipient combination."""

    reply: Reply | None = None  # a refusal: the answer to give (nothing else matters then)
    ok: bool = False  # an OK (or a client's RELAY) matched: skip the DNSBL and HELO checks
    relay: bool = False  # relaying is allowed (client RELAY, or the recipient's RELAY)
    discard: Rule | None = None  # accept, then drop (a client's or sender's DISCARD matches every RCPT: the whole message)
    rules: tuple[tuple[str, Rule], ...] = ()  # (role, rule) for each lookup that matched, in order
    decided_by: Rule | None = None  # the rule behind `reply`


def refusal(rule: Rule, role: str, subject: str) -> Reply:
    if rule.reply is not None:
        return rule.reply
    what = {"client": f"Client host {subject} rejected", "sender": f"<{subject}>: Sender address rejected",
            "recipient": f"<{subject}>: Recipient address rejected"}[role]
    return Reply(550, "5.7.1", f"{what}: Access denied")


def decide(table: AccessTable | None, ip: str | None, name: str | None = None,
           sender: str | None = None, recipient: str | None = None) -> Decision:
    """Combine the client's, the sender's and the recipient's rules (each None when not asked).

    An explicit REJECT or ERROR always wins (client first, then sender, then
    recipient); an OK elsewhere only lifts the generic checks (DNSBL, HELO),
    never another entry's refusal, and never the unknown-user check."""
    if table is None:
        return Decision()
    if table.unavailable is not None:
        return Decision(reply=Reply(451, "4.3.0", "Temporary lookup failure"))
    found: list[tuple[str, Rule]] = []
    subjects = []
    if ip is not None or name:
        subjects.append(("client", table.client(ip, name), f"[{ip}]" if ip else (name or "")))
    if sender is not None:
        subjects.append(("sender", table.sender(sender), sender))
    if recipient is not None:
        subjects.append(("recipient", table.recipient(recipient), recipient))
    ok = relay = False
    discard = None
    for role, rule, subject in subjects:
        if rule is None:
            continue
        found.append((role, rule))
        if rule.action in ("REJECT", "ERROR"):
            return Decision(reply=refusal(rule, role, subject), rules=tuple(found), decided_by=rule)
        if rule.action == "OK" or (rule.action == "RELAY" and role != "recipient"):
            ok = True
        if rule.action == "RELAY" and role != "sender":
            relay = True
        if rule.action == "DISCARD" and discard is None:
            discard = rule
    return Decision(ok=ok, relay=relay, discard=discard, rules=tuple(found))

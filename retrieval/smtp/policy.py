"""Who may send to whom: the decision on each RCPT, without sockets or threads.

- a local domain (`[smtp] local_domains`, by default `[server] hostname` and
  `localhost`): the local part must be a passwd-file user (`user` or the full
  `user@domain`, as Dovecot's virtual users are named), optionally with a
  folder after the recipient delimiter (`alice+lists@...`); `postmaster`
  (any case, with or without a domain, RFC 5321 4.5.1) is always taken and
  goes to `[smtp] postmaster`, else to a user named `postmaster`, else to the
  first user of the passwd-file; a name in the alias file (`[smtp] aliases`,
  full local part or the part before the delimiter) is taken too, and so is
  `MAILER-DAEMON`: both are answered 250 with no target, which means "expand
  at delivery" (retrieval.smtp.expand);
- any other domain is relaying: allowed for authenticated clients and
  clients in `mynetworks`, otherwise `554 5.7.1 Relay access denied`.

Before that, two steps that may refuse (see `check`):
- the access table (`[smtp] access`, `retrieval.smtp.access`): a REJECT or
  ERROR for the client, the sender or the recipient refuses; RELAY grants
  relaying; DISCARD accepts and marks the recipient's target `DiscardTarget`;
- the antispam checks (`antispam`): the client's DNSBL listing and its HELO
  name; skipped for trusted networks, authenticated clients and access OKs.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from retrieval.smtp.access import AccessTable, Decision, decide
from retrieval.smtp.dnsbl import Listing
from retrieval.smtp.session import Reply, split_address, unquote_local
from retrieval.smtp.targets import DiscardTarget, LocalTarget, RemoteTarget


@dataclass(frozen=True)
class Peer:
    """What the adapter knows about the client when a decision is due."""

    ip: str
    name: str = "unknown"  # forward-confirmed reverse DNS name
    helo: str | None = None
    authenticated: bool = False
    listing: Listing | None = None  # the DNSBL that lists the client, None when none does (or none asked)


_HELO_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_\-]*[A-Za-z0-9])?")


def helo_problem(helo: str, ours: set[str]) -> Reply | None:
    """Postfix's reject_invalid_helo_hostname, reject_non_fqdn_helo_hostname, and a HELO that
    claims to be us (`ours`: our hostname and local domains, lower-case)."""
    if helo.startswith("["):
        inner = helo[1:-1] if helo.endswith("]") else ""
        if inner[:5].lower() == "ipv6:":
            inner, version = inner[5:], 6
        else:
            version = 4
        try:
            ok = ipaddress.ip_address(inner).version == version
        except ValueError:
            ok = False
        if not ok:
            return Reply(501, "5.5.2", f"<{helo}>: Helo command rejected: Invalid name")
        return None
    name = helo[:-1] if helo.endswith(".") else helo
    labels = name.split(".")
    if len(name) > 255 or not all(_HELO_LABEL.fullmatch(label) and len(label) <= 63 for label in labels):
        return Reply(501, "5.5.2", f"<{helo}>: Helo command rejected: Invalid name")
    if len(labels) < 2 or labels[-1].isdigit():
        return Reply(550, "5.7.1", f"<{helo}>: Helo command rejected: need fully-qualified hostname")
    if name.lower() in ours:
        return Reply(550, "5.7.1", f"<{helo}>: Helo command rejected: You are not me")
    return None


class RecipientPolicy:
    def __init__(
        self,
        local_domains: Iterable[str],
        mynetworks: Iterable[str],
        lookup: Callable[[str], object | None],
        first_user: Callable[[], str | None],
        recipient_delimiter: str = "+",
        postmaster: str | None = None,
        users_unavailable: Callable[[], bool] = lambda: False,
        access: AccessTable | None = None,
        helo_checks: bool = False,
        hostname: str | None = None,
        alias_exists: Callable[[str], bool | None] = lambda local: False,
    ) -> None:
        """`alias_exists(local_part)`: True/False, None when the alias file cannot be read."""
        self.local_domains = {d.lower().rstrip(".") for d in local_domains}
        self.networks = [ipaddress.ip_network(n, strict=False) for n in mynetworks]
        self.lookup = lookup
        self.first_user = first_user
        self.delimiter = recipient_delimiter
        self.postmaster = postmaster
        self.users_unavailable = users_unavailable
        self.access = access
        self.helo_checks = helo_checks
        self.ours = self.local_domains | ({hostname.lower().rstrip(".")} if hostname else set())
        self.alias_exists = alias_exists
        self._trusted: dict[str, bool] = {}  # client IP -> in mynetworks (asked at every RCPT)

    @classmethod
    def from_config(cls, config, passwd, aliases=None) -> "RecipientPolicy":  # type: ignore[no-untyped-def]
        """`aliases`: an AliasTable to share with the expander (default: one on [smtp] aliases)."""
        from retrieval.smtp.aliases import AliasTable

        smtp = config.smtp
        table = aliases if aliases is not None else AliasTable(smtp.aliases)

        def alias_exists(local: str) -> bool | None:
            if table.unavailable():
                return None
            return table.find(local, smtp.recipient_delimiter) is not None
        domains = smtp.local_domains or (config.server.hostname, "localhost")

        def first_user() -> str | None:
            users = passwd.users()
            return users[0].name if users else None

        def unavailable() -> bool:
            # an unreadable passwd-file reads as "no users": that must not bounce mail for good
            return any(problem.where == "file" for problem in passwd.problems())

        access = AccessTable(smtp.access, smtp.recipient_delimiter) if smtp.access else None
        return cls(domains, smtp.mynetworks, passwd.lookup, first_user, smtp.recipient_delimiter, smtp.postmaster,
                   unavailable, access, smtp.helo_checks, config.server.hostname, alias_exists)

    # -- pieces ---------------------------------------------------------------------

    def trusted(self, client_ip: str | None) -> bool:
        if not client_ip:
            return False
        known = self._trusted.get(client_ip)
        if known is None:
            if len(self._trusted) >= 4096:
                self._trusted.clear()
            known = self._trusted[client_ip] = self._in_networks(client_ip)
        return known

    def _in_networks(self, client_ip: str) -> bool:
        try:
            ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == net.version and ip in net for net in self.networks)

    def is_local_domain(self, domain: str) -> bool:
        domain = domain.lower().rstrip(".")
        if domain in self.local_domains:
            return True
        try:
            return domain.encode("idna").decode("ascii") in self.local_domains
        except UnicodeError:
            return False

    def local_user(self, local: str, domain: str) -> LocalTarget | None:
        """The passwd-file user behind a local part (and folder from the delimiter)."""
        candidates = [(local, None)]
        if self.delimiter:
            cut = min((i for i in (local.find(c) for c in self.delimiter) if i > 0), default=-1)
            if cut > 0:
                candidates.append((local[:cut], local[cut + 1 :] or None))
        for name, folder in candidates:
            for key in (f"{name}@{domain}", name, f"{name.lower()}@{domain}", name.lower()):
                record = self.lookup(key)
                if record is not None:
                    return LocalTarget(getattr(record, "name", key), folder)
        return None

    def postmaster_user(self) -> str | None:
        if self.postmaster:
            return self.postmaster
        if self.lookup("postmaster") is not None:
            return "postmaster"
        return self.first_user()

    # -- the decision ---------------------------------------------------------------

    def access_step(self, peer: Peer, sender: str | None = None, recipient: str | None = None) -> Decision:
        """The access table's say (nothing to say without a table)."""
        return decide(self.access, peer.ip or None, peer.name, sender, recipient)

    def exempt(self, peer: Peer) -> bool:
        """Trusted networks and authenticated clients skip the antispam checks."""
        return peer.authenticated or self.trusted(peer.ip)

    def antispam(self, peer: Peer) -> Reply | None:
        """The DNSBL listing and the HELO name (the caller skips this for exempt clients and access OKs)."""
        if peer.listing is not None:
            return Reply(554, "5.7.1", f"Service unavailable; client [{peer.ip}] blocked using {peer.listing.zone}")
        if self.helo_checks and peer.helo is not None:
            return helo_problem(peer.helo, self.ours)
        return None

    def check_sender(self, sender: str, peer: Peer) -> Reply:
        """MAIL FROM: the access table's entries for the client and the sender."""
        decision = self.access_step(peer, sender=sender)
        return decision.reply or Reply(250, "2.1.0", "Ok")

    def check(self, address: str, client_ip: str | None, authenticated: bool, sender: str | None = None,
              peer: Peer | None = None) -> tuple[Reply, LocalTarget | RemoteTarget | DiscardTarget | None]:
        """RCPT TO: the access table, the antispam checks, then the recipient itself."""
        if peer is None:
            peer = Peer(client_ip or "", authenticated=authenticated)
        decision = self.access_step(peer, sender, address)
        if decision.reply is not None:
            return decision.reply, None
        if not decision.ok and not self.exempt(peer):
            refusal = self.antispam(peer)
            if refusal is not None:
                return refusal, None
        reply, target = self.recipient(address, client_ip, authenticated or decision.relay)
        if reply.ok and decision.discard is not None:
            return reply, DiscardTarget(address, str(decision.discard))
        return reply, target

    def recipient(self, address: str, client_ip: str | None, authenticated: bool) -> tuple[Reply, LocalTarget | RemoteTarget | None]:
        """The recipient alone, without the access table or antispam checks (`authenticated`: or
        otherwise allowed to relay, e.g. by an access RELAY); what the queue asks again at delivery."""
        local, domain = split_address(address)
        local = unquote_local(local)
        if not domain or self.is_local_domain(domain):
            if self.users_unavailable():
                return Reply(451, "4.3.0", "Temporary lookup failure"), None
            alias = self.alias_exists(local)
            if alias is None:
                return Reply(451, "4.3.0", "Temporary lookup failure"), None
            if local.lower() == "postmaster":
                if alias:
                    return Reply(250, "2.1.5", "Ok"), None  # expanded at delivery
                user = self.postmaster_user()
                if user is None:
                    return Reply(451, "4.3.0", "Error: postmaster has no mailbox here (set [smtp] postmaster)"), None
                return Reply(250, "2.1.5", "Ok"), LocalTarget(user)
            if not domain:
                return Reply(501, "5.1.3", "Bad recipient address syntax"), None
            if alias or local.lower() == "mailer-daemon":
                return Reply(250, "2.1.5", "Ok"), None  # expanded at delivery
            target = self.local_user(local, domain.lower().rstrip("."))
            if target is None:
                return Reply(550, "5.1.1", "No such user here"), None
            return Reply(250, "2.1.5", "Ok"), target
        if authenticated or self.trusted(client_ip):
            return Reply(250, "2.1.5", "Ok"), RemoteTarget(address)
        return Reply(554, "5.7.1", "Relay access denied"), None

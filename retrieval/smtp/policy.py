"""Who may send to whom: the decision on each RCPT, without sockets or threads.

- a local domain (`[smtp] local_domains`, by default `[server] hostname` and
  `localhost`): the local part must be a passwd-file user (`user` or the full
  `user@domain`, as Dovecot's virtual users are named), optionally with a
  folder after the recipient delimiter (`alice+lists@...`); `postmaster`
  (any case, with or without a domain, RFC 5321 4.5.1) is always taken and
  goes to `[smtp] postmaster`, else to a user named `postmaster`, else to the
  first user of the passwd-file;
- any other domain is relaying: allowed for authenticated clients and
  clients in `mynetworks`, otherwise `554 5.7.1 Relay access denied`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from retrieval.smtp.session import Reply, split_address, unquote_local
from retrieval.smtp.targets import LocalTarget, RemoteTarget


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
    ) -> None:
        self.local_domains = {d.lower().rstrip(".") for d in local_domains}
        self.networks = [ipaddress.ip_network(n, strict=False) for n in mynetworks]
        self.lookup = lookup
        self.first_user = first_user
        self.delimiter = recipient_delimiter
        self.postmaster = postmaster
        self.users_unavailable = users_unavailable

    @classmethod
    def from_config(cls, config, passwd) -> "RecipientPolicy":  # type: ignore[no-untyped-def]
        smtp = config.smtp
        domains = smtp.local_domains or (config.server.hostname, "localhost")

        def first_user() -> str | None:
            users = passwd.users()
            return users[0].name if users else None

        def unavailable() -> bool:
            # an unreadable passwd-file reads as "no users": that must not bounce mail for good
            return any(problem.where == "file" for problem in passwd.problems())

        return cls(domains, smtp.mynetworks, passwd.lookup, first_user, smtp.recipient_delimiter, smtp.postmaster,
                   unavailable)

    # -- pieces ---------------------------------------------------------------------

    def trusted(self, client_ip: str | None) -> bool:
        if not client_ip:
            return False
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

    def check(self, address: str, client_ip: str | None, authenticated: bool) -> tuple[Reply, LocalTarget | RemoteTarget | None]:
        local, domain = split_address(address)
        local = unquote_local(local)
        if not domain or self.is_local_domain(domain):
            if self.users_unavailable():
                return Reply(451, "4.3.0", "Temporary lookup failure"), None
            if local.lower() == "postmaster":
                user = self.postmaster_user()
                if user is None:
                    return Reply(451, "4.3.0", "Error: postmaster has no mailbox here (set [smtp] postmaster)"), None
                return Reply(250, "2.1.5", "Ok"), LocalTarget(user)
            if not domain:
                return Reply(501, "5.1.3", "Bad recipient address syntax"), None
            target = self.local_user(local, domain.lower().rstrip("."))
            if target is None:
                return Reply(550, "5.1.1", "No such user here"), None
            return Reply(250, "2.1.5", "Ok"), target
        if authenticated or self.trusted(client_ip):
            return Reply(250, "2.1.5", "Ok"), RemoteTarget(address)
        return Reply(554, "5.7.1", "Relay access denied"), None

"""From a recipient address to delivery targets: aliases, :include:, .forward.

BLOCKING (reads the alias file, include files and .forward files): the
queue runner calls `Expander.expand` in a thread at delivery time, so an
edited .forward applies to mail already queued, as with Postfix's local(8).

The rules, Postfix's where the issue is silent:

- a domain that is not ours gives a RemoteTarget for the address as written;
- in our domains the alias file is asked for the full local part, then for
  the part before the recipient delimiter; when the base matched, the
  extension is carried on to local names in the alias (`propagate_unmatched_extensions`),
  so `alice+lists: bob` is not needed for `bob+lists`;
- without an alias, `postmaster` and `MAILER-DAEMON` go to the policy's
  postmaster user, other names must be passwd-file users (else 5.1.1);
- a local user's `~/.forward+EXT`, then `~/.forward`, replaces delivery to
  the mailbox (`\\user` or the user's own name in it keeps a local copy);
  one owned by another user or writable by group or others is ignored
  with a log line; one that cannot be read defers (4.3.0);
- a name met again on its own expansion path delivers to the mailbox when
  it is a user (`root: root, admin@example.org`), otherwise it is a loop
  (5.4.6), as is nesting deeper than MAX_DEPTH;
- `|command` and `/file` are allowed per origin ("alias", "forward",
  "include") by `[smtp] allow_commands` / `allow_files` (else 5.7.1). They
  run as the .forward's user, or with `[smtp] default_privs` for aliases and
  their include files (PipeTarget.user None).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field, replace

from retrieval.smtp.aliases import BUILTIN, AliasTable, classify, parse_list, read_include, split_extension
from retrieval.smtp.policy import RecipientPolicy
from retrieval.smtp.session import Reply, split_address, unquote_local
from retrieval.smtp.targets import FileTarget, LocalTarget, PipeTarget, RemoteTarget, Target

log = logging.getLogger("retrieval.smtp.expand")

MAX_DEPTH = 20


@dataclass
class Expansion:
    targets: list[Target] = field(default_factory=list)  # in order, each once
    errors: list[tuple[str, Reply]] = field(default_factory=list)  # (address or target, why)

    def add(self, target: Target) -> None:
        if target not in self.targets:
            self.targets.append(target)

    def fail(self, what: str, reply: Reply) -> None:
        if (what, reply) not in self.errors:
            self.errors.append((what, reply))


@dataclass(frozen=True)
class _Context:
    """Where a target was written: decides permissions, run-as user and messages."""

    kind: str  # "recipient", "alias", "forward" or "include"
    origin: str  # "alias staff", "/home/alice/.forward", ":include:/etc/lists/x"
    domain: str  # the recipient's domain, for bare names
    runas: str | None = None  # passwd-file user whose .forward this came from
    extension: str | None = None  # to propagate to local names
    owner: LocalTarget | None = None  # the .forward's user, whose own name means "deliver here"


class Expander:
    def __init__(self, config, passwd, aliases: AliasTable | None = None,  # type: ignore[no-untyped-def]
                 policy: RecipientPolicy | None = None) -> None:
        self.config = config
        self.passwd = passwd
        self.aliases = aliases if aliases is not None else AliasTable(config.smtp.aliases)
        self.policy = policy if policy is not None else RecipientPolicy.from_config(config, passwd, self.aliases)
        self.delimiter = config.smtp.recipient_delimiter

    # -- the fast question, for RCPT ------------------------------------------------------

    def exists(self, address: str) -> bool | None:
        """Whether a local address has an alias, a built-in name or a user; None for a domain
        that is not ours, or when the alias or passwd file cannot be read right now."""
        local, domain = split_address(address)
        local = unquote_local(local)
        if domain and not self.policy.is_local_domain(domain):
            return None
        if self.aliases.unavailable() or self.policy.users_unavailable():
            return None
        if self.aliases.find(local, self.delimiter) is not None or local.lower() in BUILTIN:
            return True
        return self.policy.local_user(local, domain.lower().rstrip(".")) is not None

    # -- the full expansion, at delivery ----------------------------------------------------

    def expand(self, address: str) -> Expansion:
        out = Expansion()
        local, domain = split_address(address)
        domain = domain.lower().rstrip(".")
        self._address(address, (), out, _Context("recipient", "recipient", domain or self.config.server.hostname))
        return out

    def _address(self, address: str, chain: tuple[str, ...], out: Expansion, ctx: _Context) -> None:
        local, domain = split_address(address)
        local = unquote_local(local)
        if domain and not self.policy.is_local_domain(domain):
            out.add(RemoteTarget(address))
            return
        domain = domain.lower().rstrip(".") if domain else ctx.domain
        if not local:
            out.fail(address, Reply(550, "5.1.3", "Bad recipient address syntax"))
            return
        why = self.aliases.unavailable()
        if why or self.policy.users_unavailable():
            out.fail(address, Reply(451, "4.3.0", f"Temporary lookup failure: {why or 'passwd-file unreadable'}"))
            return
        if len(chain) >= MAX_DEPTH:
            out.fail(address, Reply(550, "5.4.6", f"Mail forwarding loop: more than {MAX_DEPTH} alias levels"))
            return
        found = self.aliases.find(local, self.delimiter)
        if found is not None:
            entry, extension = found
            key = "alias:" + entry.name
            if key in chain:
                user = self.policy.local_user(local, domain)
                if user is None:
                    out.fail(address, Reply(550, "5.4.6", f"Mail forwarding loop for {entry.name} "
                                                          f"({' -> '.join(c.split(':', 1)[1] for c in chain)})"))
                    return
                self._user(user, address, chain, out, ctx)
                return
            inner = _Context("alias", f"alias {entry.name}", domain, extension=extension or None)
            for token, _line in entry.targets:
                self._target(token, chain + (key,), out, inner)
            return
        if local.lower() in BUILTIN and self.policy.local_user(local, domain) is None:
            name = self.policy.postmaster_user()
            user = self.policy.local_user(name, domain) if name else None
            if user is None:
                out.fail(address, Reply(451, "4.3.0", "postmaster has no mailbox here (set [smtp] postmaster)"))
                return
            self._user(user, address, chain, out, ctx)
            return
        user = self.policy.local_user(local, domain)
        if user is None:
            out.fail(address, Reply(550, "5.1.1", "No such user here"))
            return
        self._user(user, address, chain, out, ctx)

    def _user(self, user: LocalTarget, address: str, chain: tuple[str, ...], out: Expansion, ctx: _Context) -> None:
        """A passwd-file user: its .forward when there is one, else the mailbox."""
        key = "user:" + user.user
        if not self.config.smtp.forward or key in chain:
            out.add(user)
            return
        record = self.passwd.lookup(user.user)
        try:
            found = self._forward(record, user.folder)
        except OSError as exc:
            out.fail(address, Reply(451, "4.3.0", f"cannot read {exc.filename}: {exc.strerror}"))
            return
        if found is None:
            out.add(user)
            return
        path, targets = found
        inner = _Context("forward", path, ctx.domain, runas=user.user, owner=user)
        for token, _line in targets:
            self._target(token, chain + (key,), out, inner)

    def _forward(self, record, folder: str | None) -> tuple[str, list[tuple[str, int]]] | None:  # type: ignore[no-untyped-def]
        """Postfix's forward_path: ~/.forward+EXT, then ~/.forward. Raises OSError when unreadable."""
        if record is None or not record.home:
            return None
        names = ([f".forward{self.delimiter[0]}{folder}"] if folder and self.delimiter and "/" not in folder else [])
        for name in names + [".forward"]:
            path = os.path.join(record.home, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # a symlink, which we do not follow
                    log.warning("%s is a symbolic link: ignored", path)
                    continue
                exc.filename = path
                raise
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                problem = self._unsafe(st, record)
                if problem:
                    log.warning("%s: %s: ignored, as Postfix does", path, problem)
                    continue
                text = f.read(1 << 20).decode("utf-8", "replace")
            targets = parse_list(text)
            if targets:
                return path, targets
        return None

    def _unsafe(self, st: os.stat_result, record) -> str | None:  # type: ignore[no-untyped-def]
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        owner = record.uid if record.uid is not None else _mail_uid(self.config)
        if st.st_uid not in (owner, 0):
            return f"owned by uid {st.st_uid}, not by the user (uid {owner}) or root"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return "writable by group or others"
        return None

    def _target(self, token: str, chain: tuple[str, ...], out: Expansion, ctx: _Context) -> None:
        try:
            parsed = classify(token)
        except ValueError as exc:
            out.fail(token, Reply(550, "5.3.5", f"{ctx.origin}: {exc}"))
            return
        smtp = self.config.smtp
        if parsed.kind == "command":
            if ctx.kind not in smtp.allow_commands:
                out.fail(token, Reply(550, "5.7.1", f"{ctx.origin}: mail to command is restricted"))
            else:
                out.add(PipeTarget(parsed.value, ctx.runas, ctx.origin))
        elif parsed.kind == "file":
            if ctx.kind not in smtp.allow_files:
                out.fail(token, Reply(550, "5.7.1", f"{ctx.origin}: mail to file is restricted"))
            else:
                out.add(FileTarget(parsed.value, ctx.runas, ctx.origin))
        elif parsed.kind == "include":
            self._include(parsed.value, chain, out, ctx)
        elif parsed.kind == "local":
            user = self.policy.local_user(self._extended(parsed.value, ctx), ctx.domain)
            if user is None:
                out.fail(token, Reply(550, "5.1.1", f"{ctx.origin}: {parsed.value}: no such user here"))
            elif ctx.owner is not None and user.user == ctx.owner.user and user.folder is None:
                out.add(ctx.owner)  # \alice in alice's .forward, for alice+lists: keep the folder
            else:
                out.add(user)
        else:
            address = parsed.value
            local, domain = split_address(address)
            if domain and not self.policy.is_local_domain(domain):
                out.add(RemoteTarget(address))
                return
            local = self._extended(unquote_local(local), ctx)
            if ctx.owner is not None:
                # the user's own name in their .forward: the mailbox, not the .forward again
                own = self.policy.local_user(local, domain.lower().rstrip(".") if domain else ctx.domain)
                if own is not None and own.user == ctx.owner.user:
                    out.add(LocalTarget(own.user, own.folder or ctx.owner.folder))
                    return
            self._address(local + ("@" + domain if domain else ""), chain, out, ctx)

    def _extended(self, local: str, ctx: _Context) -> str:
        if ctx.extension and self.delimiter and split_extension(local, self.delimiter)[1] is None:
            return f"{local}{self.delimiter[0]}{ctx.extension}"
        return local

    def _include(self, path: str, chain: tuple[str, ...], out: Expansion, ctx: _Context) -> None:
        key = "include:" + path
        if key in chain:
            out.fail(":include:" + path, Reply(550, "5.4.6", f"Mail forwarding loop: {path} includes itself"))
            return
        if len(chain) >= MAX_DEPTH:
            out.fail(":include:" + path, Reply(550, "5.4.6", f"Mail forwarding loop: more than {MAX_DEPTH} levels"))
            return
        try:
            if ctx.runas is not None:
                self._check_readable_by(path, ctx.runas)
            targets = read_include(path)
        except PermissionError as exc:
            out.fail(":include:" + path, Reply(550, "5.7.1", f"{ctx.origin}: cannot read {path}: {exc.strerror}"))
            return
        except OSError as exc:
            out.fail(":include:" + path, Reply(451, "4.3.0", f"{ctx.origin}: cannot read {path}: {exc.strerror}"))
            return
        inner = replace(ctx, kind="include", origin=":include:" + path)
        for token, _line in targets:
            self._target(token, chain + (key,), out, inner)

    def _check_readable_by(self, path: str, user: str) -> None:
        """A .forward may include only what its user could read (we may be root)."""
        if os.getuid() != 0:
            return
        record = self.passwd.lookup(user)
        uid = record.uid if record is not None and record.uid is not None else _mail_uid(self.config)
        st = os.stat(path)
        if st.st_uid == uid or st.st_mode & stat.S_IROTH:
            return
        raise PermissionError(13, "not readable by the .forward's user", path)


def _mail_uid(config) -> int:  # type: ignore[no-untyped-def]
    """Whose files virtual users' files are: [server] user, else ours."""
    if config.server.user:
        import pwd

        try:
            return pwd.getpwnam(config.server.user).pw_uid
        except KeyError:
            pass
    return os.getuid()


def check_aliases(config, passwd) -> list:  # type: ignore[no-untyped-def]
    """Everything wrong with the alias file, each with file:line (for `retrieval aliases check`
    and `retrieval check`): syntax, targets that are nothing, unknown local users, targets the
    allow_* settings forbid, unreadable include files, loops."""
    from dataclasses import replace as dc_replace

    from retrieval.problems import Problem

    table = AliasTable(config.smtp.aliases)
    if config.smtp.aliases is None:
        return []
    problems: list[Problem] = list(table.problems())
    if table.unavailable():
        return problems
    quiet = dc_replace(config, smtp=dc_replace(config.smtp, forward=False))
    expander = Expander(quiet, passwd, table)
    policy = expander.policy
    domain = (config.smtp.local_domains or (config.server.hostname,))[0]
    seen_includes: set[str] = set()

    def check_targets(targets: list[tuple[str, int]], file: str, kind: str) -> None:
        for token, line in targets:
            where = f"line {line}"
            try:
                parsed = classify(token)
            except ValueError as exc:
                problems.append(Problem(file, where, str(exc), "write an address, |command, /file or :include:/file"))
                continue
            if parsed.kind in ("command", "file"):
                key = "allow_commands" if parsed.kind == "command" else "allow_files"
                if kind not in getattr(config.smtp, key):
                    problems.append(Problem(file, where, f"{token}: not allowed for {kind} targets by [smtp] {key}",
                                            f'add "{kind}" to [smtp] {key}, or remove the target'))
            elif parsed.kind == "include":
                if parsed.value in seen_includes:
                    continue
                seen_includes.add(parsed.value)
                try:
                    inner = read_include(parsed.value)
                except OSError as exc:
                    problems.append(Problem(file, where, f"cannot read include file {parsed.value}: {exc.strerror}",
                                            "create it or fix the path"))
                    continue
                check_targets(inner, parsed.value, "include")
            elif parsed.kind == "local":
                if policy.local_user(parsed.value, domain) is None:
                    problems.append(Problem(file, where, f"{token}: no such local user", "add the user or fix the name"))
            else:
                local, at_domain = split_address(parsed.value)
                if at_domain and not policy.is_local_domain(at_domain):
                    continue
                if not expander.exists(unquote_local(local) + "@" + (at_domain or domain)):
                    problems.append(Problem(file, where, f"{token}: no such local user or alias",
                                            "add the user or alias, or fix the name"))

    for entry in table.entries():
        check_targets(list(entry.targets), entry.file, "alias")
        for what, reply in expander.expand(f"{entry.name}@{domain}").errors:
            if reply.status == "5.4.6":
                problem = Problem(entry.file, f"line {entry.line}", f"alias {entry.name}: {reply.text}",
                                  "break the loop")
                if problem not in problems:
                    problems.append(problem)
    return problems

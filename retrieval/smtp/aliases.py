"""aliases(5): the Sendmail/Postfix alias file, parsed with line numbers.

    # comment
    name: target, target, ...
        continued on lines that start with whitespace
    "quoted name": "|/usr/bin/prog arg", /var/log/mail.archive, :include:/etc/lists/staff

A target is `|command`, `/absolute/file`, `:include:/absolute/list`,
`\\user` (a local user, no further expansion) or an address: a bare name
(an alias or a local user) or `local@domain` (remote, or local again when
the domain is one of ours). Names are matched without regard to case. A
name given twice keeps its first entry, as postalias does, and `check`
says so.

There is no compiled database: `AliasTable` re-reads the source whenever
its (inode, size, mtime) changes, so an edit takes effect at once and
nothing can go stale. `retrieval aliases compile` therefore only parses
and reports syntax errors (what newaliases complains about), writing
nothing; `retrieval aliases check` also follows every target (unknown
users, loops, unreadable include files) and reports each with file:line.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from retrieval.problems import Problem

BUILTIN = ("postmaster", "mailer-daemon")  # RFC 5321 4.5.1, and where bounces come from


@dataclass(frozen=True)
class AliasEntry:
    name: str  # lower case
    targets: tuple[tuple[str, int], ...]  # (target as written, its line)
    file: str
    line: int


@dataclass(frozen=True)
class Parsed:
    """One target, classified. `kind` is command, file, include, local (`\\user`) or address."""

    kind: str
    value: str


def split_targets(text: str) -> list[str]:
    """Comma-separated targets; commas inside double quotes do not split."""
    out, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\" and quoted:
            current.append(char)
            escaped = True
        elif char == '"':
            current.append(char)
            quoted = not quoted
        elif char == "," and not quoted:
            out.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    out.append("".join(current).strip())
    return [t for t in out if t]


def _unbalanced(text: str) -> bool:
    """A double quote left open at the end of the line (backslash escapes inside quotes)."""
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
    return quoted


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


_BAD_ADDRESS = re.compile(r'[\s<>(),;:\[\]]')


def classify(token: str) -> Parsed:
    """What a target is; ValueError (with the reason) when it is nothing we deliver to."""
    token = token.strip()
    if token.startswith('"') and token.endswith('"') and len(token) >= 2:
        inner = _unquote(token)
        if inner.startswith(("|", "/", ":include:", "\\")):
            token = inner  # "|/usr/bin/prog arg": quoted for the whitespace
    else:
        m = re.fullmatch(r'[^<>"]*<([^<>]*)>\s*', token)  # Full Name <user@example.org>
        if m:
            token = m.group(1).strip()
    if token.startswith("|"):
        command = token[1:].strip()
        if not command:
            raise ValueError("empty command after |")
        return Parsed("command", command)
    if token.startswith("/"):
        if token.endswith("/"):
            raise ValueError(f"{token}: delivery to a directory (Maildir) is not supported here")
        return Parsed("file", token)
    if token.lower().startswith(":include:"):
        path = token[len(":include:"):].strip()
        if not path.startswith("/"):
            raise ValueError(f"{token}: the include file must be an absolute path")
        return Parsed("include", path)
    if token.startswith("\\"):
        name = token[1:].strip()
        if not name or _BAD_ADDRESS.search(name) or "@" in name:
            raise ValueError(f"{token}: \\ must be followed by a local user name")
        return Parsed("local", name)
    if token.startswith('"'):
        return Parsed("address", token)  # "quoted local"@domain: the session's helpers take it apart
    if not token or _BAD_ADDRESS.search(token) or token.startswith("@") or token.endswith("@"):
        raise ValueError(f"{token!r} is not an address, |command, /file or :include:/file")
    return Parsed("address", token)


def _logical_lines(text: str, file: str, problems: list[Problem]) -> list[list[tuple[int, str]]]:
    """Physical lines (number, text) grouped into entries: a line starting with whitespace
    continues the entry; blank and comment lines are skipped (they do not end an entry)."""
    out: list[list[tuple[int, str]]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if raw[:1] in (" ", "\t"):
            if not out:
                problems.append(Problem(file, f"line {number}", "continuation line without an entry before it",
                                        "start the entry at the beginning of a line"))
                continue
            out[-1].append((number, raw))
        else:
            out.append([(number, raw)])
    return out


def parse_aliases(text: str, file: str) -> tuple[dict[str, AliasEntry], list[Problem]]:
    """Entries by lower-case name, and every syntax problem with its line."""
    problems: list[Problem] = []
    entries: dict[str, AliasEntry] = {}
    for physical in _logical_lines(text, file, problems):
        start, logical = physical[0]
        where = f"line {start}"
        if logical.startswith('"'):
            m = re.match(r'"((?:[^"\\]|\\.)*)"\s*:', logical)
            if m is None:
                problems.append(Problem(file, where, "unterminated quoted name or no colon after it",
                                        'write "name": target'))
                continue
            name, rest = _unquote('"' + m.group(1) + '"'), logical[m.end():]
            spaced = False
        else:
            name, colon, rest = logical.partition(":")
            if not colon:
                problems.append(Problem(file, where, f"no colon in {logical.strip()[:60]!r}", "write name: target, ..."))
                continue
            name = name.strip()
            spaced = any(c.isspace() for c in name)
        if not name or spaced or "@" in name:
            problems.append(Problem(file, where, f"bad alias name {name!r}",
                                    'use a local part without @ or spaces (quote it if it has spaces)'))
            continue
        key = name.lower()
        targets: list[tuple[str, int]] = []
        # each target keeps its own physical line, for messages
        for number, line in [(start, rest)] + physical[1:]:
            targets.extend((token, number) for token in split_targets(line))
        if not targets:
            problems.append(Problem(file, where, f"alias {name} has no targets", "list at least one target"))
            continue
        if any(_unbalanced(line) for _, line in [(start, rest)] + physical[1:]):
            problems.append(Problem(file, where, f"alias {name}: unbalanced double quote", "close the quoted target"))
        if key in entries:
            problems.append(Problem(file, where, f"duplicate alias {name} (the entry on line {entries[key].line} is used)",
                                    "merge the two entries"))
            continue
        entries[key] = AliasEntry(key, tuple(targets), file, start)
    return entries, problems


def parse_list(text: str) -> list[tuple[str, int]]:
    """An :include: list or a .forward: targets separated by commas or newlines, # comments."""
    targets: list[tuple[str, int]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped and not stripped.startswith("#"):
            targets.extend((token, number) for token in split_targets(stripped))
    return targets


def read_include(path: str) -> list[tuple[str, int]]:
    """Raises OSError when the file cannot be read."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return parse_list(f.read())


class AliasTable:
    """The alias file, re-read when it changes (one stat per lookup otherwise). Thread-safe.

    Without a file only the built-in names exist (postmaster, MAILER-DAEMON; the
    expander sends them to the postmaster user)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self._lock = threading.Lock()
        self._signature: tuple[int, ...] | None = None
        self._entries: dict[str, AliasEntry] = {}
        self._problems: list[Problem] = []
        self._error: str | None = None

    def _refresh(self) -> None:
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
            signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError as exc:
            with self._lock:
                self._fail(exc)
            return
        with self._lock:
            if signature == self._signature:
                return
            try:
                with open(self.path, "rb") as f:
                    st = os.fstat(f.fileno())
                    text = f.read().decode("utf-8", "replace")
            except OSError as exc:
                self._fail(exc)
                return
            self._entries, self._problems = parse_aliases(text, self.path)
            self._signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            self._error = None

    def _fail(self, exc: OSError) -> None:
        """Unreadable: no entries, and `unavailable` says so (mail is deferred, not bounced)."""
        self._entries, self._signature = {}, None
        self._error = f"cannot read the alias file: {exc.strerror or exc}"
        self._problems = [Problem(str(self.path), "file", self._error, "check the path ([smtp] aliases) and permissions")]

    def unavailable(self) -> str | None:
        """Why the file cannot be used right now, or None."""
        self._refresh()
        return self._error

    def lookup(self, name: str) -> AliasEntry | None:
        self._refresh()
        return self._entries.get(name.lower())

    def find(self, local: str, delimiter: str) -> tuple[AliasEntry, str | None] | None:
        """Postfix's order: the full local part, then the part before the delimiter.

        Returns the entry and the extension to propagate (when the base matched)."""
        entry = self.lookup(local)
        if entry is not None:
            return entry, None
        base, ext = split_extension(local, delimiter)
        if ext is not None:
            entry = self.lookup(base)
            if entry is not None:
                return entry, ext
        return None

    def entries(self) -> list[AliasEntry]:
        self._refresh()
        return list(self._entries.values())

    def problems(self) -> list[Problem]:
        self._refresh()
        return list(self._problems)


def split_extension(local: str, delimiter: str) -> tuple[str, str | None]:
    """`user+ext` -> (user, ext); the first delimiter character present wins, as in the policy."""
    if not delimiter:
        return local, None
    cut = min((i for i in (local.find(c) for c in delimiter) if i > 0), default=-1)
    if cut <= 0:
        return local, None
    return local[:cut], local[cut + 1:]

"""Dovecot's passwd-file: `user:password:uid:gid:gecos:home:shell:extra_fields`.

Admins migrating from Dovecot keep their `users` file as it is, so we read it the way
Dovecot does: trailing fields optional, empty fields allowed, `#` comments and blank
lines ignored, extra fields space-separated `key=value` (the last field keeps its colons:
`userdb_mail=maildir:~/Mail`).  The file is re-read when it changes (one `stat` per
lookup), so `retrieval passwd add` or a hand edit takes effect without a restart.

Password checks are slow on purpose (bcrypt, Argon2): `verify` blocks and must run in a
thread (`verify_deferred`).  An unknown user costs the same as a wrong password, because
it is checked against a dummy hash of the same scheme and cost.

Writers rewrite the whole file atomically (temp file in the same directory, fsync,
rename) under an exclusive `flock`, and change only the lines they are about: comments,
ordering and other users' lines stay byte for byte.
"""

from __future__ import annotations

import fcntl
import grp
import ipaddress
import os
import pwd
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from retrieval.auth.schemes import (
    DEFAULT_SCHEME,
    canonical_scheme,
    dummy_hash,
    hash_password,
    scheme_of,
    stored_problem,
    verify_password,
    verify_password_isolated,
)
from retrieval.problems import Problem

if TYPE_CHECKING:  # Twisted is imported when first needed: the admin command never needs it
    from twisted.internet.defer import Deferred

__all__ = [
    "NoSuchUserError",
    "PasswdError",
    "PasswdFile",
    "UserExistsError",
    "UserRecord",
    "add_user",
    "delete_user",
    "format_line",
    "parse_passwd",
    "set_password",
]

_FIELDS = ("name", "password", "uid", "gid", "gecos", "home", "shell", "extra")
_LINE_FORMAT = "user:{SCHEME}hash[:uid:gid:gecos:home:shell:extra_fields]"


class PasswdError(Exception):
    """A passwd-file change that cannot be made; the message is meant for the admin."""


class UserExistsError(PasswdError):
    pass


class NoSuchUserError(PasswdError):
    pass


@dataclass(frozen=True)
class UserRecord:
    """One user line.  `extra` is read-only so a record can be shared between threads."""

    name: str
    password: str
    uid: int | None = None
    gid: int | None = None
    gecos: str = ""
    home: str = ""
    shell: str = ""
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)
    line: int = field(default=0, compare=False)  # 1-based line in the file, for messages

    def __post_init__(self) -> None:
        if not isinstance(self.extra, MappingProxyType):
            object.__setattr__(self, "extra", MappingProxyType(dict(self.extra)))

    @property
    def scheme(self) -> str:
        """The scheme as written (`""` when the password field is empty)."""
        return scheme_of(self.password) if self.password else ""

    @property
    def nopassword(self) -> bool:
        """Dovecot's `nopassword`: with an empty password field, any password is accepted."""
        return "nopassword" in self.extra

    @property
    def userdb_fields(self) -> dict[str, str]:
        """`userdb_*` extra fields without the prefix (`mail`, `quota_rule`, ...)."""
        return {k[len("userdb_") :]: v for k, v in self.extra.items() if k.startswith("userdb_")}

    def allows_ip(self, address: str | None) -> bool:
        """Dovecot's `allow_nets`: comma/space separated networks; `local` means no remote IP.

        No `allow_nets` allows everyone; an empty one (or only unparsable entries)
        allows no one, as in Dovecot.
        """
        nets = self.extra.get("allow_nets")
        if nets is None:
            return True
        try:
            ip = ipaddress.ip_address(address) if address else None
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        for token in nets.replace(",", " ").split():
            if token == "local":
                if ip is None:
                    return True
                continue
            try:
                if ip is not None and ip in ipaddress.ip_network(token, strict=False):
                    return True
            except (ValueError, TypeError):
                continue
        return False


# ------------------------------------------------------------------------------- parsing


def _split_lines(data: bytes) -> list[bytes]:
    """Lines with their `\\n` kept; only `\\n` ends a line, as for Dovecot."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _text(line: bytes) -> str:
    return line.decode("utf-8", "surrogateescape").rstrip("\n").rstrip("\r")


def _is_skipped(text: str) -> bool:
    stripped = text.strip()
    return not stripped or stripped.startswith("#")


def _line_user(text: str) -> str | None:
    """The user a line defines, or None for comments and blank lines."""
    if _is_skipped(text):
        return None
    return text.split(":", 1)[0]


def _parse_extra(text: str) -> tuple[dict[str, str], list[str]]:
    extra: dict[str, str] = {}
    bad: list[str] = []
    for token in text.split():
        key, _, value = token.partition("=")
        if not key:
            bad.append(token)
            continue
        extra[key] = value
    return extra, bad


def _parse_id(label: str, value: str) -> tuple[int | None, str | None]:
    """uid/gid field: a number, or a system user/group name as Dovecot allows; 0 is refused.

    Dovecot skips users with uid or gid 0 (mail must not be handled as root); so do we.
    """
    if value == "":
        return None, None
    if value.isdigit():
        number = int(value)
    else:
        try:
            number = pwd.getpwnam(value).pw_uid if label == "uid" else grp.getgrnam(value).gr_gid
        except KeyError:
            kind = "user" if label == "uid" else "group"
            return None, f"{label} {value!r} is neither a number nor a system {kind}"
    if number == 0:
        return None, f"{label} 0 (root) is refused, as Dovecot refuses it"
    return number, None


def parse_passwd(
    data: bytes, path: str = "passwd-file"
) -> tuple[dict[str, UserRecord], list[UserRecord], list[Problem]]:
    """(users by name, users in file order, problems).  The first line for a user wins."""
    by_name: dict[str, UserRecord] = {}
    order: list[UserRecord] = []
    problems: list[Problem] = []

    def problem(lineno: int, message: str, fix: str) -> None:
        problems.append(Problem(path, f"line {lineno}", message, fix))

    for lineno, raw in enumerate(_split_lines(data), start=1):
        text = _text(raw)
        if _is_skipped(text):
            continue
        if ":" not in text:
            problem(lineno, f"{text.strip()[:40]!r} has no ':' after the user name",
                    f"write the line as {_LINE_FORMAT}")
            continue
        fields = text.split(":", 7)
        fields += [""] * (8 - len(fields))
        name, password, uid_s, gid_s, gecos, home, shell, extra_s = fields
        if not name or name != name.strip():
            problem(lineno, "the user name is empty or has spaces around it",
                    "put the user name at the very start of the line, before the first ':'")
            continue
        ids: dict[str, int | None] = {}
        bad_id = False
        for label, value in (("uid", uid_s), ("gid", gid_s)):
            number, why = _parse_id(label, value)
            if why:
                problem(lineno, f"user {name}: {why}; this user cannot log in",
                        f"write a numeric {label} other than 0 (see `id USER`), or leave the field empty")
                bad_id = True
            ids[label] = number
        if bad_id:
            continue
        extra, bad_tokens = _parse_extra(extra_s)
        for token in bad_tokens:
            problem(lineno, f"user {name}: extra field {token!r} has no name",
                    "write extra fields as key=value separated by spaces")
        if name in by_name:
            first = by_name[name].line
            problem(lineno, f"user {name} is already defined on line {first}; this line is ignored",
                    f"delete one of the two lines (`retrieval passwd del {name}` removes both)")
            continue
        record = UserRecord(name, password, ids["uid"], ids["gid"], gecos, home, shell,
                            extra, line=lineno)
        if password:
            why = stored_problem(password)
            if why is not None:
                problem(lineno, f"user {name}: {why}; this user cannot log in",
                        f"set a new password with `retrieval passwd set {name}`")
            elif "nopassword" in extra:
                problem(lineno, f"user {name}: 'nopassword' is ignored because a password is set",
                        "remove 'nopassword' or empty the password field")
        elif "nopassword" not in extra:
            problem(lineno, f"user {name}: the password field is empty; this user cannot log in",
                    f"set a password with `retrieval passwd set {name}`")
        by_name[name] = record
        order.append(record)
    return by_name, order, problems


# ------------------------------------------------------------------------------- reading


class PasswdFile:
    """A passwd-file, re-read whenever it changes on disk.  Safe to use from threads."""

    def __init__(self, path: str | os.PathLike[str], default_scheme: str = DEFAULT_SCHEME) -> None:
        self.path = os.fspath(path)
        self.default_scheme = canonical_scheme(default_scheme)  # fail early on a typo
        self._lock = threading.Lock()
        self._signature: tuple[int, ...] | None = None
        self._by_name: dict[str, UserRecord] = {}
        self._order: list[UserRecord] = []
        self._problems: list[Problem] = []
        self._dummy_like: str | None = None
        self._loaded = False

    # -- cache

    def _refresh(self) -> None:
        """Re-read if (inode, size, mtime, ctime) changed: one stat per call when it did not."""
        try:
            st = os.stat(self.path)
            signature: tuple[int, ...] | None = (
                st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
            )
        except OSError as exc:
            with self._lock:
                self._set_unreadable(exc)
            return
        with self._lock:
            if self._loaded and signature == self._signature:
                return
            try:
                with open(self.path, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    data = fh.read()
            except OSError as exc:
                self._set_unreadable(exc)
                return
            self._by_name, self._order, self._problems = parse_passwd(data, self.path)
            self._signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            self._loaded = True
            self._dummy_like = next(
                (r.password for r in self._order
                 if r.password and _same_scheme(r.password, self.default_scheme)),
                None,
            )

    def _set_unreadable(self, exc: OSError) -> None:
        """Fail closed: a missing or unreadable file means no users, and say why."""
        self._by_name, self._order = {}, []
        reason = exc.strerror or str(exc)
        self._problems = [Problem(self.path, "file", f"cannot read the passwd file: {reason}",
                                  "check that the file exists and that the server user may read it")]
        self._signature = None
        self._loaded = True

    # -- queries

    def _state(self) -> tuple[dict[str, UserRecord], list[UserRecord], list[Problem], str | None]:
        """One consistent view of the file, refreshed with at most one stat."""
        self._refresh()
        with self._lock:
            return self._by_name, self._order, self._problems, self._dummy_like

    def lookup(self, name: str) -> UserRecord | None:
        return self._state()[0].get(name)

    def users(self) -> list[UserRecord]:
        return list(self._state()[1])

    def problems(self) -> list[Problem]:
        return list(self._state()[2])

    def dummy_hash(self) -> str:
        """What unknown users are checked against: default scheme, cost of a real user if any."""
        return dummy_hash(self.default_scheme, like=self._state()[3])

    def verify(self, name: str, password: str | bytes) -> UserRecord | None:
        """The user's record if `password` is right, else None.  BLOCKING: slow by design.

        Unknown users, users without a usable hash and wrong passwords all return None
        after one hash computation of the same cost, so timing does not tell them apart.
        """
        by_name, _, _, like = self._state()
        record = by_name.get(name)
        if record is not None and not record.password and record.nopassword:
            return record
        if record is None or not record.password or stored_problem(record.password) is not None:
            verify_password_isolated(password, dummy_hash(self.default_scheme, like=like))
            return None
        return record if verify_password_isolated(password, record.password) else None

    def verify_deferred(self, name: str, password: str | bytes) -> Deferred[UserRecord | None]:
        """`verify` in the reactor's thread pool, so a bcrypt check never stalls the reactor."""
        from twisted.internet import threads

        return threads.deferToThread(self.verify, name, password)

    # -- writing (admin command)

    def add_user(self, name: str, password: str | bytes | None = None, **kwargs: object) -> UserRecord:
        kwargs.setdefault("scheme", self.default_scheme)
        return add_user(self.path, name, password, **kwargs)  # type: ignore[arg-type]

    def set_password(self, name: str, password: str | bytes | None = None, **kwargs: object) -> None:
        kwargs.setdefault("scheme", self.default_scheme)
        set_password(self.path, name, password, **kwargs)  # type: ignore[arg-type]

    def delete_user(self, name: str) -> None:
        delete_user(self.path, name)


def _same_scheme(stored: str, scheme: str) -> bool:
    try:
        return canonical_scheme(scheme_of(stored)) == canonical_scheme(scheme)
    except ValueError:
        return False


# ------------------------------------------------------------------------------- writing


def _check_name(name: str) -> None:
    if not name or any(c in name for c in ":#") or any(c.isspace() or ord(c) < 32 for c in name):
        raise PasswdError(
            f"invalid user name {name!r}: it must be non-empty, without ':', '#', spaces or control characters"
        )


def _check_field(label: str, value: str) -> None:
    if ":" in value or "\n" in value or "\r" in value:
        raise PasswdError(f"{label} {value!r} must not contain ':' or line breaks")


def _stored_from(password: str | bytes | None, scheme: str, stored: str | None, rounds: int | None = None) -> str:
    if (password is None) == (stored is None):
        raise PasswdError("give either a password or an already hashed value")
    if stored is None:
        if isinstance(password, str) and "\0" in password:
            raise PasswdError("the password contains a NUL character")
        try:
            stored = hash_password(password or "", scheme, rounds=rounds)
        except ValueError as exc:  # unknown scheme, rounds out of range
            raise PasswdError(str(exc)) from None
    if any(c in stored for c in ":\n\r"):
        raise PasswdError(
            "the stored password would contain ':' or a line break, which the file format cannot hold; "
            "use a hashing scheme, or PLAIN.B64 for a plain password"
        )
    return stored


def format_line(record: UserRecord) -> str:
    """The file line for `record` (without newline), trailing empty fields left out."""
    extra = " ".join(f"{k}={v}" if v else k for k, v in record.extra.items())
    fields = [
        record.name, record.password,
        "" if record.uid is None else str(record.uid),
        "" if record.gid is None else str(record.gid),
        record.gecos, record.home, record.shell, extra,
    ]
    while len(fields) > 2 and fields[-1] == "":
        fields.pop()
    return ":".join(fields)


def _rewrite(path: str | os.PathLike[str], edit: Callable[[list[bytes]], list[bytes]], *, create: bool) -> None:
    """Apply `edit` to the file's lines atomically, under an exclusive lock.

    The lock is taken on the file itself; since a rename replaces the inode, a writer that
    waited re-checks that it holds the lock of the file now at `path`, and retries if not.
    """
    real = os.path.realpath(os.fspath(path))  # keep a symlinked passwd-file a symlink
    directory = os.path.dirname(real) or "."
    while True:
        created = False
        try:
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                raise NoSuchUserError(f"{path} does not exist") from None
            try:
                fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL, 0o600)
                created = True
            except FileExistsError:
                continue  # another writer made it first
            except OSError as exc:
                raise PasswdError(f"cannot create {path}: {exc.strerror}") from None
        except OSError as exc:
            raise PasswdError(f"cannot open {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                now = os.stat(real)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                continue  # replaced while we waited: lock the new one
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            data = b"".join(chunks)
            new_lines = edit(_split_lines(data))
            new_data = b"".join(new_lines)
            if new_data == data:
                return
            mode = 0o600 if created else stat.S_IMODE(st.st_mode)
            _write_atomically(real, directory, new_data, mode, st.st_uid, st.st_gid)
            return
        finally:
            os.close(fd)


def _write_atomically(real: str, directory: str, data: bytes, mode: int, uid: int, gid: int) -> None:
    tmp_fd, tmp_path = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(real) + ".", suffix=".tmp")
    try:
        os.fchmod(tmp_fd, mode)
        try:
            os.fchown(tmp_fd, uid, gid)  # keep root:dovecot 0640 as it was
        except PermissionError:
            pass
        view = memoryview(data)
        while view:
            view = view[os.write(tmp_fd, view) :]
        os.fsync(tmp_fd)
        os.close(tmp_fd)
        tmp_fd = -1
        os.replace(tmp_path, real)
        tmp_path = ""
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp_fd >= 0:
            os.close(tmp_fd)
        if tmp_path:
            try:
                os.unlink(tmp_path)
            except FileNotFoundError:
                pass


def _user_lines(lines: Iterable[bytes], name: str) -> list[int]:
    return [i for i, line in enumerate(lines) if _line_user(_text(line)) == name]


def add_user(
    path: str | os.PathLike[str],
    name: str,
    password: str | bytes | None = None,
    *,
    scheme: str = DEFAULT_SCHEME,
    stored: str | None = None,
    rounds: int | None = None,
    uid: int | None = None,
    gid: int | None = None,
    gecos: str = "",
    home: str = "",
    shell: str = "",
    extra: Mapping[str, str] | None = None,
) -> UserRecord:
    """Append a user (creating the file with mode 0600 if needed).  UserExistsError if present."""
    _check_name(name)
    for label, value in (("gecos", gecos), ("home", home), ("shell", shell)):
        _check_field(label, value)
    for key, value in (extra or {}).items():
        if not key or "=" in key or any(c.isspace() for c in key + value):
            raise PasswdError(f"extra field {key}={value} must be key=value without spaces")
    for label, value in (("uid", uid), ("gid", gid)):
        if value is not None and value <= 0:
            raise PasswdError(f"{label} must be a number above 0 (Dovecot refuses root)")
    record = UserRecord(name, _stored_from(password, scheme, stored, rounds), uid, gid, gecos, home,
                        shell, extra or {})
    line = (format_line(record) + "\n").encode("utf-8", "surrogateescape")

    def edit(lines: list[bytes]) -> list[bytes]:
        if _user_lines(lines, name):
            raise UserExistsError(f"user {name} already exists in {path}")
        if lines and not lines[-1].endswith(b"\n"):
            lines[-1] += b"\n"
        return lines + [line]

    _rewrite(path, edit, create=True)
    return record


def set_password(
    path: str | os.PathLike[str],
    name: str,
    password: str | bytes | None = None,
    *,
    scheme: str = DEFAULT_SCHEME,
    stored: str | None = None,
    rounds: int | None = None,
) -> None:
    """Replace the password field of `name`'s line, leaving every other byte alone."""
    new = _stored_from(password, scheme, stored, rounds).encode("utf-8", "surrogateescape")

    def edit(lines: list[bytes]) -> list[bytes]:
        found = _user_lines(lines, name)
        if not found:
            raise NoSuchUserError(f"user {name} does not exist in {path}")
        i = found[0]  # the line in effect; later duplicates are ignored by readers
        head, _, rest = lines[i].partition(b":")
        _, colon, tail = rest.partition(b":")
        if not colon:  # "user:password" with nothing after: keep the line ending
            body = rest.rstrip(b"\r\n")
            tail = rest[len(body):]
            lines[i] = head + b":" + new + tail
        else:
            lines[i] = head + b":" + new + b":" + tail
        return lines

    _rewrite(path, edit, create=False)


def delete_user(path: str | os.PathLike[str], name: str) -> None:
    """Remove every line of `name` (so a duplicate cannot take over)."""

    def edit(lines: list[bytes]) -> list[bytes]:
        found = set(_user_lines(lines, name))
        if not found:
            raise NoSuchUserError(f"user {name} does not exist in {path}")
        return [line for i, line in enumerate(lines) if i not in found]

    _rewrite(path, edit, create=False)

"""`retrieval check`: everything an admin can get wrong, found before the server starts."""

from __future__ import annotations

import os
from pathlib import Path

from retrieval.config import Config
from retrieval.problems import Problem


def _writable_dir(path: Path) -> str | None:
    """Why `path` cannot hold our files (it may not exist yet: then its parent must be writable)."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            return f"no existing parent of {path}"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if probe != path and path.exists() and not path.is_dir():
        return f"{path} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable by uid {os.getuid()}"
    return None


def _server_groups(config: Config) -> tuple[int, ...]:
    """The gids the server reads its key as: [server] group, else the [server] user's group."""
    import grp
    import pwd

    gids = []
    if config.server.group:
        try:
            gids.append(grp.getgrnam(config.server.group).gr_gid)
        except KeyError:
            pass
    elif config.server.user:
        try:
            gids.append(pwd.getpwnam(config.server.user).pw_gid)
        except KeyError:
            pass
    return tuple(gids)


def _tls_problems(config: Config) -> list[Problem]:
    """The default pair and each SNI pair: dates, key match, chain order, names, key permissions."""
    from retrieval.net.certs import check_pair

    assert config.tls.cert is not None and config.tls.key is not None
    name = str(config.path)
    groups = _server_groups(config)
    # each pair is checked once, against every server name it serves
    pairs: dict[tuple[Path, Path], list[str]] = {(config.tls.cert, config.tls.key): []}
    for server_name, cert, key in config.tls.sni:
        pairs.setdefault((cert, key), []).append(server_name)
    problems = []
    for (cert, key), names in pairs.items():
        default = ["section [tls]"] if (cert, key) == (config.tls.cert, config.tls.key) else []
        where = ", ".join(default + [f'key tls.sni."{n}"' for n in names])
        for finding in check_pair(cert, key, tuple(names), key_groups=groups):
            problems.append(Problem(name, where, finding.message, finding.fix, finding.warning))
    return problems


def check_all(config: Config) -> list[Problem]:
    name = str(config.path)
    problems: list[Problem] = []

    why = _writable_dir(config.server.state_dir)
    if why:
        problems.append(Problem(name, "key server.state_dir", why, "create it and give it to the server's user"))

    if config.tls.cert is not None and config.tls.key is not None:
        problems.extend(_tls_problems(config))

    if config.smtp.queue_dir is not None:
        why = _writable_dir(config.smtp.queue_dir)
        if why:
            problems.append(Problem(name, "key smtp.queue_dir", why, "create it and give it to the server's user"))
    problems.extend(_queue_checks(config))
    problems.extend(_relayhost_password(config))
    problems.extend(_smtp_checks(config))

    from retrieval.auth.passwd import PasswdFile
    from retrieval.store import location_for

    passwd_path = config.auth.passwd_file
    if not passwd_path.exists():
        problems.append(
            Problem(name, "key auth.passwd_file", f"{passwd_path} does not exist",
                    f"create it with `retrieval passwd add USER --file {passwd_path}`")
        )
        return problems
    passwd = PasswdFile(passwd_path, default_scheme=config.auth.default_scheme)
    problems.extend(passwd.problems())
    from retrieval.smtp.expand import check_aliases

    problems.extend(check_aliases(config, passwd))
    for record in passwd.users():
        where = f"line {record.line}" if record.line else f"user {record.name}"
        try:
            location = location_for(config, record)
        except ValueError as exc:
            problems.append(Problem(str(passwd_path), where, f"user {record.name}: {exc}",
                                    "give the user a home field, or use an absolute mail_location"))
            continue
        targets = [location.root] + ([location.inbox.parent] if location.inbox else [])
        for target in targets:
            why = _writable_dir(target)
            if why:
                problems.append(Problem(str(passwd_path), where, f"user {record.name}: mail location: {why}",
                                        "create the folder and give it to the mail user"))
        if location.format == "maildir" and location.root.exists() and not (location.root / "cur").is_dir():
            if not location.root.is_dir() or any(location.root.iterdir()):
                problems.append(Problem(str(passwd_path), where,
                                        f"user {record.name}: {location.root} exists but is not a Maildir",
                                        "point mail_location at the Maildir, or move the folder away"))
        if location.format == "mbox" and location.root.exists() and not location.root.is_dir():
            problems.append(Problem(str(passwd_path), where,
                                    f"user {record.name}: mbox root {location.root} is not a directory",
                                    'use "mbox:~/mail:INBOX=/var/mail/%u"'))
    return problems


def _relayhost_password(config: Config) -> list[Problem]:
    """The relayhost password file must exist, hold something, and be readable by its owner only."""
    path = config.smtp.relayhost_password_file
    if path is None:
        return []
    name = str(config.path)
    key = "key smtp.relayhost_password_file"
    try:
        st = path.stat()
        text = path.read_text().strip()
    except OSError as exc:
        return [Problem(name, key, f"{path} cannot be read: {exc.strerror}", "create it holding only the password, mode 0600")]
    problems = []
    if st.st_mode & 0o077:
        problems.append(Problem(name, key, f"{path} is readable by others (mode {st.st_mode & 0o777:04o})",
                                f"chmod 600 {path}"))
    if not text:
        problems.append(Problem(name, key, f"{path} is empty", "write the relayhost password into it"))
    return problems


def _queue_checks(config: Config) -> list[Problem]:
    """What sits in the queue that an admin should look at: unreadable entries, stuck drops."""
    from retrieval.smtp.delivery import queue_for

    queue = queue_for(config)
    name = str(config.path)
    problems = []
    corrupt = queue.ids("corrupt")
    if corrupt:
        problems.append(Problem(name, f"queue {queue.root}", f"{len(corrupt)} unreadable queue file(s) in corrupt/",
                                "look at them with `retrieval queue show ID`, then delete or re-send them"))
    maildrop = queue.root / "maildrop"
    if maildrop.is_dir() and (maildrop.stat().st_mode & 0o7777) != 0o1733:
        problems.append(Problem(name, f"queue {maildrop}", "mode is not 1733: local users cannot use sendmail",
                                f"chmod 1733 {maildrop}"))
    return problems


def _smtp_checks(config: Config) -> list[Problem]:
    """The access table parses; the content filter's program exists."""
    name = str(config.path)
    smtp = config.smtp
    problems: list[Problem] = []
    if smtp.access is not None:
        from retrieval.smtp.access import AccessTable

        if not smtp.access.is_file():
            problems.append(Problem(name, "key smtp.access", f"{smtp.access} does not exist",
                                    "create it (an empty file is fine) or remove the key"))
        else:
            problems.extend(AccessTable(smtp.access, smtp.recipient_delimiter).problems)
    if smtp.content_filter:
        import shlex
        import shutil

        program = shlex.split(smtp.content_filter)[0]
        if shutil.which(program) is None:
            problems.append(Problem(name, "key smtp.content_filter", f"{program} is not an executable program",
                                    "install it (e.g. apt-get install spamc) or give its full path"))
    if smtp.greet_pause and smtp.greet_pause >= smtp.idle_timeout:
        problems.append(Problem(name, "key smtp.greet_pause", "greet_pause is not shorter than idle_timeout",
                                "a few seconds are enough, e.g. greet_pause = 3"))
    return problems

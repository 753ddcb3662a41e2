"""Bind as root, then become the mail user."""

from __future__ import annotations

import grp
import os
import pwd


def give_to(path, user: str, group: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """The state folder we created as root belongs to the user we become (as StateDirectory=)."""
    if os.getuid() != 0:
        return
    entry = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    for dirpath, _dirs, files in os.walk(path):
        os.chown(dirpath, entry.pw_uid, gid)
        for name in files:
            os.chown(os.path.join(dirpath, name), entry.pw_uid, gid)


def drop_privileges(user: str, group: str | None = None) -> None:
    """Switch to `user` (and its primary group, or `group`); no-op when not root."""
    if os.getuid() != 0:
        return
    entry = pwd.getpwnam(user)
    gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir


# Modules the sessions import on first use. After the drop the mail user may not be
# able to read the Python installation (a Python under /root, a 0700 virtualenv):
# import them while we still can.
PRELOAD = (
    "retrieval.imap.mailboxes",
    "retrieval.imap.messages",
    "retrieval.imap.fetch",
    "retrieval.imap.search",
    "retrieval.mime.message",
    "retrieval.mime.encoded",
    "retrieval.mime.cte",
    "retrieval.mime.textsearch",
    "retrieval.store.maildir",
    "retrieval.store.mbox",
    "retrieval.store.deliver",
    "retrieval.auth.schemes",
    "retrieval.smtp.local",
    "retrieval.smtp.policy",
    "sqlite3",
    "fcntl",
    "hashlib",
    "hmac",
    "email.utils",
    "email.header",
    "encodings.idna",
    "encodings.latin_1",
    "encodings.iso8859_1",
    "encodings.utf_16_be",
    "encodings.cp1252",
    "concurrent.futures.process",
    "multiprocessing.spawn",
)


def preload() -> None:
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass

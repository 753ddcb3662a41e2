"""Bind as root, then become the mail user."""

from __future__ import annotations

import grp
import os
import pwd


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

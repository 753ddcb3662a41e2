"""The mail store: one API over Maildir and mbox (see base.py for the contract)."""

from __future__ import annotations

from pathlib import Path

from retrieval.store.base import Changes, FolderStatus, Mailbox, MessageInfo, Store
from retrieval.store.errors import (
    BadMailboxName,
    MailboxExists,
    MailboxNotFound,
    MessageGone,
    StoreError,
    TemporaryFailure,
)
from retrieval.store.index import Index, index_path
from retrieval.store.location import UserLocation, for_user, parse_mail_location

__all__ = [
    "BadMailboxName",
    "Changes",
    "FolderStatus",
    "Mailbox",
    "MailboxExists",
    "MailboxNotFound",
    "MessageGone",
    "MessageInfo",
    "Store",
    "StoreError",
    "TemporaryFailure",
    "open_store",
    "user_location",
]


def user_location(mail_location: str, user: str, home: str, override: str | None = None) -> UserLocation:
    """The user's folders: `userdb_mail` / `mail` extra field in the passwd-file wins, as in Dovecot."""
    return for_user(parse_mail_location(override or mail_location), user, home)


def open_store(
    location: UserLocation,
    user: str,
    state_dir: Path,
    lock_timeout: float = 30.0,
    fsync: bool = True,
) -> Store:
    """Open (creating if needed) a user's store and index."""
    index = Index(index_path(state_dir, user, location.index_dir))
    try:
        if location.format == "maildir":
            from retrieval.store.maildir import MaildirStore

            return MaildirStore(location.root, index, lock_timeout, fsync)
        from retrieval.store.mbox import MboxStore

        return MboxStore(location.root, location.inbox, index, lock_timeout, fsync)
    except BaseException:
        index.close()
        raise


def location_for(config, record) -> UserLocation:  # type: ignore[no-untyped-def]
    """A passwd-file user's folders (`userdb_mail=` overrides the config, as in Dovecot)."""
    override = record.userdb_fields.get("mail") or record.extra.get("mail")
    return user_location(config.store.mail_location, record.name, record.home, override)


def open_user_store(config, record) -> Store:  # type: ignore[no-untyped-def]
    """The store of an authenticated user, with the config's lock and fsync settings."""
    return open_store(
        location_for(config, record),
        record.name,
        config.server.state_dir,
        config.store.lock_timeout,
        config.store.fsync,
    )

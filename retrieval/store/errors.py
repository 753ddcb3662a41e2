"""Store errors: each maps to one protocol answer (NO, -ERR [SYS/TEMP], EX_TEMPFAIL...)."""


class StoreError(Exception):
    """Base class; the message is safe to show a client."""


class BadMailboxName(StoreError):
    pass


class MailboxNotFound(StoreError):
    pass


class MailboxExists(StoreError):
    pass


class MessageGone(StoreError):
    """The message was expunged by someone else meanwhile."""


class TemporaryFailure(StoreError):
    """Lock timeout, disk full, I/O error: try again later; nothing was half-written."""

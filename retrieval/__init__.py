"""retrieval: a POP3/IMAP mail server on Twisted over Maildir and mbox."""

__version__ = "0.1.0"

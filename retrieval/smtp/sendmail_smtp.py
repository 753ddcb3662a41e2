"""`sendmail -bs`: an SMTP conversation on stdin/stdout, as Sendmail and Postfix offer it.

The same sans-IO session the network listeners use, driven by a plain loop:
the local user who runs it is trusted (may relay, no AUTH, no TLS), and what
it hands over goes into the maildrop like any other `sendmail` message.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from retrieval.smtp import session as S
from retrieval.smtp.policy import RecipientPolicy


def serve_stdio(config, queue, stdin: BinaryIO, stdout: BinaryIO) -> int:  # type: ignore[no-untyped-def]
    from retrieval.auth.passwd import PasswdFile
    from retrieval.smtp.maildrop import drop

    smtp = config.smtp
    session = S.SmtpSession(S.Policy(
        hostname=config.server.hostname, max_message_size=smtp.max_message_size,
        max_recipients=smtp.max_recipients, max_errors=smtp.max_errors,
    ))
    recipients = RecipientPolicy.from_config(config, PasswdFile(config.auth.passwd_file))
    pending = list(session.greeting())
    fd = stdin.fileno()
    while True:
        while pending:
            event = pending.pop(0)
            if isinstance(event, S.Send):
                stdout.write(event.data)
                stdout.flush()
            elif isinstance(event, S.Close):
                return 0
            elif isinstance(event, S.CheckRecipient):
                reply, target = recipients.check(event.address, None, authenticated=True)
                pending.extend(session.recipient_done(reply, target))
            elif isinstance(event, S.Deliver):
                env = event.envelope
                try:
                    queue_id = drop(queue.root, env.sender, [r.address for r in env.recipients], event.data)
                    reply = S.Reply(250, "2.0.0", f"Ok: queued as {queue_id}")
                except OSError as exc:
                    reply = S.Reply(451, "4.3.0", f"Error: cannot write to the queue: {exc.strerror}")
                pending.extend(session.deliver_done(reply))
            elif isinstance(event, S.Authenticate):
                pending.extend(session.auth_done(None))
        data = os.read(fd, 65536)
        if not data:
            return 0
        pending.extend(session.feed(data))


__all__ = ["serve_stdio"]

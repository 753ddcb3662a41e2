"""The `retrieval` command: each room registers its own subcommands here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retrieval", description="POP3/IMAP mail server")
    sub = parser.add_subparsers(dest="command", required=True)
    from retrieval import commands
    from retrieval.auth import admin as auth_admin
    from retrieval.smtp import access_admin
    from retrieval.smtp import admin as smtp_admin

    commands.add_parsers(sub)
    auth_admin.add_parsers(sub)
    smtp_admin.add_parsers(sub)
    access_admin.add_parsers(sub)
    return parser


# called by these names (symlinks), we are the sendmail family of commands
_AS = {"sendmail": [], "mailq": ["-bp"], "newaliases": ["-bi"]}


def main(argv: Sequence[str] | None = None) -> int:
    name = os.path.basename(sys.argv[0]) if argv is None else ""
    if name in _AS:
        from retrieval.smtp.admin import sendmail_main

        return sendmail_main(_AS[name] + sys.argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

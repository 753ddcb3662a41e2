"""`retrieval passwd ...`: manage a Dovecot-format passwd-file without a text editor.

    retrieval passwd add  USER --file F [--password-stdin] [--scheme S] [--home DIR] [--uid N --gid N]
    retrieval passwd set  USER --file F [--password-stdin] [--scheme S]
    retrieval passwd del  USER --file F
    retrieval passwd list      --file F
    retrieval passwd check     --file F
    retrieval passwd hash [--scheme S] [--rounds N]      (like `doveadm pw`: password on stdin)

Passwords never go on the command line (they would show in `ps` and shell history): they
come from the terminal (asked twice) or, for scripts, from the first line of stdin.
`list` shows schemes, never hashes.  Every failure is one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from retrieval.auth import schemes
from retrieval.auth.passwd import PasswdError, PasswdFile, add_user, delete_user, set_password

__all__ = ["add_parsers", "main"]


class _Failure(Exception):
    """An admin error: printed as `retrieval passwd: message`, exit code 1."""


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    else:
        try:
            password = getpass.getpass("New password: ")
            again = getpass.getpass("Retype new password: ")
        except EOFError:
            raise _Failure("no password given (use --password-stdin to read it from a pipe)") from None
        if password != again:
            raise _Failure("the passwords do not match")
    if not password:
        raise _Failure("empty password refused")
    return password


def _scheme(args: argparse.Namespace) -> str:
    try:
        schemes.canonical_scheme(args.scheme)
    except schemes.UnknownSchemeError as exc:
        raise _Failure(str(exc)) from None
    return str(args.scheme).strip().upper()


def _cmd_add(args: argparse.Namespace) -> int:
    scheme = _scheme(args)
    if (args.uid is None) != (args.gid is None):
        raise _Failure("give --uid and --gid together")
    extra: dict[str, str] = {}
    for item in args.extra or []:
        key, _, value = item.partition("=")
        extra[key] = value
    password = _read_password(args)
    add_user(args.file, args.user, password, scheme=scheme, rounds=args.rounds, uid=args.uid, gid=args.gid,
             home=args.home or "", extra=extra)
    print(f"added {args.user} ({scheme})", file=sys.stderr)
    return 0


def _cmd_set(args: argparse.Namespace) -> int:
    scheme = _scheme(args)
    if PasswdFile(args.file).lookup(args.user) is None:  # before asking for a password
        raise _Failure(f"user {args.user} does not exist in {args.file}")
    set_password(args.file, args.user, _read_password(args), scheme=scheme, rounds=args.rounds)
    print(f"password of {args.user} changed ({scheme})", file=sys.stderr)
    return 0


def _cmd_del(args: argparse.Namespace) -> int:
    delete_user(args.file, args.user)
    print(f"deleted {args.user}", file=sys.stderr)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    passwd = PasswdFile(args.file)
    problems = passwd.problems()
    if problems and problems[0].where == "file":
        raise _Failure(str(problems[0]))
    for record in passwd.users():
        print(f"{record.name}\t{record.scheme or '(no password)'}")
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    problems = PasswdFile(args.file).problems()
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


def _cmd_hash(args: argparse.Namespace) -> int:
    scheme = _scheme(args)
    if args.password_stdin or not sys.stdin.isatty():
        args.password_stdin = True
    try:
        print(schemes.hash_password(_read_password(args), scheme, rounds=args.rounds))
    except ValueError as exc:
        raise _Failure(str(exc)) from None
    return 0


def _run(func: Any) -> Any:
    """Turn admin errors into one stderr line and exit code 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return int(func(args))
        except (_Failure, PasswdError) as exc:
            print(f"retrieval passwd: {exc}", file=sys.stderr)
            return 1

    return run


def add_parsers(subparsers: Any) -> None:
    """Register `passwd` and its actions on the top-level `retrieval` subparsers."""
    passwd = subparsers.add_parser(
        "passwd", help="manage users in a passwd-file (Dovecot format)",
        description="Manage users in a Dovecot-format passwd-file.",
    )
    actions = passwd.add_subparsers(dest="passwd_action", required=True, metavar="ACTION")

    file_opt = argparse.ArgumentParser(add_help=False)
    file_opt.add_argument("--file", "-f", required=True, metavar="PASSWD",
                          help="the passwd-file (user:{SCHEME}hash:uid:gid:gecos:home:shell:extra)")
    pw_opt = argparse.ArgumentParser(add_help=False)
    pw_opt.add_argument("--password-stdin", action="store_true",
                        help="read the password from the first line of stdin instead of the terminal")
    pw_opt.add_argument("--scheme", "-s", default=schemes.DEFAULT_SCHEME,
                        help=f"hash scheme (default {schemes.DEFAULT_SCHEME}); one of: {', '.join(schemes.SCHEMES)}")
    pw_opt.add_argument("--rounds", "-r", type=int, metavar="N",
                        help="cost like doveadm pw -r (bcrypt log rounds, sha-crypt/PBKDF2 rounds); default: passlib's")

    add = actions.add_parser("add", parents=[file_opt, pw_opt], help="add a user")
    add.add_argument("user")
    add.add_argument("--home", metavar="DIR")
    add.add_argument("--uid", type=int, metavar="N")
    add.add_argument("--gid", type=int, metavar="N")
    add.add_argument("--extra", action="append", metavar="KEY=VALUE",
                     help="extra field such as userdb_mail=maildir:~/Mail (repeatable)")
    add.set_defaults(func=_run(_cmd_add))

    set_ = actions.add_parser("set", parents=[file_opt, pw_opt], help="change a user's password")
    set_.add_argument("user")
    set_.set_defaults(func=_run(_cmd_set))

    del_ = actions.add_parser("del", parents=[file_opt], help="delete a user")
    del_.add_argument("user")
    del_.set_defaults(func=_run(_cmd_del))

    list_ = actions.add_parser("list", parents=[file_opt], help="list users and their schemes")
    list_.set_defaults(func=_run(_cmd_list))

    check = actions.add_parser("check", parents=[file_opt], help="report problems in the file")
    check.set_defaults(func=_run(_cmd_check))

    hash_ = actions.add_parser("hash", parents=[pw_opt], help="print the stored form of a password, like doveadm pw")
    hash_.set_defaults(func=_run(_cmd_hash))


def main(argv: list[str] | None = None) -> int:
    """`python -m retrieval.auth.admin passwd ...`: the same command without the full CLI."""
    parser = argparse.ArgumentParser(prog="retrieval")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

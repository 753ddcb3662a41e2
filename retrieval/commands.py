"""Admin subcommands: serve, check, deliver, aliases, index, config show, demo."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retrieval.config import Config, load_config
from retrieval.problems import Problem, ProblemsError


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("serve", help="run every service the config enables (foreground, logs to stderr)")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="(internal) one worker process of `serve`, on the sockets it passes")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("check", help="validate config, passwd-file, certificates and mail locations")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("deliver", help="deliver one message from stdin (an MDA for Postfix, procmail, .forward)")
    p.add_argument("--config", "-c", required=True)
    p.add_argument("-m", "--mailbox", dest="folder", default=None, help="folder (created if missing)")
    p.add_argument("-f", "--from", dest="sender", default=None, help="envelope sender for Return-Path")
    p.add_argument("user")
    p.set_defaults(func=cmd_deliver)

    p = sub.add_parser("aliases", help="parse the [smtp] aliases file (compile) or also follow every target (check)")
    p.add_argument("action", choices=("compile", "check"))
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=cmd_aliases)

    p = sub.add_parser("index", help="rebuild or inspect a mailbox index")
    p.add_argument("action", choices=("rebuild", "show"))
    p.add_argument("--config", "-c", required=True)
    p.add_argument("user")
    p.add_argument("folder", nargs="?", default=None)
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("inetd", help="serve one connection on fd 0 (inetd, xinetd, systemd Accept=yes)")
    p.add_argument("service", help="imap, imaps, pop3, pop3s, smtp, submission or submissions")
    p.add_argument("--config", "-c", required=True)
    p.set_defaults(func=cmd_inetd)

    p = sub.add_parser("cert", help="certificates")
    cert_sub = p.add_subparsers(dest="cert_command", required=True)
    c = cert_sub.add_parser("selfsigned", help="make a private CA and a server certificate signed by it")
    c.add_argument("--host", required=True, help="the server's name (also: localhost, 127.0.0.1, ::1)")
    c.add_argument("--out", default="certs", help="folder for ca.pem, server.pem, server.key (default certs/)")
    c.add_argument("--days", type=int, default=825)
    c.set_defaults(func=cmd_cert_selfsigned)

    p = sub.add_parser("config", help="show the configuration")
    config_sub = p.add_subparsers(dest="config_command", required=True)
    c = config_sub.add_parser(
        "show", help="every effective setting with its default, as TOML (like postconf); without --config: the defaults"
    )
    c.add_argument("--config", "-c", default=None)
    c.add_argument("-n", dest="only_set", action="store_true", help="only the settings the config file sets (postconf -n)")
    c.set_defaults(func=cmd_config_show)

    p = sub.add_parser("demo", help="write a demo setup (user, certificate, config) into a folder and serve it")
    p.add_argument("--dir", default="demo", help="where to put the demo files (default ./demo)")
    p.add_argument("--no-serve", action="store_true", help="only write the files")
    p.set_defaults(func=cmd_demo)


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ProblemsError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return None


def _passwd(config: Config):  # type: ignore[no-untyped-def]
    from retrieval.auth.passwd import PasswdFile

    return PasswdFile(config.auth.passwd_file, default_scheme=config.auth.default_scheme)


def cmd_check(args: argparse.Namespace) -> int:
    from retrieval.checks import check_all

    try:
        config = load_config(args.config)
    except ProblemsError as exc:
        problems = exc.problems
    else:
        problems = check_all(config)
    for problem in problems:
        print(problem)
    errors = [p for p in problems if not p.warning]
    if errors:
        print(f"{len(errors)} problem(s) found", file=sys.stderr)
        return 1
    if problems:
        print(f"{len(problems)} warning(s)", file=sys.stderr)
    print(f"{args.config}: OK")
    return 0


def cmd_deliver(args: argparse.Namespace) -> int:
    from retrieval.store import location_for
    from retrieval.store.deliver import EX_NOUSER, EX_TEMPFAIL, deliver_message, drop_to_user

    config = _load(args.config)
    if config is None:
        return EX_TEMPFAIL
    data = sys.stdin.buffer.read()
    record = _passwd(config).lookup(args.user)
    if record is None:
        print(f"retrieval deliver: {args.user}: no such user here", file=sys.stderr)
        return EX_NOUSER
    try:
        location = location_for(config, record)
    except ValueError as exc:
        print(f"retrieval deliver: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    drop_to_user(record.uid, record.gid)
    result = deliver_message(
        location,
        record.name,
        data,
        folder=args.folder,
        sender=args.sender,
        lock_timeout=config.store.lock_timeout,
        fsync=config.store.fsync,
    )
    if result.code:
        print(f"retrieval deliver: {args.user}: {result.message}", file=sys.stderr)
    return result.code


def cmd_aliases(args: argparse.Namespace) -> int:
    """Like newaliases: exit 0 when clean, 1 with every problem listed. Nothing is written:
    the server reads the alias file itself whenever it changes (see retrieval.smtp.aliases)."""
    from retrieval.smtp.aliases import AliasTable
    from retrieval.smtp.expand import check_aliases

    config = _load(args.config)
    if config is None:
        return 1
    if config.smtp.aliases is None:
        print(f"{args.config}: no [smtp] aliases file; only the built-in postmaster and MAILER-DAEMON")
        return 0
    table = AliasTable(config.smtp.aliases)
    if args.action == "compile":
        problems = table.problems()
    else:
        problems = check_aliases(config, _passwd(config))
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{config.smtp.aliases}: {len(table.entries())} aliases, OK")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from retrieval.store import open_user_store

    config = _load(args.config)
    if config is None:
        return 1
    record = _passwd(config).lookup(args.user)
    if record is None:
        print(f"{args.user}: no such user", file=sys.stderr)
        return 1
    store = open_user_store(config, record)
    try:
        folders = [args.folder] if args.folder else store.list_folders()
        for name in folders:
            if args.action == "rebuild":
                store.index.drop_mailbox(name)
            box = store.open(name, readonly=True)
            status = box.status()
            print(
                f"{name}: messages={status.messages} uidvalidity={status.uidvalidity} uidnext={status.uidnext}"
                f" highestmodseq={status.highestmodseq} unseen={status.unseen} size={status.size}"
            )
            if args.action == "show" and args.folder:
                for row in box.messages():
                    flags = " ".join(sorted(row.flags))
                    print(f"  uid={row.uid} size={row.size} modseq={row.modseq} flags=({flags}) {row.location}")
            box.close()
    finally:
        store.close()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return _serve_file(args.config)


def _serve_file(path: str) -> int:
    """Load and serve; a certificate that cannot be used is one clear line, not a traceback."""
    config = _load(path)
    if config is None:
        return 1
    from retrieval.net.tls import CertificateError
    from retrieval.serve import serve

    try:
        return serve(config)
    except CertificateError as exc:
        print(f"retrieval serve: {config.path}: [tls]: {exc} (fix: `retrieval check --config {config.path}` "
              "says more)", file=sys.stderr)
        return 1


def cmd_worker(args: argparse.Namespace) -> int:
    import signal

    # a reload passed on while we start must not kill us (SIGHUP's default); a terminal's
    # Ctrl-C reaches the whole process group: the supervisor alone decides how to stop
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = _load(args.config)
    if config is None:
        return 78  # EX_CONFIG: the supervisor stops, it cannot get better by restarting
    from retrieval.serve import worker

    return worker(config)


def cmd_inetd(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 78  # EX_CONFIG
    from retrieval.serve import inetd

    return inetd(config, args.service)


def cmd_cert_selfsigned(args: argparse.Namespace) -> int:
    from retrieval.net.certs import make_ca_signed

    out = Path(args.out)
    make_ca_signed(out, args.host, days=args.days)
    print(f"{out / 'ca.pem'}: the CA (give it to clients that should trust this server)")
    print(f"{out / 'server.pem'}, {out / 'server.key'}: set them as [tls] cert and key")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from retrieval.configshow import render, set_keys

    if args.config is None:
        if args.only_set:
            print("retrieval config show: -n needs --config FILE (without one, every setting is a default)",
                  file=sys.stderr)
            return 2
        config = Config(path=Path("/dev/null"))
        print("# retrieval's built-in defaults")
    else:
        config = _load(args.config)
        if config is None:
            return 1
        what = "settings set in" if args.only_set else "effective settings from"
        print(f"# {what} {config.path}")
    print(render(config, set_keys(config.path) if args.only_set else None), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from retrieval.demo import write_demo

    config_path = write_demo(Path(args.dir))
    print(f"demo config: {config_path}")
    if args.no_serve:
        return 0
    return _serve_file(str(config_path))


__all__ = ["add_parsers", "Problem"]

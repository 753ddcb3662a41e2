"""`retrieval access check`: what the access table (and the relay rules) say, and which line says it."""

from __future__ import annotations

import argparse
import sys


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from retrieval.smtp.admin import DEFAULT_CONFIG, _env_config

    p = sub.add_parser("access", help="the SMTP access table ([smtp] access)")
    access_sub = p.add_subparsers(dest="access_command", required=True)
    c = access_sub.add_parser(
        "check",
        help="show the decision for a key, or for a whole client/sender/recipient combination",
        description="With KEY: the rule that matches it as a client (IP, host name), a sender and a recipient "
                    "(address, user@, domain, <>). With --client/--from/--to: the answers the server would give "
                    "at MAIL and RCPT (DNSBL lookups are not made). Exit status 1 when something is refused.",
    )
    c.add_argument("key", nargs="?", help="an IP, a host or domain name, an address, or <>")
    c.add_argument("--config", "-c", default=_env_config(),
                   help=f"the config file (default $RETRIEVAL_CONFIG, else {DEFAULT_CONFIG})")
    c.add_argument("--client", help="the client's IP address")
    c.add_argument("--client-name", default="unknown", help="the client's verified host name")
    c.add_argument("--helo", help="what the client said in HELO/EHLO (for helo_checks)")
    c.add_argument("--from", dest="sender", help="the envelope sender (use <> for the null sender)")
    c.add_argument("--to", dest="recipients", action="append", default=[], help="a recipient (repeatable)")
    c.add_argument("--auth", action="store_true", help="the client authenticated")
    c.set_defaults(func=cmd_access_check)


def _describe(rule) -> str:  # type: ignore[no-untyped-def]
    return f"{rule.action} ({rule})" if rule is not None else "no entry"


def cmd_access_check(args: argparse.Namespace) -> int:
    from retrieval.commands import _load, _passwd
    from retrieval.smtp.access import refusal
    from retrieval.smtp.policy import Peer, RecipientPolicy

    if not args.key and not (args.client or args.sender is not None or args.recipients):
        print("retrieval access check: give a KEY, or --client/--from/--to", file=sys.stderr)
        return 2
    config = _load(args.config)
    if config is None:
        return 2
    policy = RecipientPolicy.from_config(config, _passwd(config))
    table = policy.access
    if table is None:
        print(f"{config.path}: [smtp] access is not set: no access table", file=sys.stderr)
        if args.key:
            return 2
    else:
        for problem in table.problems:
            print(problem, file=sys.stderr)
        if table.unavailable:
            print(f"every MAIL gets 451 4.3.0 Temporary lookup failure: {table.unavailable}")
            return 1
    refused = False
    if args.key and table is not None:
        key = args.key
        roles = ["client", "sender", "recipient"]
        if "@" in key or key == "<>":
            roles = ["sender", "recipient"]
        for role in roles:
            rule = table.lookup(role, key)
            line = f"{role} {key}: {_describe(rule)}"
            if rule is not None and rule.action in ("REJECT", "ERROR"):
                refused = True
                subject = f"[{key}]" if role == "client" else key
                line += " -> " + refusal(rule, role, subject).render().decode().rstrip()
            print(line)
    if args.client or args.sender is not None or args.recipients:
        ip = args.client or ""
        peer = Peer(ip, args.client_name, args.helo, args.auth)
        sender = "" if args.sender in ("<>", "") else args.sender
        if sender is not None:
            reply = policy.check_sender(sender, peer)
            refused |= not reply.ok
            print(f"MAIL FROM:<{sender}> -> {reply.render().decode().rstrip()}")
            for role, rule in policy.access_step(peer, sender=sender).rules:
                print(f"  {role}: {_describe(rule)}")
        for recipient in args.recipients:
            reply, target = policy.check(recipient, ip, args.auth, sender, peer)
            refused |= not reply.ok
            print(f"RCPT TO:<{recipient}> -> {reply.render().decode().rstrip()}" + (f"  [{target}]" if target else ""))
            for role, rule in policy.access_step(peer, sender, recipient).rules:
                print(f"  {role}: {_describe(rule)}")
        if config.smtp.dnsbl and not (args.auth or policy.trusted(ip)):
            print(f"(DNSBL zones not consulted here: {', '.join(config.smtp.dnsbl)})")
    return 1 if refused else 0

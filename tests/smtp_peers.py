"""Remote peers for relay tests: a DNS server and SMTP sinks on loopback, in their own process.

    from smtp_peers import RemotePeers, mx_zone

    zone = mx_zone("example.test", [(10, "127.0.0.2"), (20, "127.0.0.3")])
    with RemotePeers(tmp_path, zone) as peers:
        peers.sink("127.0.0.2")                     # listening, accepting everything
        peers.sink("127.0.0.3", greeting=421)       # answers 421 and hangs up
        peers.down("127.0.0.3")                     # no listener: connection refused
        site.write_config(smtp_extra=peers.smtp_config())   # [smtp] dns_servers, remote_port, timeouts
        ... run the relay ...
        [m] = peers.sink("127.0.0.2").messages()    # m.sender, m.recipients, m.data (bytes), m.tls, m.auth ...

The DNS server is an authoritative twisted.names server answering from the
zone the test gives (MX, A, AAAA, CNAME records; "SERVFAIL" for a name that
should fail); names outside it get NXDOMAIN. Every sink listens on its own
127.0.0.x address (Linux answers all of 127/8) on one shared port, so the relay
only needs `remote_port`. Sinks write every transaction (envelope and data)
to files before answering the end of DATA, so a test reads them right after
the relay reports success. The peers run in a child process with its own
reactor, controlled through its stdin (one JSON command a line, "ok" back),
so they serve sync pytest tests as well as a relay running in a subprocess.

Sink options (peers.sink(ip, **options); a later call with options reconfigures it):
    greeting=220      421 / 554: answer that and close; 0: accept the connection and say nothing
    ehlo=True         False: EHLO gets 502, the client must use HELO
    pipelining=True   offer PIPELINING
    starttls=False    offer STARTTLS (self-signed certificate); "broken": answer 220, then no TLS but garbage
    auth=None         ("user", "password"): offer AUTH PLAIN LOGIN, inside TLS only
    size=10485760     SIZE limit offered (0: SIZE without limit, None: no SIZE)
    dsn=True, smtputf8=True, eightbitmime=True
    mail=250          reply code to MAIL FROM
    rcpt={}           address -> reply code (e.g. {"bob@example.test": 550}); others 250
    data=250          reply code to the end of DATA
    data_delay=0      seconds to wait before that reply (to hold connections open)
"""

from __future__ import annotations

import base64
import json
import os
import select
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

Zone = dict[str, Any]


def mx_zone(domain: str, mx: list[tuple[int, str]]) -> Zone:
    """A zone where `domain` has one MX per (preference, ip), hosts named mx-127-0-0-2.<domain>."""
    zone: Zone = {domain: []}
    for preference, ip in mx:
        host = f"mx-{ip.replace('.', '-').replace(':', '-')}.{domain}"
        zone[domain].append(("MX", preference, host))
        zone.setdefault(host, []).append(("AAAA" if ":" in ip else "A", ip))
    return zone


@dataclass
class Received:
    """One transaction a sink took."""

    sender: str
    recipients: list[str]
    data: bytes
    helo: str
    esmtp: bool
    tls: bool
    auth: str | None
    mail_params: str
    rcpt_params: list[str]
    max_commands_per_read: int  # >1 only when the client pipelined
    concurrent: int  # sessions the sink had open when the data ended
    raw: dict = field(default_factory=dict, repr=False)


class Sink:
    def __init__(self, peers: RemotePeers, ip: str) -> None:
        self.peers = peers
        self.ip = ip
        self.folder = peers.base / "sinks" / ip

    def messages(self) -> list[Received]:
        """Every transaction received so far, oldest first."""
        out = []
        if not self.folder.is_dir():
            return out
        for path in sorted(self.folder.glob("*.json")):
            record = json.loads(path.read_text())
            out.append(Received(
                sender=record["mail_from"], recipients=record["accepted"],
                data=path.with_suffix(".eml").read_bytes(), helo=record["helo"], esmtp=record["esmtp"],
                tls=record["tls"], auth=record["auth"], mail_params=record["mail_params"],
                rcpt_params=record["rcpt_params"], max_commands_per_read=record["max_commands_per_read"],
                concurrent=record["concurrent"], raw=record,
            ))
        return out

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Received]:
        """The messages, once there are at least `count` (for a relay that delivers in the background)."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            messages = self.messages()
            if len(messages) >= count or time.monotonic() > deadline:
                assert len(messages) >= count, f"{self.ip}: {len(messages)} of {count} messages after {timeout}s"
                return messages
            time.sleep(0.05)

    def configure(self, **options: Any) -> Sink:
        self.peers._command({"op": "sink", "ip": self.ip, "options": options})
        return self


class RemotePeers:
    def __init__(self, base: Path, zone: Zone | None = None) -> None:
        self.base = Path(base) / "peers"
        self.base.mkdir(parents=True, exist_ok=True)
        self.dns_port = _free_port(socket.SOCK_DGRAM)
        self.smtp_port = _free_port(socket.SOCK_STREAM)
        self._zone = zone or {}
        self._proc: subprocess.Popen | None = None

    # -- life --------------------------------------------------------------------

    def start(self) -> RemotePeers:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(self.base), str(self.dns_port), str(self.smtp_port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.base / "peers.log", "ab"), env=env,
        )
        self._command({"op": "hello"})
        self.zone(self._zone)
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        try:
            self._command({"op": "stop"})
        except (OSError, RuntimeError):
            pass
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def __enter__(self) -> RemotePeers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control -------------------------------------------------------------------

    @property
    def dns_server(self) -> str:
        return f"127.0.0.1:{self.dns_port}"

    def smtp_config(self, command_timeout: float = 10.0, connect_timeout: float = 5.0) -> str:
        """Lines for the relay's [smtp] section: use our DNS and our sinks' port."""
        return (f'dns_servers = ["{self.dns_server}"]\nremote_port = {self.smtp_port}\n'
                f"command_timeout = {command_timeout}\nconnect_timeout = {connect_timeout}\n")

    def zone(self, zone: Zone) -> None:
        """Replace the DNS zone."""
        self._zone = zone
        self._command({"op": "zone", "zone": zone})

    def sink(self, ip: str, **options: Any) -> Sink:
        """The sink on `ip`; started (with `options`) if it is not listening, reconfigured if options are given."""
        sink = Sink(self, ip)
        self._command({"op": "sink", "ip": ip, "options": options, "keep": not options})
        return sink

    def down(self, ip: str) -> None:
        """Stop listening on `ip` (connections there are refused); `sink(ip)` brings it back."""
        self._command({"op": "down", "ip": ip})

    def all_messages(self) -> dict[str, list[Received]]:
        folder = self.base / "sinks"
        return {p.name: Sink(self, p.name).messages() for p in sorted(folder.iterdir())} if folder.is_dir() else {}

    def _command(self, command: dict) -> None:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None, "peers not started"
        proc.stdin.write(json.dumps(command).encode() + b"\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"ok":
            log = (self.base / "peers.log").read_text(errors="replace")
            raise RuntimeError(f"peers: {command['op']} failed: {line!r}\n{log[-3000:]}")


def _free_port(kind: int) -> int:
    """A port free on 127.0.0.1 (for SMTP: also on 127.0.0.2..9, where sinks go)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if kind == socket.SOCK_DGRAM:
            try:
                with socket.socket() as t:
                    t.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
        try:
            for i in range(2, 10):
                with socket.socket() as t:
                    t.bind((f"127.0.0.{i}", port))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port")


# == the child process ===============================================================


def _serve(base: Path, dns_port: int, smtp_port: int) -> None:  # pragma: no cover - runs in the child
    from twisted.internet import defer, reactor, stdio
    from twisted.names import common, dns, server
    from twisted.protocols.basic import LineReceiver

    zone: dict[bytes, Any] = {}

    def load_zone(spec: Zone) -> None:
        zone.clear()
        for name, records in spec.items():
            key = name.lower().rstrip(".").encode("idna")
            if records == "SERVFAIL":
                zone[key] = "SERVFAIL"
                continue
            out = []
            for record in records:
                kind, *args = record
                if kind == "MX":
                    target = args[1].rstrip(".").encode("idna")
                    out.append(dns.Record_MX(args[0], target, ttl=60))
                elif kind == "A":
                    out.append(dns.Record_A(args[0], ttl=60))
                elif kind == "AAAA":
                    out.append(dns.Record_AAAA(args[0], ttl=60))
                elif kind == "CNAME":
                    out.append(dns.Record_CNAME(args[0].encode("idna"), ttl=60))
                else:
                    raise ValueError(f"record type {kind}")
            zone[key] = out

    class ZoneResolver(common.ResolverBase):
        def _lookup(self, name, cls, type, timeout):  # type: ignore[no-untyped-def]
            key = name.lower().rstrip(b".")
            records = zone.get(key)
            if records is None:
                return defer.fail(dns.DomainError(name))
            if records == "SERVFAIL":
                return defer.fail(RuntimeError(f"SERVFAIL for {name!r} by request"))
            answers = [dns.RRHeader(name, r.TYPE, dns.IN, 60, r, auth=True)
                       for r in records if type in (r.TYPE, dns.ALL_RECORDS)]
            return defer.succeed((answers, [], []))

    factory = server.DNSServerFactory(authorities=[ZoneResolver()])
    reactor.listenUDP(dns_port, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    reactor.listenTCP(dns_port, factory, interface="127.0.0.1")

    from retrieval.net.certs import make_self_signed
    from retrieval.net.tls import server_options

    cert, key = base / "sink.pem", base / "sink.key"
    if not cert.exists():
        make_self_signed(cert, key, "sink.test")
    tls = server_options(cert, key)

    sinks: dict[str, dict] = {}  # ip -> {"options", "port" (listening port or None), "count", "active"}

    defaults = {"greeting": 220, "ehlo": True, "pipelining": True, "starttls": False, "auth": None,
                "size": 10485760, "dsn": True, "smtputf8": True, "eightbitmime": True,
                "mail": 250, "rcpt": {}, "data": 250, "data_delay": 0}

    class SinkSession(LineReceiver):
        delimiter = b"\r\n"
        MAX_LENGTH = 10_000_000

        def __init__(self, ip: str) -> None:
            self.ip = ip
            self.sink = sinks[ip]
            self.opt = self.sink["options"]
            self.tls = False
            self.helo = ""
            self.esmtp = False
            self.auth: str | None = None
            self.sasl: list[str] | None = None
            self.in_data = False
            self.max_per_read = 0
            self.reset()

        def reset(self) -> None:
            self.mail_from: str | None = None
            self.mail_params = ""
            self.accepted: list[str] = []
            self.rcpt_params: list[str] = []
            self.lines: list[bytes] = []

        def reply(self, text: str) -> None:
            self.transport.write(text.encode() + b"\r\n")

        def connectionMade(self) -> None:
            self.sink["active"] += 1
            greeting = self.opt["greeting"]
            if greeting == 0:
                return
            if greeting != 220:
                self.reply(f"{greeting} {str(greeting)[0]}.3.2 {self.ip} not taking mail now")
                self.transport.loseConnection()
                return
            self.reply(f"220 sink-{self.ip} ESMTP")

        def connectionLost(self, reason=None) -> None:  # type: ignore[no-untyped-def]
            self.sink["active"] -= 1

        def dataReceived(self, data: bytes) -> None:
            if not self.in_data:
                self.max_per_read = max(self.max_per_read, data.count(b"\r\n"))
            super().dataReceived(data)

        def lineReceived(self, line: bytes) -> None:
            if self.in_data:
                return self.data_line(line)
            if self.sasl is not None:
                return self.sasl_line(line)
            text = line.decode("utf-8", "replace")
            verb, _, arg = text.partition(" ")
            handler = getattr(self, "do_" + verb.upper(), None)
            if handler is None:
                return self.reply("500 5.5.2 command not recognized")
            handler(arg)

        def do_EHLO(self, arg: str) -> None:
            if not self.opt["ehlo"]:
                return self.reply("502 5.5.1 EHLO not implemented")
            self.helo, self.esmtp = arg, True
            self.reset()
            o = self.opt
            ext = ["ENHANCEDSTATUSCODES"]
            if o["pipelining"]:
                ext.append("PIPELINING")
            if o["size"] is not None:
                ext.append(f"SIZE {o['size']}" if o["size"] else "SIZE")
            if o["eightbitmime"]:
                ext.append("8BITMIME")
            if o["dsn"]:
                ext.append("DSN")
            if o["smtputf8"]:
                ext.append("SMTPUTF8")
            if o["starttls"] and not self.tls:
                ext.append("STARTTLS")
            if o["auth"] and self.tls:
                ext.append("AUTH PLAIN LOGIN")
            lines = [f"sink-{self.ip}"] + ext
            self.reply("\r\n".join(f"250{'-' if i < len(lines) - 1 else ' '}{t}" for i, t in enumerate(lines)))

        def do_HELO(self, arg: str) -> None:
            self.helo, self.esmtp = arg, False
            self.reset()
            self.reply(f"250 sink-{self.ip}")

        def do_STARTTLS(self, arg: str) -> None:
            if not self.opt["starttls"] or self.tls:
                return self.reply("502 5.5.1 no STARTTLS here")
            self.reply("220 2.0.0 go ahead")
            if self.opt["starttls"] == "broken":
                self.transport.write(b"this is not a TLS server hello\r\n" * 20)
                self.transport.loseConnection()
                return
            self.transport.startTLS(tls)
            self.tls = True
            self.helo = ""
            self.reset()

        def do_AUTH(self, arg: str) -> None:
            if not (self.opt["auth"] and self.tls):
                return self.reply("503 5.5.1 no AUTH here")
            mech, _, initial = arg.partition(" ")
            mech = mech.upper()
            if mech == "PLAIN":
                self.sasl = ["PLAIN"]
                if initial:
                    return self.sasl_line(initial.encode())
                return self.reply("334 ")
            if mech == "LOGIN":
                self.sasl = ["LOGIN"]
                return self.reply("334 VXNlcm5hbWU6")
            self.reply("504 5.5.4 mechanism not supported")

        def sasl_line(self, line: bytes) -> None:
            assert self.sasl is not None
            try:
                value = base64.b64decode(line, validate=True).decode()
            except Exception:
                self.sasl = None
                return self.reply("501 5.5.2 bad base64")
            if self.sasl[0] == "LOGIN" and len(self.sasl) == 1:
                self.sasl.append(value)
                return self.reply("334 UGFzc3dvcmQ6")
            if self.sasl[0] == "LOGIN":
                user, password = self.sasl[1], value
            else:
                _, user, password = (value.split("\0") + ["", "", ""])[:3]
            self.sasl = None
            if [user, password] == list(self.opt["auth"]):
                self.auth = user
                return self.reply("235 2.7.0 authenticated")
            self.reply("535 5.7.8 authentication failed")

        def do_MAIL(self, arg: str) -> None:
            if not self.helo:
                return self.reply("503 5.5.1 EHLO first")
            path, _, params = arg[5:].partition(">")
            code = self.opt["mail"]
            if code != 250:
                return self.reply(f"{code} {str(code)[0]}.7.1 sender refused")
            self.mail_from, self.mail_params = path.lstrip("<"), params.strip()
            self.reply("250 2.1.0 ok")

        def do_RCPT(self, arg: str) -> None:
            if self.mail_from is None:
                return self.reply("503 5.5.1 MAIL first")
            path, _, params = arg[3:].partition(">")
            address = path.lstrip("<")
            code = self.opt["rcpt"].get(address, 250)
            if code == 250:
                self.accepted.append(address)
                self.rcpt_params.append(params.strip())
                return self.reply("250 2.1.5 ok")
            status = "5.1.1 no such user" if code >= 500 else "4.2.1 mailbox busy, try later"
            self.reply(f"{code} {status}")

        def do_DATA(self, arg: str) -> None:
            if not self.accepted:
                return self.reply("554 5.5.1 no valid recipients")
            self.in_data = True
            self.lines = []
            self.reply("354 end with <CRLF>.<CRLF>")

        def data_line(self, line: bytes) -> None:
            if line == b".":
                self.in_data = False
                return self.message_end()
            self.lines.append(line[1:] if line.startswith(b".") else line)

        def message_end(self) -> None:
            self.sink["count"] += 1
            folder = base / "sinks" / self.ip
            folder.mkdir(parents=True, exist_ok=True)
            stem = folder / f"{self.sink['count']:05d}"
            data = b"".join(line + b"\r\n" for line in self.lines)
            record = {"mail_from": self.mail_from, "accepted": self.accepted, "helo": self.helo, "esmtp": self.esmtp,
                      "tls": self.tls, "auth": self.auth, "mail_params": self.mail_params,
                      "rcpt_params": self.rcpt_params, "max_commands_per_read": self.max_per_read,
                      "concurrent": self.sink["active"]}
            code = self.opt["data"]
            if code == 250:
                stem.with_suffix(".eml.tmp").write_bytes(data)
                os.rename(stem.with_suffix(".eml.tmp"), stem.with_suffix(".eml"))
                stem.with_suffix(".tmp").write_text(json.dumps(record))
                os.rename(stem.with_suffix(".tmp"), stem.with_suffix(".json"))
            self.reset()
            self.max_per_read = 0
            text = "250 2.0.0 queued" if code == 250 else f"{code} {str(code)[0]}.3.0 message refused"
            delay = self.opt["data_delay"]
            if delay:
                reactor.callLater(delay, self.reply, text)
            else:
                self.reply(text)

        def do_RSET(self, arg: str) -> None:
            self.reset()
            self.reply("250 2.0.0 ok")

        def do_NOOP(self, arg: str) -> None:
            self.reply("250 2.0.0 ok")

        def do_QUIT(self, arg: str) -> None:
            self.reply("221 2.0.0 bye")
            self.transport.loseConnection()

    from twisted.internet.protocol import Factory

    class SinkFactory(Factory):
        def __init__(self, ip: str) -> None:
            self.ip = ip

        def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
            return SinkSession(self.ip)

    def do(command: dict) -> None:
        op = command["op"]
        if op == "hello":
            return
        if op == "zone":
            load_zone(command["zone"])
        elif op == "sink":
            ip = command["ip"]
            sink = sinks.setdefault(ip, {"options": dict(defaults), "port": None, "count": 0, "active": 0})
            if not command.get("keep"):
                sink["options"] = {**defaults, **command["options"]}
            if sink["port"] is None:
                sink["port"] = reactor.listenTCP(smtp_port, SinkFactory(ip), interface=ip)
        elif op == "down":
            sink = sinks.get(command["ip"])
            if sink and sink["port"] is not None:
                sink["port"].stopListening()
                sink["port"] = None
        elif op == "stop":
            reactor.callLater(0, reactor.stop)
        else:
            raise ValueError(f"unknown op {op}")

    class Control(LineReceiver):
        delimiter = b"\n"

        def lineReceived(self, line: bytes) -> None:
            try:
                do(json.loads(line))
            except Exception as exc:  # report to the test, keep serving
                import traceback

                traceback.print_exc()
                self.transport.write(f"error {exc}\n".encode())
                return
            self.transport.write(b"ok\n")

        def connectionLost(self, reason=None) -> None:  # type: ignore[no-untyped-def]
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Control())
    reactor.run()


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))

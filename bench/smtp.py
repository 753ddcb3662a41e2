#!/usr/bin/env python3
"""SMTP intake: our server against Debian's Postfix on the same machine and workload, in one run.

    python bench/smtp.py --quick           # 20 clients x 50 messages of 10 KB, local delivery (well under a minute)
    python bench/smtp.py                   # 20 clients x 250 messages, 3 runs per side
    python bench/smtp.py --relay           # also: both servers relay to a sink on 127.0.0.2
    python bench/smtp.py --quick --profile # + py-spy hot spots of our server

See bench/README.md ("bench/smtp.py") for what is measured and how to read the table.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the private-Postfix launcher lives beside the interop test
sys.path.insert(0, str(HERE))

from pop3 import OurServer, Spy, free_port, group_cpu, log, spy_summary  # noqa: E402  launcher, CPU, py-spy, log
from store import TextPool  # noqa: E402  the same text as bench/store.py's messages

OUR_DOMAIN = "bench.example.test"
SINK_DOMAIN = "sink.test"
SINK_HOST = "127.0.0.2"  # the sink is not on the servers' own address: a real next hop would not be
SENDER = "sender@client.test"
SIDES = ("postfix", "ours")


# -- the message and the clients ----------------------------------------------------------------


def make_messages(size: int, count: int, seed: int) -> list[bytes]:
    """`count` distinct messages of `size` octets (CRLF), text from bench/store.py's pool."""
    rng = random.Random(seed)
    pool = TextPool(rng, size=max(1 << 20, 4 * size))
    out = []
    for i in range(count):
        header = (
            f"From: Sender <{SENDER}>\r\nTo: <bench@{OUR_DOMAIN}>\r\nSubject: bench message {i}\r\n"
            f"Date: Sat, 28 Nov 2026 06:00:00 +0000\r\nMessage-ID: <{seed}.{i}@client.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        ).encode()
        body = pool.take(rng, size).replace(b"\n", b"\r\n")
        body = body[: max(0, size - len(header) - 2)].rsplit(b"\r\n", 1)[0] + b"\r\n"
        out.append(header + body)
    return out


def client_main(idx: int, port: int, rcpt: str, n: int, messages: list[bytes], barrier, results,
                timeout: float) -> None:
    """One SMTP client process: connect and EHLO, wait for the others, send `n` messages on the
    one connection (MAIL, RCPT, DATA each; smtplib, so one command at a time), QUIT."""
    out: dict = {"idx": idx, "sent": 0, "refused": 0, "errors": []}
    try:
        s = smtplib.SMTP("127.0.0.1", port, local_hostname=f"client{idx}.client.test", timeout=timeout)
        s.ehlo()
        barrier.wait(timeout)
        cpu0 = time.process_time()
        for i in range(n):
            try:
                s.sendmail(SENDER, [rcpt], messages[(idx + i) % len(messages)])
                out["sent"] += 1
            except smtplib.SMTPRecipientsRefused as exc:
                out["refused"] += 1
                if len(out["errors"]) < 3:
                    out["errors"].append(str(exc))
            except smtplib.SMTPResponseException as exc:
                out["refused"] += 1
                if len(out["errors"]) < 3:
                    out["errors"].append(f"{exc.smtp_code} {exc.smtp_error!r}")
        out["end"] = time.monotonic()  # the last 250 (comparable across processes: CLOCK_MONOTONIC)
        out["cpu"] = time.process_time() - cpu0
        s.quit()
    except Exception as exc:  # noqa: BLE001  reported by the parent
        out["errors"].append(f"{type(exc).__name__}: {exc}")
        out.setdefault("end", time.monotonic())
        out.setdefault("cpu", 0.0)
        try:
            barrier.abort()
        except Exception:  # noqa: BLE001
            pass
    results.put(out)


def count_files(folder: Path) -> int:
    try:
        with os.scandir(folder) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


def drive(port: int, rcpt: str, clients: int, per_client: int, messages: list[bytes], delivered,
          timeout: float, pgid: int, stall: float = 60.0) -> dict:
    """Start `clients` processes (forked: they inherit `messages`), release them together, wait
    for their last 250 and for `delivered()` to reach clients x per_client; times from the common start.
    Gives up `stall` seconds after the clients are done if nothing more arrives meanwhile."""
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(clients + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=client_main, args=(i, port, rcpt, per_client, messages, barrier, results, timeout))
             for i in range(clients)]
    for p in procs:
        p.start()
    want = clients * per_client
    cpu0 = group_cpu(pgid)
    try:
        barrier.wait(timeout)
    except Exception:  # noqa: BLE001  a client failed to connect; its result says why
        pass
    start = time.monotonic()
    outs: list[dict] = []
    got = 0
    done_at = None
    deadline = start + timeout
    progress = (0, start)  # (count, when it last changed)
    while time.monotonic() < deadline:
        while len(outs) < clients:
            try:
                outs.append(results.get_nowait())
            except Exception:  # noqa: BLE001  queue.Empty
                break
        got = delivered()
        now = time.monotonic()
        if got != progress[0]:
            progress = (got, now)
        if got >= want and done_at is None:
            done_at = now
        if done_at is not None and len(outs) == clients:
            break
        if len(outs) == clients and (got >= sum(o["sent"] for o in outs) or now - progress[1] > stall):
            break  # all that was accepted has arrived (some were refused), or nothing more is coming
        time.sleep(0.02)
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    time.sleep(0.3)  # let Postfix's master reap finished daemons (their CPU lands in its cutime)
    server_cpu = group_cpu(pgid) - cpu0
    accepted_at = max((o["end"] for o in outs), default=start)
    sent = sum(o["sent"] for o in outs)
    return {
        "want": want,
        "sent": sent,
        "refused": sum(o["refused"] for o in outs),
        "errors": [e for o in outs for e in o["errors"]][:5],
        "missing_clients": clients - len(outs),
        "accepted_s": accepted_at - start,
        "delivered": got,
        "delivered_s": (done_at - start) if done_at is not None else None,
        "client_cpu": sum(o["cpu"] for o in outs),
        "server_cpu": server_cpu,
    }


def probe_relay(port: int, message: bytes, arrived, wait: float) -> str | None:
    """Send one message to the sink through the server; None if it arrives within `wait`
    seconds, else why not (a 451 to RCPT is ours while relaying is not there)."""
    with smtplib.SMTP("127.0.0.1", port, local_hostname="probe.client.test", timeout=30) as s:
        s.ehlo()
        s.mail(SENDER)
        code, text = s.rcpt(f"probe@{SINK_DOMAIN}")
        if code == 451:
            s.rset()
            return "relaying not available yet"
        if code != 250:
            s.rset()
            return f"relaying refused ({code} {text.decode(errors='replace')})"
        code, text = s.data(message)
        if code != 250:
            return f"the relayed message was refused ({code} {text.decode(errors='replace')})"
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if arrived():
            return None
        time.sleep(0.05)
    return f"relaying accepted, but the message did not reach the sink within {wait:g}s"


# -- the loopback sink ----------------------------------------------------------------------------


class SinkProtocol(asyncio.Protocol):
    """Accepts everything, stores nothing, counts messages: the far end of a relay.

    Understands pipelined commands (Postfix pipelines MAIL, RCPT and DATA) and reads DATA
    up to CRLF.CRLF with one `find` per chunk, so that it is not what the bench measures."""

    def __init__(self, counter) -> None:
        self.counter = counter
        self.buf = bytearray()
        self.in_data = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(b"220 sink.test ESMTP sink\r\n")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        out = []
        while True:
            if self.in_data:
                i = self.buf.find(b"\r\n.\r\n")
                if i < 0:
                    break
                del self.buf[: i + 5]
                self.in_data = False
                with self.counter.get_lock():
                    self.counter.value += 1
                out.append(b"250 2.0.0 Ok: sunk\r\n")
                continue
            i = self.buf.find(b"\r\n")
            if i < 0:
                break
            line = bytes(self.buf[:i]).upper()
            del self.buf[: i + 2]
            verb = line[:4]
            if verb == b"EHLO":
                out.append(b"250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n250 SMTPUTF8\r\n")
            elif verb == b"HELO":
                out.append(b"250 sink.test\r\n")
            elif verb == b"DATA":
                self.in_data = True
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.buf[:0] = b"\r\n"  # so that an immediate ".\r\n" is found as CRLF.CRLF
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            else:  # MAIL, RCPT, RSET, NOOP, ...
                out.append(b"250 2.0.0 Ok\r\n")
        if out:
            self.transport.write(b"".join(out))


def sink_main(port: int, counter, ready) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SinkProtocol(counter), SINK_HOST, port, backlog=512)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


class Sink:
    """The sink in its own process (so it takes no CPU from the clients' or servers' processes)."""

    def __init__(self) -> None:
        ctx = mp.get_context("fork")
        with socket.socket() as s:
            s.bind((SINK_HOST, 0))
            self.port = s.getsockname()[1]
        self.counter = ctx.Value("q", 0)
        ready = ctx.Event()
        self.proc = ctx.Process(target=sink_main, args=(self.port, self.counter, ready), daemon=True)
        self.proc.start()
        if not ready.wait(10):
            raise RuntimeError("the sink did not start")

    def count(self) -> int:
        return self.counter.value

    def stop(self) -> None:
        self.proc.kill()
        self.proc.join(5)


# -- our server ---------------------------------------------------------------------------------


class OurSmtpServer(OurServer):
    """`python -m retrieval serve` with [smtp] listen on a free loopback port, like the demo."""

    def __init__(self, base: Path, relay_to: str | None) -> None:
        super().__init__(base)
        self.relay_to = relay_to
        self.relay_key: str | None = None

    def start(self) -> None:
        from retrieval.config import _SCHEMA

        self.port = free_port()
        smtp_extra = ""
        if self.relay_to and "relayhost" in _SCHEMA.get("smtp", {}):  # (a checkout from before it had one)
            self.relay_key = "relayhost"
            smtp_extra = f'relayhost = "{self.relay_to}"\n'
        self.config.write_text(
            f"""
[server]
hostname = "{OUR_DOMAIN}"
state_dir = "{self.state}"

[auth]
passwd_file = "{self.passwd}"
allow_plaintext = true
default_scheme = "PLAIN"
failure_delay = 0

[store]
mail_location = "maildir:~/Maildir"

[smtp]
listen = ["127.0.0.1:{self.port}"]
{smtp_extra}"""
        )
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "retrieval", "serve", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=ROOT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("our server exited:\n" + self.log.read_text(errors="replace")[-3000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(100).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("our server did not answer:\n" + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.05)


# -- the bench ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, postfix_missing: str | None) -> None:
        """`postfix_missing`: why Postfix cannot run here (then only our figures, absolute)."""
        from postfix_helper import PrivatePostfix

        self.args = args
        self.postfix_missing = postfix_missing
        self.sides = SIDES if postfix_missing is None else ("ours",)
        self.sink: Sink | None = Sink() if args.relay else None
        relay_to = f"[{SINK_HOST}]:{self.sink.port}" if self.sink else None
        self.pf: PrivatePostfix | None = None
        if postfix_missing is None:
            self.pf = PrivatePostfix(domain="postfix.bench.test", myhostname="postfix.bench.test",
                                     transports={SINK_DOMAIN: f"smtp:{relay_to}"} if relay_to else None,
                                     cleanup=not args.keep)
            self.base = self.pf.base
        else:
            self.base = Path(tempfile.mkdtemp(prefix="smtpbench-", dir="/tmp"))
        self.ours = OurSmtpServer(self.base / "ours", relay_to)
        self.runs = [f"run{i}" for i in range(args.repeat)]
        self.messages = make_messages(args.size, 32, seed=1)
        self.warnings: list[str] = []

    def run(self) -> int:
        try:
            return self._run()
        finally:
            self.ours.stop()
            if self.pf is not None:
                self.pf.close()
            elif not self.args.keep:
                shutil.rmtree(self.base, ignore_errors=True)
            if self.sink:
                self.sink.stop()
            if self.args.keep:
                print(f"kept everything in {self.base}", file=sys.stderr)

    def _run(self) -> int:
        args = self.args
        for user in self.runs:  # a fresh mailbox per run on each side: no run counts another's files
            if self.pf is not None:
                self.pf.add_mailbox(user)
            self.ours.add_user(user)
        for user in ("profile0", "profile1"):
            self.ours.add_user(user)
        if self.pf is not None:
            self.pf.start()
            log(f"Postfix {self.pf.version()} on 127.0.0.1:{self.pf.port} (master pid {self.pf.proc.pid})")
        else:
            print(f"Postfix cannot run here ({self.postfix_missing}): our figures only, absolute")
        self.ours.start()
        log(f"ours on 127.0.0.1:{self.ours.port} (pid {self.ours.proc.pid})"
            + (f", sink on {SINK_HOST}:{self.sink.port}" if self.sink else ""))
        sides = self.sides
        results: dict[str, dict[str, list[dict]]] = {"local": {s: [] for s in sides}}
        notes: dict[str, str] = {}
        n, c = args.per_client, args.clients

        def local_target(side: str, user: str):  # type: ignore[no-untyped-def]
            if side == "postfix":
                assert self.pf is not None and self.pf.proc is not None
                return self.pf.port, self.pf.proc.pid, f"{user}@{self.pf.domain}", self.pf.maildir(user) / "new"
            return self.ours.port, self.ours.proc.pid, f"{user}@{OUR_DOMAIN}", self.ours.home(user) / "Maildir" / "new"

        for rep, user in enumerate(self.runs):
            for side in sides if rep % 2 == 0 else sides[::-1]:
                port, pgid, rcpt, folder = local_target(side, user)
                log(f"local delivery, {side}, run {rep + 1}/{args.repeat} "
                    f"(load average {os.getloadavg()[0]:.1f})")
                os.sync()
                r = drive(port, rcpt, c, n, self.messages, lambda f=folder: count_files(f), args.timeout, pgid,
                          args.stall)
                results["local"][side].append(r)
                log("  " + self.summary(r))

        if args.relay:
            assert self.sink is not None
            results["relay"] = {s: [] for s in sides}
            before = self.sink.count()
            why = probe_relay(self.ours.port, self.messages[0], lambda: self.sink.count() > before, args.probe_wait)
            if why is not None and self.ours.relay_key is None and "not available" not in why:
                why += " (the config has no [smtp] relayhost to point at the sink)"
            ours_can = why is None
            if why is not None:
                notes["ours"] = f"retrieval: {why}"
                print(notes["ours"])
            for rep in range(args.repeat):
                for side in sides if rep % 2 == 0 else sides[::-1]:
                    if side == "ours" and not ours_can:
                        continue
                    if side == "postfix":
                        assert self.pf is not None and self.pf.proc is not None
                        port, pgid = self.pf.port, self.pf.proc.pid
                    else:
                        port, pgid = self.ours.port, self.ours.proc.pid
                    log(f"relay to the sink, {side}, run {rep + 1}/{args.repeat} "
                        f"(load average {os.getloadavg()[0]:.1f})")
                    base = self.sink.count()
                    r = drive(port, f"bench{rep}@{SINK_DOMAIN}", c, n, self.messages,
                              lambda b=base: self.sink.count() - b, args.timeout, pgid, args.stall)
                    results["relay"][side].append(r)
                    log("  " + self.summary(r))
        profile_text = self.profile() if args.profile else ""
        self.report(results, notes)
        if profile_text:
            print("\n" + profile_text)
        return 0

    def profile(self) -> str:
        """The local scenario once more on our side with py-spy attached, twice: sampling the thread
        holding the GIL (where the CPU goes), then every thread not asleep (also the waiting ones)."""
        if shutil.which("py-spy") is None:
            return "py-spy not found (pip install py-spy)"
        assert self.ours.proc is not None
        out = []
        for i, gil in enumerate((True, False)):
            user = f"profile{i}"
            path = self.base / f"pyspy-{i}{'-gil' if gil else ''}.txt"
            what = "thread holding the GIL" if gil else "threads not asleep"
            log(f"py-spy on our server ({what}): local delivery")
            spy = Spy(self.ours.proc.pid, path, self.args.spy_rate, gil)
            try:
                r = drive(self.ours.port, f"{user}@{OUR_DOMAIN}", self.args.clients, self.args.per_client,
                          self.messages, lambda u=user: count_files(self.ours.home(u) / "Maildir" / "new"),
                          self.args.timeout, self.ours.proc.pid, self.args.stall)
            finally:
                spy.stop()
            out.append(f"--- py-spy ({what}), our server, local delivery: {self.summary(r)}; raw stacks in {path} ---\n"
                       + spy_summary(path, self.args.top))
        return "\n\n".join(out)

    @staticmethod
    def summary(r: dict) -> str:
        done = f"{r['delivered_s']:.2f}s" if r["delivered_s"] is not None else "NOT ALL"
        return (f"{r['sent']}/{r['want']} accepted in {r['accepted_s']:.2f}s, {r['delivered']} delivered "
                f"({done}); server CPU {r['server_cpu']:.2f}s, clients' CPU {r['client_cpu']:.2f}s"
                + (f"; errors: {r['errors']}" if r["errors"] else ""))

    def report(self, results: dict, notes: dict) -> None:
        args = self.args
        total = args.clients * args.per_client
        print()
        print(f"SMTP intake: {args.clients} concurrent clients (one process each, smtplib, one connection, "
              f"one command at a time) x {args.per_client} messages of {args.size} octets = {total} messages, "
              f"one recipient each; {args.repeat} run(s) per side, alternating, median shown.")
        if self.pf is not None:
            print(f"Postfix {self.pf.version()} (private instance, Debian defaults but for the paths; virtual(8) "
                  "into Maildir, fsync) against ours (python -m retrieval serve, [smtp] listen, Maildir, fsync).")
        else:
            print(f"Ours only (python -m retrieval serve, [smtp] listen, Maildir, fsync): Postfix cannot run here "
                  f"({self.postfix_missing}).")
        print(f"Machine: {os.cpu_count()} CPU(s), shared: load average at the end {os.getloadavg()[0]:.1f}.")
        labels = {"local": "local delivery to Maildir (msg/s until all N are in new/)",
                  "relay": f"relay to a sink on {SINK_HOST} (msg/s until the sink has all N)"}
        for scenario, sides in results.items():
            print(f"\n{labels[scenario]}")
            print(f"{'':9} {'accepted msg/s':>14} {'delivered msg/s':>15} {'accepted s':>10} {'delivered s':>11} "
                  f"{'server CPU ms/msg':>17} {'client CPU ms/msg':>17}")
            rates: dict[str, float] = {}
            for side in self.sides:
                rows = sides[side]
                if not rows:
                    print(f"{side:9} {notes.get(side, 'not run')}")
                    continue
                ok = [r for r in rows if r["delivered_s"] is not None]
                acc = statistics.median(r["sent"] / r["accepted_s"] for r in rows if r["accepted_s"] > 0)
                if ok:
                    dl_s = statistics.median(r["delivered_s"] for r in ok)
                    rates[side] = statistics.median(r["want"] / r["delivered_s"] for r in ok)
                    dl = f"{rates[side]:15.0f} {statistics.median(r['accepted_s'] for r in rows):10.2f} {dl_s:11.2f}"
                else:
                    dl = f"{'n/a':>15} {statistics.median(r['accepted_s'] for r in rows):10.2f} {'n/a':>11}"
                cpu = statistics.median(r["server_cpu"] / max(1, r["sent"]) * 1000 for r in rows)
                ccpu = statistics.median(r["client_cpu"] / max(1, r["sent"]) * 1000 for r in rows)
                print(f"{side:9} {acc:14.0f} {dl} {cpu:17.2f} {ccpu:17.2f}")
                print(f"{'':9} all runs, delivered s: "
                      + " ".join(f"{r['delivered_s']:.2f}" if r["delivered_s"] is not None else "-" for r in rows))
                for r in rows:
                    if r["delivered"] != r["want"] or r["errors"] or r["missing_clients"]:
                        self.warnings.append(f"{scenario}/{side}: {self.summary(r)}")
            if "ours" in rates and "postfix" in rates:
                print(f"ratio ours/Postfix (delivered msg/s): {rates['ours'] / rates['postfix']:.2f}x "
                      "(>1: we are faster)")
            elif notes.get("ours"):
                print(f"ratio: none ({notes['ours']}); Postfix's figures are absolute")
        print("\naccepted = when the last client got its last 250; delivered = when the last message was in the "
              "Maildir (or the sink). A server that queues first (fsync'd queue file) delivers after its 250. "
              "Postfix's smtpd slows clients down when its queue manager falls behind (in_flow_delay = 1s).")
        print("server CPU: the whole process group (Postfix: master, smtpd, cleanup, qmgr, virtual, smtp, ... and "
              "the daemons it reaped). Client CPU per message is there to show the clients were not the limit.")
        for w in self.warnings:
            print(f"WARNING: {w}")
        errors = self.pf.errors() if self.pf is not None else []
        if errors:
            print("\nPostfix logged:\n" + "\n".join(errors[-10:]))
        problems = self.ours.problems()
        if problems:
            print("\nOur server logged:\n" + "\n".join(problems))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=20, help="concurrent SMTP clients, one process each (default 20)")
    p.add_argument("--per-client", type=int, help="messages each client sends (default 250; 50 with --quick)")
    p.add_argument("--size", type=int, default=10 * 1024, help="message size in octets (default 10240)")
    p.add_argument("--repeat", type=int, help="runs per side, alternating; the median is kept (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="20 clients x 50 messages, one run per side")
    p.add_argument("--relay", action="store_true",
                   help="also the relay scenario: both servers relay to a sink on 127.0.0.2")
    p.add_argument("--probe-wait", type=float, default=30.0,
                   help="--relay: how long one message relayed by our server may take to reach the sink before "
                        "our side of the relay scenario is skipped (default 30 s)")
    p.add_argument("--stall", type=float, default=60.0,
                   help="give a run up when the clients are done and nothing has arrived for this long (default 60 s)")
    p.add_argument("--profile", action="store_true",
                   help="after the timed runs, the local scenario once more on our side with py-spy attached")
    p.add_argument("--spy-rate", type=int, default=250, help="py-spy samples per second (default 250)")
    p.add_argument("--top", type=int, default=20, help="rows of the py-spy summary (default 20)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (under /tmp)")
    p.add_argument("--timeout", type=float, default=600.0, help="deadline for one run, seconds (default 600)")
    args = p.parse_args(argv)
    if args.per_client is None:
        args.per_client = 50 if args.quick else 250
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    from postfix_helper import unavailable_reason

    return Bench(args, unavailable_reason()).run()


if __name__ == "__main__":
    sys.exit(main())

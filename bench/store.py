#!/usr/bin/env python3
"""Our store against Debian's Dovecot on the same Maildir and mbox, in one run.

    python bench/store.py                 # 100 000 messages, ~1 GB mbox
    python bench/store.py --quick         # 10 000 messages, ~100 MB mbox (a few minutes at most)
    python bench/store.py --messages 50000 --mbox-mb 300 --appends 1000

See bench/README.md for what is measured and how to read the table.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the private-Dovecot launcher lives beside the interop test

USER = "bench"
MAILDIR_LOCATION = "maildir:~/Maildir"
MBOX_LOCATION = "mbox:~/mail:INBOX=~/inbox"
DAY0 = 1_700_000_000  # the first message's date: fixed, so runs are comparable
WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an which have not "
    "mail server message folder index flag seen answered draft deleted recent keyword mailbox "
    "maildir mbox dovecot imap pop3 client session uid validity sync change notify expunge append "
    "copy move search fetch header body structure envelope address subject date reply forward "
    "meeting tomorrow report quarter budget project release review patch build test deploy"
).split()


# -- data generation ---------------------------------------------------------------


class TextPool:
    """A few MB of wrapped text lines; message bodies are slices of it (fast, deterministic)."""

    def __init__(self, rng: random.Random, size: int = 4 << 20) -> None:
        lines, total = [], 0
        while total < size:
            words, width = [], 0
            target = rng.randint(30, 76)
            while width < target:
                w = rng.choice(WORDS)
                words.append(w)
                width += len(w) + 1
            line = " ".join(words).capitalize() + "\n"
            if line.startswith("From "):
                line = ">" + line  # quoted, as Postfix and procmail write it (mboxo)
            if rng.random() < 0.08:
                line = "\n"
            lines.append(line)
            total += len(line)
        self.data = "".join(lines).encode()
        self.starts = [0]
        for line in lines:
            self.starts.append(self.starts[-1] + len(line))

    def take(self, rng: random.Random, size: int) -> bytes:
        """About `size` bytes of whole lines (never a line starting with 'From ')."""
        size = min(size, len(self.data) // 2)
        first = rng.randrange(0, len(self.starts) // 2)
        start = self.starts[first]
        end_idx = bisect.bisect_left(self.starts, start + size)
        return self.data[start : self.starts[end_idx]]

    def base64ish(self, rng: random.Random, size: int) -> bytes:
        """An 'attachment': 76-column lines, as base64 looks."""
        alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        line = bytes(rng.choice(alphabet) for _ in range(76)) + b"\n"
        block = line * 64
        reps = size // len(block) + 1
        return (block * reps)[:size].rsplit(b"\n", 1)[0] + b"\n"


def message_sizes(rng: random.Random, n: int) -> list[int]:
    """Lognormal around 4 KB; one in 200 is 100 KB..1 MB (attachments)."""
    out = []
    for _ in range(n):
        if rng.random() < 0.005:
            out.append(int(rng.uniform(100_000, 1_000_000)))
        else:
            out.append(max(600, int(rng.lognormvariate(math.log(4000), 0.7))))
    return out


def make_message(pool: TextPool, rng: random.Random, i: int, size: int, when: float) -> bytes:
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
    header = (
        f"Return-Path: <sender{i % 97}@example.test>\n"
        f"From: Sender {i % 97} <sender{i % 97}@example.test>\n"
        f"To: bench@example.test\n"
        f"Subject: message {i} {rng.choice(WORDS)} {rng.choice(WORDS)}\n"
        f"Date: {date}\n"
        f"Message-ID: <{i}.{DAY0}@bench.example.test>\n"
        f"MIME-Version: 1.0\n"
    )
    need = max(0, size - len(header) - 40)
    if size >= 100_000:
        boundary = f"b{i}"
        text = pool.take(rng, 2000)
        attachment = pool.base64ish(rng, need - len(text))
        body = (
            f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n--{boundary}\n'
            f"Content-Type: text/plain; charset=utf-8\n\n".encode()
            + text
            + f'\n--{boundary}\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n'.encode()
            + attachment
            + f"--{boundary}--\n".encode()
        )
        return header.encode() + body
    return header.encode() + b"Content-Type: text/plain; charset=utf-8\n\n" + pool.take(rng, need)


def random_flags(rng: random.Random) -> set[str]:
    flags = set()
    if rng.random() < 0.7:
        flags.add("S")
    if rng.random() < 0.05:
        flags.add("F")
    if rng.random() < 0.10:
        flags.add("R")
    if rng.random() < 0.01:
        flags.add("D")
    if rng.random() < 0.005:
        flags.add("T")
    if rng.random() < 0.05:
        flags.add("a")  # $Forwarded
    if rng.random() < 0.03:
        flags.add("b")  # Work
    return flags


def generate_maildir(dest: Path, n: int, seed: int) -> tuple[int, int]:
    """N messages as Dovecot/Postfix would have left them; return (count, bytes)."""
    rng = random.Random(seed)
    pool = TextPool(rng)
    for sub in ("cur", "new", "tmp"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    (dest / "dovecot-keywords").write_text("0 $Forwarded\n1 Work\n")
    total = 0
    for i, size in enumerate(message_sizes(rng, n)):
        when = DAY0 + i * 60
        data = make_message(pool, rng, i, size, when)
        total += len(data)
        base = f"{when}.M{rng.randrange(1_000_000)}P{1000 + i % 30000}Q{i}.bench"
        roll = rng.random()
        if roll < 0.10:  # delivered, never looked at: new/, no size in the name
            path = dest / "new" / base
        else:
            if roll > 0.95:  # written by something that does not put sizes in names
                name = base
            else:
                vsize = len(data) + data.count(b"\n")
                name = f"{base},S={len(data)},W={vsize}"
            flags = random_flags(rng)
            info = "".join(sorted(f for f in flags if f.isupper())) + "".join(sorted(f for f in flags if f.islower()))
            path = dest / "cur" / f"{name}:2,{info}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.close(fd)
        os.utime(path, (when, when))
    return n, total


def generate_mbox(dest: Path, megabytes: int, seed: int) -> tuple[int, int]:
    """An mbox of about `megabytes` MB with Status/X-Status/X-Keywords as mutt and Dovecot write them."""
    rng = random.Random(seed + 1)
    pool = TextPool(rng)
    limit = megabytes << 20
    total = count = 0
    with open(dest, "wb", buffering=1 << 20) as f:
        while total < limit:
            when = DAY0 + count * 60
            sizes = message_sizes(rng, 1)
            data = make_message(pool, rng, count, sizes[0], when)
            flags = random_flags(rng)
            status = ("R" if "S" in flags else "") + ("O" if rng.random() < 0.9 else "")
            xstatus = "".join(ch for ch, f in (("A", "R"), ("F", "F"), ("T", "D"), ("D", "T")) if f in flags)
            keywords = " ".join(k for k, f in (("$Forwarded", "a"), ("Work", "b")) if f in flags)
            head, _, body = data.partition(b"\n\n")
            extra = b""
            if status:
                extra += f"Status: {status}\n".encode()
            if xstatus:
                extra += f"X-Status: {xstatus}\n".encode()
            if keywords:
                extra += f"X-Keywords: {keywords}\n".encode()
            stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(when))
            chunk = f"From sender{count % 97}@example.test {stamp}\n".encode() + head + b"\n" + extra + b"\n" + body
            if not chunk.endswith(b"\n"):
                chunk += b"\n"
            chunk += b"\n"
            f.write(chunk)
            total += len(chunk)
            count += 1
    return count, total


def append_message(i: int) -> bytes:
    """A 4 KB message for the append runs (CRLF, as IMAP clients send)."""
    rng = random.Random(i)
    head = (
        f"From: Appender <a@example.test>\r\nTo: bench@example.test\r\nSubject: appended {i}\r\n"
        f"Message-ID: <append.{i}@bench.example.test>\r\n\r\n"
    )
    line = " ".join(rng.choice(WORDS) for _ in range(10))[:70] + "\r\n"
    body = (line * (4096 // len(line) + 1))[: 4096 - len(head)]
    return (head + body.rsplit("\r\n", 1)[0] + "\r\n").encode()


# -- our side, in a fresh process ---------------------------------------------------------


def child_main(args: argparse.Namespace) -> None:
    """`store.py --child OP`: one measurement of our store; timings as JSON on stderr."""
    t_start = time.perf_counter()
    from retrieval.store import flags as F
    from retrieval.store import open_store, user_location

    t_import = time.perf_counter()

    def work() -> dict:
        out: dict = {}
        t0 = time.perf_counter()
        store = open_store(user_location(args.location, USER, args.home), USER, Path(args.state))
        box = store.open("INBOX", readonly=args.child != "append")
        out["open"] = time.perf_counter() - t0
        if args.child == "status":
            st = box.status()
            sys.stdout.write(f"INBOX messages={st.messages} uidnext={st.uidnext} unseen={st.unseen}\n")
        elif args.child == "flags":
            write = sys.stdout.write
            for row in box.messages():
                write(f"uid: {row.uid}\nflags: {' '.join(F.sort_flags(row.flags))}\n")
        elif args.child == "append":
            msgs = [append_message(i) for i in range(args.appends)]
            t1 = time.perf_counter()
            deadline = t1 + args.append_seconds
            done = 0
            for data in msgs:
                box.append(data)
                done += 1
                if time.perf_counter() > deadline:
                    break
            out["append"] = time.perf_counter() - t1
            out["appended"] = done
        out["messages"] = len(box)
        box.close()
        store.close()
        out["total"] = time.perf_counter() - t0
        return out

    if args.profile:
        import cProfile
        import io
        import pstats

        prof = cProfile.Profile()
        result = prof.runcall(work)
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(30)
        result["profile"] = text.getvalue()
    else:
        result = work()
    result["import"] = t_import - t_start
    sys.stderr.write("\n" + json.dumps(result) + "\n")


# -- the parent: setup, both sides, the table --------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from dovecot_helper import PrivateDovecot

        self.args = args
        self.dv = PrivateDovecot(cleanup=not args.keep)
        self.base = self.dv.base
        self.rows: list[tuple[str, float | None, float | None, str]] = []
        self.timeout = args.timeout
        self.warnings: list[str] = []

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # processes

    def ours(self, op: str, location: str, home: Path, state: Path, profile: bool = False) -> tuple[float, dict]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", op, "--location", location,
               "--home", str(home), "--state", str(state), "--appends", str(self.args.appends),
               "--append-seconds", str(self.args.append_seconds)]
        if profile:
            cmd.append("--profile")
        os.sync()  # nobody pays at their first fsync for the data written before (ext4 data=ordered)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=self.timeout)
        wall = time.perf_counter() - t0
        err = proc.stderr.decode(errors="replace")
        if proc.returncode != 0:
            raise RuntimeError(f"our {op} failed:\n{err[-3000:]}")
        return wall, json.loads(err.strip().splitlines()[-1])

    def doveadm(self, *args: str) -> float:
        """Wall time of one doveadm process (its output goes to /dev/null, as ours does)."""
        return self._doveadm(args, subprocess.DEVNULL)[0]

    def doveadm_status(self, user: str) -> tuple[float, int]:
        """Wall time of `doveadm mailbox status all INBOX`, and the message count it reports."""
        wall, out = self._doveadm(("mailbox", "status", "-u", user, "all", "INBOX"), subprocess.PIPE)
        fields = dict(f.split("=", 1) for f in out.split()[1:] if "=" in f)
        return wall, int(fields["messages"])

    def _doveadm(self, args: tuple[str, ...], stdout: int) -> tuple[float, str]:
        cmd = ["doveadm", "-c", str(self.dv.conf), *args]
        os.sync()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, timeout=self.timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode(errors='replace')[-2000:]}")
        return wall, (proc.stdout or b"").decode(errors="replace")

    def imap_appends(self, user: str) -> tuple[float, int]:
        """(seconds, messages) for IMAP APPENDs to INBOX, selected as our view is open."""
        imap = self.dv.imap(user, timeout=60)
        imap.select("INBOX")
        msgs = [append_message(i) for i in range(self.args.appends)]
        os.sync()
        t0 = time.perf_counter()
        deadline = t0 + self.args.append_seconds
        done = 0
        for data in msgs:
            typ, resp = imap.append("INBOX", None, None, data)
            if typ != "OK":
                raise RuntimeError(f"Dovecot APPEND: {resp}")
            done += 1
            if time.perf_counter() > deadline:
                break
        elapsed = time.perf_counter() - t0
        imap.logout()
        return elapsed, done

    # copies

    def fresh(self, kind: str, src: Path, home: Path, for_dovecot: bool) -> None:
        """A private copy of the generated folder in `home`, with no index of anyone."""
        if kind == "maildir":
            target = home / "Maildir"
            if target.exists():
                shutil.rmtree(target)
            home.mkdir(parents=True, exist_ok=True)
            # hard links: both sides only rename and unlink message files, never rewrite them
            subprocess.run(["cp", "-al", str(src), str(target)], check=True, timeout=self.timeout)
        else:
            for p in (home / "mail", home / "inbox", home / "inbox.lock"):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
            home.mkdir(parents=True, exist_ok=True)
            (home / "mail").mkdir()
            shutil.copyfile(src, home / "inbox")  # a real copy: mbox writers rewrite in place
        if for_dovecot:
            self.dv.chown_tree(home)

    @staticmethod
    def fresh_state(state: Path) -> None:
        if state.exists():
            shutil.rmtree(state)
        state.mkdir(parents=True)

    # the runs

    def measure(self, kind: str, src: Path) -> None:
        args = self.args
        reps = args.repeat
        location = MAILDIR_LOCATION if kind == "maildir" else MBOX_LOCATION
        duser = f"d{kind}"
        dhome = self.base / "dovecot" / kind
        ohome = self.base / "ours" / kind
        ostate = self.base / "ours" / f"{kind}-state"
        label = kind

        # Dovecot first, on its own copies
        self.log(f"{label}: Dovecot cold status")
        self.fresh(kind, src, dhome, True)
        d_cold_status, d_count = self.doveadm_status(duser)
        self.log(f"{label}: Dovecot cold fetch flags")
        self.fresh(kind, src, dhome, True)
        d_cold_flags = self.doveadm("fetch", "-u", duser, "uid flags", "mailbox", "INBOX", "all")
        self.log(f"{label}: Dovecot warm")
        d_warm_status = min(self.doveadm_status(duser)[0] for _ in range(reps))
        d_warm_flags = min(self.doveadm("fetch", "-u", duser, "uid flags", "mailbox", "INBOX", "all") for _ in range(reps))
        self.log(f"{label}: Dovecot IMAP APPENDs (up to {args.appends} or {args.append_seconds:.0f}s)")
        d_append, d_appended = self.imap_appends(duser)
        if not args.keep:
            shutil.rmtree(dhome)

        # ours
        self.log(f"{label}: ours cold status")
        self.fresh(kind, src, ohome, False)
        self.fresh_state(ostate)
        o_cold_status, _ = self.ours("status", location, ohome, ostate)
        self.log(f"{label}: ours cold flags")
        self.fresh(kind, src, ohome, False)
        self.fresh_state(ostate)
        o_cold_flags, info = self.ours("flags", location, ohome, ostate, profile=args.profile)
        if args.profile:
            print(f"\n--- cProfile of our cold open + flag listing ({label}) ---\n{info['profile']}")
        self.log(f"{label}: ours warm ({info['messages']} messages)")
        if info["messages"] != d_count:
            self.warnings.append(f"{label}: we see {info['messages']} messages, Dovecot {d_count}")
        o_warm_status = min(self.ours("status", location, ohome, ostate)[0] for _ in range(reps))
        o_warm_flags = min(self.ours("flags", location, ohome, ostate)[0] for _ in range(reps))
        self.log(f"{label}: our appends (up to {args.appends} or {args.append_seconds:.0f}s)")
        _, app = self.ours("append", location, ohome, ostate)
        o_append, o_appended = app["append"], app["appended"]
        if not args.keep:
            shutil.rmtree(ohome)
            shutil.rmtree(ostate)

        o_each, d_each = o_append / o_appended, d_append / d_appended
        self.rows += [
            (f"{label}: cold open (status)", o_cold_status, d_cold_status, "doveadm mailbox status, no index"),
            (f"{label}: cold open + list flags", o_cold_flags, d_cold_flags, "doveadm fetch 'uid flags', no index"),
            (f"{label}: warm open (status)", o_warm_status, d_warm_status, f"best of {reps}"),
            (f"{label}: warm open + list flags", o_warm_flags, d_warm_flags, f"best of {reps}"),
            (f"{label}: one 4 KB append", o_each, d_each,
             f"ours {o_appended} in {o_append:.1f}s ({1 / o_each:.0f}/s), "
             f"Dovecot IMAP APPEND {d_appended} in {d_append:.1f}s ({1 / d_each:.0f}/s)"),
        ]

    def startup(self) -> None:
        """What a process costs before it touches a message: the floor of every number below."""
        ohome, ostate = self.base / "ours" / "empty", self.base / "ours" / "empty-state"
        (ohome / "Maildir").mkdir(parents=True)
        self.fresh_state(ostate)
        self.ours("status", MAILDIR_LOCATION, ohome, ostate)  # create the empty index
        o = min(self.ours("status", MAILDIR_LOCATION, ohome, ostate)[0] for _ in range(3))
        self.doveadm_status("dempty")
        d = min(self.doveadm_status("dempty")[0] for _ in range(3))
        self.rows.append(("process start, empty INBOX", o, d, "python + import vs doveadm"))

    def run(self) -> int:
        args = self.args
        try:
            return self._run()
        finally:
            self.dv.close()
            if args.keep:
                print(f"kept everything in {self.base}", file=sys.stderr)

    def _run(self) -> int:
        args = self.args
        mbox_ok, why = mbox_available()
        gen = self.base / "gen"
        gen.mkdir()
        self.dv.add_user("dempty", "x", self.base / "dovecot" / "empty")
        self.dv.add_user("dmaildir", "x", self.base / "dovecot" / "maildir")
        self.dv.add_user("dmbox", "x", self.base / "dovecot" / "mbox", extra=f"userdb_mail={MBOX_LOCATION}")
        self.dv.start()

        t0 = time.perf_counter()
        count, size = generate_maildir(gen / "Maildir", args.messages, args.seed)
        self.log(f"generated Maildir: {count} messages, {size / 1e6:.0f} MB in {time.perf_counter() - t0:.1f}s")
        mbox_info = ""
        if mbox_ok and args.mbox_mb > 0:
            t0 = time.perf_counter()
            mcount, msize = generate_mbox(gen / "mbox", args.mbox_mb, args.seed)
            mbox_info = f"mbox: {mcount} messages, {msize / 1e6:.0f} MB"
            self.log(f"generated {mbox_info} in {time.perf_counter() - t0:.1f}s")

        self.startup()
        self.measure("maildir", gen / "Maildir")
        if not args.keep:
            shutil.rmtree(gen / "Maildir")
        if mbox_ok and args.mbox_mb > 0:
            self.measure("mbox", gen / "mbox")
        errors = self.dv.errors()

        print()
        print(f"Maildir: {count} messages, {size / 1e6:.0f} MB; {mbox_info or 'mbox: ' + why}")
        print(f"{'operation':34} {'ours s':>9} {'Dovecot s':>10} {'ours/Dovecot':>13}  note")
        for name, o, d, note in self.rows:
            ratio = f"{o / d:.2f}x" if o and d else "-"
            print(f"{name:34} {o:9.4f} {d:10.4f} {ratio:>13}  {note}")
        if not (mbox_ok and args.mbox_mb > 0):
            print(f"mbox: {why}")
        for warning in self.warnings:
            print(f"WARNING: {warning}")
        if errors:
            print("\nDovecot logged errors:\n" + "\n".join(errors[-10:]))
        return 0


def mbox_available() -> tuple[bool, str]:
    try:
        import retrieval.store.mbox  # noqa: F401
    except ImportError as exc:
        return False, f"backend not available ({exc})"
    return True, ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=100_000, help="messages in the Maildir (default 100000)")
    p.add_argument("--mbox-mb", type=int, default=1024, help="size of the mbox in MB (default 1024; 0 skips mbox)")
    p.add_argument("--appends", type=int, help="4 KB messages appended (default 2000; 500 with --quick)")
    p.add_argument("--append-seconds", type=float, default=60.0,
                   help="stop appending after this long and report the rate so far (default 60)")
    p.add_argument("--quick", action="store_true", help="10 000 messages and a 100 MB mbox")
    p.add_argument("--repeat", type=int, default=3, help="warm runs, best kept (default 3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="print a cProfile of our cold open + flag listing")
    p.add_argument("--keep", action="store_true", help="keep the work directory (under /tmp)")
    p.add_argument("--timeout", type=float, default=1800.0, help="deadline for any one step, seconds")
    p.add_argument("--child", choices=["status", "flags", "append"], help=argparse.SUPPRESS)
    p.add_argument("--location", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    p.add_argument("--state", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    if args.quick:
        args.messages, args.mbox_mb = 10_000, 100
    if args.appends is None:
        args.appends = 500 if args.quick else 2000
    from dovecot_helper import unavailable_reason

    reason = unavailable_reason()
    if reason:
        print(f"cannot run Dovecot here: {reason}", file=sys.stderr)
        return 2
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())

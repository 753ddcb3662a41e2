"""Differential test of the MIME room against Dovecot 2.3.19's recorded answers.

For every message of the oracle corpus and every `UID FETCH` query of its list
(manifest.json), the response our server would send is built from
`retrieval.mime.message.Message` and compared with Dovecot's golden record by
the oracle's own `compare.compare_fetch()`; the 57 `UID SEARCH` queries are
parsed by `retrieval.imap.parser.CommandReader`, evaluated by
`retrieval.imap.search.matches()` over the whole corpus (flags as the 7 STOREs
set them, INTERNALDATE from the manifest, UIDs in append order) and compared
with `compare.compare_search()`.

Items listed in dovecot-quirks.txt are left out (as `compare.py --skip` does);
for those BINARY.SIZE quirks we check instead that our size is the length of
Dovecot's own BINARY answer. docs/conformance.md lists the deliberate
differences (none so far).

Run with `-s` to see the "N passed, M failed" table per query type.
The oracle folder lives outside the project (../shared/conformance/oracle);
without it the test is skipped.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest

ORACLE = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "oracle"

pytestmark = pytest.mark.skipif(
    not (ORACLE / "golden" / "dovecot-2.3.19.json").is_file(),
    reason=f"the Dovecot oracle is not at {ORACLE}",
)

# Items we answer differently from Dovecot on purpose (see docs/conformance.md):
# (message, query) -> reason. Empty: we match every non-quirk golden answer.
DELIBERATE: dict[tuple[str, str], str] = {}

CATEGORIES = [
    "ENVELOPE",
    "BODYSTRUCTURE",
    "BODY",
    "RFC822.SIZE",
    "INTERNALDATE",
    "BODY[HEADER]",
    "BODY[TEXT]",
    "BODY[HEADER.FIELDS]",
    "BODY[HEADER.FIELDS.NOT]",
    "BODY[]<partial>",
    "BODY[n]",
    "BODY[n.MIME]",
    "BODY[n.HEADER]",
    "BODY[n.TEXT]",
    "BINARY[n]",
    "BINARY.SIZE[n]",
    "SEARCH",
]

_SEC = re.compile(r"^(BODY|BINARY)(?:\.PEEK)?\[([^\]]*)\](?:<(\d+)\.(\d+)>)?$")
_SIZE = re.compile(r"^BINARY\.SIZE\[([^\]]*)\]$")
_SECTION = re.compile(r"^([\d.]*?)\.?(HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME)?(?:\s*\((.*)\))?$")


def _import_oracle():
    if str(ORACLE) not in sys.path:
        sys.path.insert(0, str(ORACLE))
    import compare  # noqa: PLC0415 - the oracle's own comparison, used as it is
    import imapdata  # noqa: PLC0415

    return compare, imapdata


def _section(spec: str):
    from retrieval.imap.ast import Section

    m = _SECTION.match(spec.strip())
    assert m, spec
    nums, text, fields = m.groups()
    part = tuple(int(x) for x in nums.split(".") if x) if nums else ()
    return Section(part=part, text=text, fields=tuple(f.upper() for f in fields.split()) if fields else ())


def category(query: str) -> str:
    if query in ("ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822.SIZE", "INTERNALDATE"):
        return query
    if _SIZE.match(query):
        return "BINARY.SIZE[n]"
    m = _SEC.match(query)
    assert m, query
    kind, spec, partial, _ = m.groups()
    if kind == "BINARY":
        return "BINARY[n]"
    if partial is not None:
        return "BODY[]<partial>"
    sec = _section(spec)
    if not sec.part:
        return f"BODY[{sec.text}]"
    return f"BODY[n.{sec.text}]" if sec.text else "BODY[n]"


def respond(msg, query: str, internaldate: str) -> bytes:
    """The record our server would give for `UID FETCH 1 (query)` (golden record format)."""
    from retrieval.mime.message import BinaryParseError, UnknownCTE

    def lit(b: bytes) -> bytes:
        return b"{%d}\r\n" % len(b) + b

    item = query
    try:
        if query == "ENVELOPE":
            value = msg.envelope()
        elif query == "BODYSTRUCTURE":
            value = msg.bodystructure()
        elif query == "BODY":
            value = msg.body()
        elif query == "RFC822.SIZE":
            value = b"%d" % msg.size
        elif query == "INTERNALDATE":  # the session's item; echoed so every query has an answer
            value = b'"' + internaldate.encode() + b'"'
        elif _SIZE.match(query):
            spec = _SIZE.match(query).group(1)
            value = b"%d" % msg.binary_size(_section(spec).part)
        else:
            kind, spec, start, length = _SEC.match(query).groups()
            sec = _section(spec)
            if kind == "BINARY":
                value = lit(msg.binary(sec.part))
            else:
                value = lit(msg.section(sec, (int(start), int(length)) if start else None))
            item = f"{kind}[{spec}]" + (f"<{start}>" if start else "")
    except UnknownCTE:
        return b"NO [UNKNOWN-CTE]\r\n"
    except BinaryParseError:
        return b"NO [PARSE]\r\n"
    return b"* 1 FETCH (UID 1 " + item.encode() + b" " + value + b")\r\nOK\r\n"


def _quirks() -> set[tuple[str, str]]:
    skips = set()
    for line in (ORACLE / "dovecot-quirks.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m, _, q = line.partition(" ")
            skips.add((m, q.strip()))
    return skips


def _search_program(parts: list, uids: list[int]):
    from retrieval.imap import ast
    from retrieval.imap.parser import CommandReader

    line = b"A1 UID SEARCH "
    for p in parts:
        if isinstance(p, str):
            line += re.sub(r"\{uid:(\d+)\}", lambda m: str(uids[int(m.group(1)) - 1]), p).encode()
        else:
            data = p["literal"].encode(p.get("charset", "utf-8"))
            line += b"{%d+}\r\n" % len(data) + data
    events = CommandReader(ast.Limits(), literal_plus=True).feed(line + b"\r\n")
    assert len(events) == 1 and isinstance(events[0], ast.Command), events
    return events[0].args[0]


def _apply_stores(stores: list[str], n: int) -> list[set[str]]:
    flags: list[set[str]] = [set() for _ in range(n)]
    for s in stores:
        m = re.match(r"(\S+) \+FLAGS\.SILENT \((\S+)\)", s)
        assert m, s
        seqs, flag = m.groups()
        for piece in seqs.split(","):
            a, _, b = piece.partition(":")
            lo = int(a)
            hi = lo if not b else (n if b == "*" else int(b))
            for i in range(lo, hi + 1):
                flags[i - 1].add(flag)
    return flags


@pytest.fixture(scope="module")
def oracle_results():
    from retrieval.imap.search import SearchContext, matches
    from retrieval.mime.message import Message

    compare, imapdata = _import_oracle()
    golden = json.loads((ORACLE / "golden" / "dovecot-2.3.19.json").read_text())
    manifest = json.loads((ORACLE / "manifest.json").read_text())
    skips = _quirks()
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    failures: dict[str, list[str]] = defaultdict(list)
    quirk_checks: list[str] = []
    entries = manifest["messages"]
    started = time.monotonic()
    messages = []
    for ent in entries:
        name = ent["name"]
        data = (ORACLE / "corpus" / name).read_bytes()
        messages.append(data)
        msg = Message(data)
        gq = golden["messages"][name]
        for q in ent["queries"]:
            if q not in gq:
                continue  # queries Dovecot could not answer (manifest "excluded")
            cat = category(q)
            ours = respond(msg, q, ent["internaldate"]).decode("utf-8", "surrogateescape")
            if (name, q) in skips:
                # a Dovecot quirk: BINARY.SIZE must be the length of BINARY instead
                bq = q.replace("BINARY.SIZE[", "BINARY.PEEK[")
                grec = imapdata.parse_record(gq.get(bq, ""))
                if grec["status"] == "OK":
                    glen = len(compare.merged_items(grec)[imapdata.norm_item(bq)])
                    orec = imapdata.parse_record(ours)
                    osize = compare.merged_items(orec).get(imapdata.norm_item(q)) if orec["status"] == "OK" else None
                    if osize != glen:
                        quirk_checks.append(f"{name} {q}: ours {osize}, BINARY has {glen}")
                continue
            if (name, q) in DELIBERATE:
                continue
            diff = compare.compare_fetch(q, gq[q], ours, False)
            if diff:
                counts[cat][1] += 1
                failures[cat].append(f"{name} {q}: {diff}")
            else:
                counts[cat][0] += 1

    n = len(entries)
    uids = list(range(1, n + 1))
    flags = _apply_stores(manifest["stores"], n)
    sizes = [Message(d).size for d in messages]
    loaded: dict[int, Message] = {}

    def loader(i: int):
        def load() -> Message:
            if i not in loaded:
                loaded[i] = Message(messages[i])
            return loaded[i]

        return load

    ginv = {u: nm for nm, u in golden["uids"]["all"].items()}
    tinv = {u: entries[u - 1]["name"] for u in uids}
    now = time.time()
    for d in manifest["search_defs"]:
        key = d["key"]
        if ("search", key) in skips:
            continue
        program = _search_program(d["parts"], uids)
        found = []
        for i in range(n):
            ctx = SearchContext(
                seq=i + 1,
                uid=uids[i],
                flags=frozenset(flags[i]),
                size=sizes[i],
                internaldate=imapdata.parse_internaldate(entries[i]["internaldate"]),
                savedate=None,
                modseq=1,
                recent=False,
                message=loader(i),
            )
            if matches(program.key, ctx, n, uids[-1], now):
                found.append(uids[i])
        diff = compare.compare_search(key, golden["searches"]["all"][key], found, ginv, tinv)
        if diff:
            counts["SEARCH"][1] += 1
            failures["SEARCH"].append(f"{key}: {diff}")
        else:
            counts["SEARCH"][0] += 1
    elapsed = time.monotonic() - started
    return counts, failures, quirk_checks, elapsed


def _table(counts) -> str:
    lines = [f"{cat:28s} {p:5d} passed {f:5d} failed" for cat, (p, f) in sorted(counts.items())]
    total_p = sum(p for p, _ in counts.values())
    total_f = sum(f for _, f in counts.values())
    lines.append(f"{total_p} passed, {total_f} failed")
    return "\n".join(lines)


@pytest.mark.parametrize("cat", CATEGORIES)
def test_category(oracle_results, cat):
    counts, failures, _quirk_checks, _elapsed = oracle_results
    passed, failed = counts.get(cat, [0, 0])
    assert passed + failed > 0, f"no {cat} items in the corpus"
    assert failed == 0, f"{cat}: {passed} passed, {failed} failed\n" + "\n".join(failures[cat][:30])


def test_quirk_items_answer_the_rfc_way(oracle_results):
    """Where dovecot-quirks.txt says BINARY.SIZE is wrong, ours is the length of BINARY."""
    _counts, _failures, quirk_checks, _elapsed = oracle_results
    assert not quirk_checks, "\n".join(quirk_checks)


def test_summary(oracle_results):
    counts, _failures, _quirk_checks, elapsed = oracle_results
    print("\n" + _table(counts) + f"\n({elapsed:.1f} s)")
    assert sum(f for _, f in counts.values()) == 0
    assert elapsed < 60

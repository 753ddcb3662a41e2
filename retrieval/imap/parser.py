"""IMAP4rev1 command grammar as a sans-IO reader: bytes in, events out.

`CommandReader` frames the input (lines, synchronizing and non-synchronizing
literals, literal8), enforces the line and literal limits, and hands every
complete command to `parse_command()`, which follows RFC 3501 section 9 plus
the syntax of the extensions we serve (LITERAL+, BINARY, UIDPLUS, MOVE,
UNSELECT, IDLE, NAMESPACE, ID, ENABLE, SASL-IR, CONDSTORE/QRESYNC, ESEARCH,
SEARCHRES, LIST-EXTENDED, LIST-STATUS, SPECIAL-USE, STATUS=SIZE, SAVEDATE,
WITHIN, MULTIAPPEND). What comes out is described in `ast.py`.

Internally a command is a latin-1 decoded string in which every literal is
replaced by one sentinel character (U+E000, which latin-1 text can never
contain), with the literal bytes kept aside: the grammar is then a plain
recursive-descent parser over a string.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import datetime as dt
import re

from retrieval.imap.ast import (
    STAR,
    AppendMessage,
    Command,
    Continuation,
    FetchAtt,
    FetchRequest,
    Limits,
    ListRequest,
    ParseError,
    RawLine,
    SearchProgram,
    Section,
    SelectParams,
    SeqSet,
    StoreRequest,
)
from retrieval.mime import utf7

__all__ = [
    "CommandReader",
    "parse_command",
    "Event",
    "SUPPORTED_CHARSETS",
    "STATUS_ITEMS",
    "COMMANDS",
    "UID_COMMANDS",
    "PAUSE_AFTER",
]

Event = Command | ParseError | Continuation | RawLine

# Charsets advertised in `NO [BADCHARSET (...)]`; SEARCH accepts any text codec Python knows.
SUPPORTED_CHARSETS = ("US-ASCII", "UTF-8")
STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE")
SPECIAL_USE = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash", "\\Important")
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
PAUSE_AFTER = frozenset({"IDLE", "AUTHENTICATE", "STARTTLS"})
UID_COMMANDS = frozenset({"FETCH", "STORE", "SEARCH", "COPY", "MOVE", "EXPUNGE"})
_NO_ARGS = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "CHECK", "CLOSE", "UNSELECT", "IDLE", "NAMESPACE"})
COMMANDS = _NO_ARGS | UID_COMMANDS | frozenset(
    {
        "LOGIN", "AUTHENTICATE", "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE",
        "UNSUBSCRIBE", "LIST", "LSUB", "STATUS", "APPEND", "ENABLE", "ID", "UID",
    }
)  # fmt: skip

MAX32 = 2**32 - 1
MAX63 = 2**63 - 1
MAX_DEPTH = 100  # nesting of NOT / OR / ( ) in SEARCH
_SENTINEL = "\ue000"
_TAIL = 32  # enough bytes to recognise "~{<20 digits>+}\r"

_STRICT = False  # tests set this to let internal errors escape instead of becoming BAD

# -- character classes (RFC 3501 section 9) ------------------------------------------

_ATOM_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '(){%*"\\]')
_CLS = re.escape(_ATOM_CHARS)
ATOM_RE = re.compile(f"[{_CLS}]+")
ASTRING_RE = re.compile(f"[{_CLS}\\]]+")
TAG_RE = re.compile(f"[{re.escape(_ATOM_CHARS.replace('+', ''))}\\]]+")
LIST_RE = re.compile(f"[{_CLS}\\]%*]+")
QUOTED_RE = re.compile('"((?:[^"\\\\\\r\\n\\x00\ue000]|\\\\["\\\\])*)"')
_UNESCAPE_RE = re.compile(r'\\(["\\])')
DIGITS_RE = re.compile("[0-9]+")
FETCH_NAME_RE = re.compile("[A-Za-z0-9.]+")
SECTION_TEXT_RE = re.compile("[A-Za-z]+(?:\\.[A-Za-z]+)*")
STORE_ATT_RE = re.compile("([+-]?)FLAGS(\\.SILENT)?", re.IGNORECASE)
BASE64_RE = re.compile("[A-Za-z0-9+/]+={0,2}")
DATE_RE = re.compile("([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
DATE_TIME_RE = re.compile(
    '"( [0-9]|[0-9]{1,2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"'
)
MONTHS = {m: i for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), 1)}

_LITERAL_MARK_RE = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\r?\Z")
_EARLY_RE = re.compile(rb"([^ ]*)(?: ([A-Za-z0-9]*))?(?: ([A-Za-z0-9]*))?")
_TAG_BYTES_RE = re.compile(TAG_RE.pattern.encode("latin-1"))

_CHARSET_DENY = frozenset({"undefined", "unicode_escape", "raw_unicode_escape", "idna", "punycode"})


def _literal_mark(line: bytes) -> re.Match | None:
    """The `{n}` / `{n+}` / `~{n}` ending a line (CR allowed before the LF), if any."""
    if not (line.endswith(b"}") or line.endswith(b"}\r")):
        return None
    return _LITERAL_MARK_RE.search(line, max(0, len(line) - _TAIL))


def _show(value: str | bytes, limit: int = 40) -> str:
    """Client data made safe to echo in a response text (printable ASCII, short)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = "".join(c if " " <= c <= "~" else "?" for c in value)
    return value if len(value) <= limit else value[: limit - 3] + "..."


class _Bad(Exception):
    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


_CODEC_NAMES: frozenset[str] | None = None


def _codec_names() -> frozenset[str]:
    """Names the stdlib `encodings` package can resolve (aliases and modules)."""
    global _CODEC_NAMES
    if _CODEC_NAMES is None:
        import encodings.aliases
        import pkgutil

        aliases = encodings.aliases.aliases
        modules = {m.name for m in pkgutil.iter_modules(encodings.__path__)}
        _CODEC_NAMES = frozenset(aliases) | frozenset(aliases.values()) | frozenset(modules)
    return _CODEC_NAMES


def _lookup_charset(name: str) -> str | None:
    """The Python codec name for an IMAP charset, or None if unknown/not a text charset.

    Only names the stdlib knows reach `codecs.lookup()`: the `encodings` search
    function caches every failed name, which a client could otherwise grow at will.
    """
    import encodings

    key = encodings.normalize_encoding(name.lower())
    if len(name) > 64 or not (key in _codec_names() or key.replace(".", "_") in _codec_names()):
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _CHARSET_DENY:
        return None
    return info.name


def decode_mailbox(raw: bytes) -> str:
    """Mailbox name on the wire -> str: modified UTF-7 decoded, INBOX case-normalised."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _Bad(f"Mailbox name is not valid modified UTF-7: {_show(raw)}") from None
    try:
        name = utf7.decode(text)
    except ValueError:
        name = text  # Dovecot takes an ASCII name that is not valid mUTF-7 as it is
    return "INBOX" if name.upper() == "INBOX" else name


# -- the grammar ------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, literals: list[tuple[bytes, bool]], binary: bool = True) -> None:
        self.s = text
        self.i = 0
        self.binary = binary
        self.lits: dict[int, tuple[bytes, bool]] = {}
        k = 0
        pos = text.find(_SENTINEL)
        while pos >= 0:
            self.lits[pos] = literals[k]
            k += 1
            pos = text.find(_SENTINEL, pos + 1)
        self.tag = "*"
        self.name: str | None = None
        self.charset = "utf-8"

    # primitives ---------------------------------------------------------------------

    def fail(self, text: str, code: str | None = None):
        raise _Bad(text, code)

    def eof(self) -> bool:
        return self.i >= len(self.s)

    def peek(self) -> str:
        return self.s[self.i : self.i + 1]

    def at(self, token: str) -> bool:
        return self.s.startswith(token, self.i)

    def take(self, token: str) -> bool:
        if self.s.startswith(token, self.i):
            self.i += len(token)
            return True
        return False

    def expect(self, token: str, what: str | None = None) -> None:
        if not self.take(token):
            self.fail(what or f"Expected '{token}' {self.where()}")

    def where(self) -> str:
        if self.eof():
            return "at end of command"
        if self.peek() == _SENTINEL:
            return "but found a literal"
        return f"at '{_show(self.s[self.i : self.i + 20])}'"

    def sp(self) -> None:
        if not self.take(" "):
            self.fail("Missing argument" if self.eof() else f"Expected a space {self.where()}")

    def end(self) -> None:
        if not self.eof():
            self.fail(f"Unexpected argument {self.where()}")

    def match(self, regex: re.Pattern) -> str | None:
        m = regex.match(self.s, self.i)
        if m is None:
            return None
        self.i = m.end()
        return m.group()

    def keyword(self, word: str) -> bool:
        """Case-insensitive `word` followed by a delimiter (not more atom characters)."""
        j = self.i + len(word)
        if self.s[self.i : j].upper() == word and (j >= len(self.s) or self.s[j] not in _ATOM_CHARS):
            self.i = j
            return True
        return False

    def atom(self, what: str = "an atom") -> str:
        value = self.match(ATOM_RE)
        if value is None:
            self.fail(f"Expected {what} {self.where()}")
        return value

    def number(self, nz: bool = False, maxv: int = MAX32, what: str = "a number") -> int:
        digits = self.match(DIGITS_RE)
        if digits is None:
            self.fail(f"Expected {what} {self.where()}")
        if len(digits) > 20 or int(digits) > maxv:
            self.fail(f"Number out of range: {_show(digits)}")
        n = int(digits)
        if nz and n == 0:
            self.fail(f"Expected {what} greater than zero")
        return n

    def literal(self, allow_binary: bool = False) -> tuple[bytes, bool] | None:
        if self.peek() != _SENTINEL:
            return None
        data, binary = self.lits[self.i]
        if binary and not allow_binary:
            self.fail("literal8 (~{n}) is only allowed for APPEND data")
        self.i += 1
        return data, binary

    def string(self, what: str = "a string") -> bytes:
        """quoted / literal (never an atom)."""
        if self.at('"'):
            text = self.match(QUOTED_RE)
            if text is None:
                self.fail(f"Invalid quoted string {self.where()}")
            return _UNESCAPE_RE.sub(r"\1", text[1:-1]).encode("latin-1")
        lit = self.literal()
        if lit is not None:
            if b"\x00" in lit[0]:
                self.fail("NUL in literal")
            return lit[0]
        self.fail(f"Expected {what} {self.where()}")

    def astring(self, what: str = "a string") -> bytes:
        value = self.match(ASTRING_RE)
        if value is not None:
            return value.encode("latin-1")
        return self.string(what)

    def nstring(self) -> bytes | None:
        if self.keyword("NIL"):
            return None
        return self.string()

    def text(self, what: str = "a string") -> str:
        """astring as str: UTF-8, undecodable bytes kept as surrogates (surrogateescape)."""
        return self.astring(what).decode("utf-8", "surrogateescape")

    def mailbox(self) -> str:
        return decode_mailbox(self.astring("a mailbox name"))

    def list_mailbox(self) -> str:
        value = self.match(LIST_RE)
        raw = value.encode("latin-1") if value is not None else self.string("a mailbox pattern")
        return decode_mailbox(raw)

    def seqset(self) -> SeqSet:
        if self.take("$"):
            return SeqSet(saved=True)
        ranges = []
        while True:
            a = self.seq_number()
            b = self.seq_number() if self.take(":") else a
            ranges.append((a, b))
            if not self.take(","):
                return SeqSet(tuple(ranges))

    def seq_number(self) -> int:
        if self.take("*"):
            return STAR
        return self.number(nz=True, what="a sequence set")

    def paren_list(self, item, empty_ok: bool = False) -> list:
        self.expect("(", f"Expected '(' {self.where()}")
        out = []
        if self.take(")"):
            if not empty_ok:
                self.fail("Empty list")
            return out
        out.append(item())
        while self.take(" "):
            out.append(item())
        self.expect(")", f"Expected ')' {self.where()}")
        return out

    def flag(self) -> str:
        if self.take("\\"):
            name = self.match(ATOM_RE)
            if name is None:
                self.fail(f"Invalid flag {self.where()}")
            for flag in SYSTEM_FLAGS:
                if flag[1:].upper() == name.upper():
                    return flag
            self.fail(f"Invalid system flag \\{_show(name)}")
        return self.atom("a flag")

    def date(self) -> dt.date:
        quoted = self.take('"')
        m = DATE_RE.match(self.s, self.i)
        if m is None:
            self.fail(f"Invalid date {self.where()}")
        self.i = m.end()
        if quoted:
            self.expect('"', "Invalid date: missing closing quote")
        try:
            return dt.date(int(m[3]), MONTHS.get(m[2].upper(), 0), int(m[1]))
        except ValueError:
            self.fail(f"Invalid date {_show(m.group())}")

    def date_time(self) -> dt.datetime:
        m = DATE_TIME_RE.match(self.s, self.i)
        if m is None:
            self.fail(f"Invalid date-time {self.where()}")
        self.i = m.end()
        day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
        try:
            if int(zm) > 59:
                raise ValueError
            offset = dt.timedelta(hours=int(zh), minutes=int(zm))
            tz = dt.timezone(-offset if sign == "-" else offset)
            return dt.datetime(
                int(year), MONTHS.get(mon.upper(), 0), int(day), int(hh), int(mm), min(int(ss), 59), tzinfo=tz
            )
        except ValueError:
            self.fail(f"Invalid date-time {_show(m.group())}")

    # commands ----------------------------------------------------------------------

    def command(self) -> Command:
        tag = self.match(TAG_RE)
        if tag is None or not (self.at(" ") or self.eof()):
            self.fail("Invalid tag")
        self.tag = tag
        if not self.take(" ") or self.eof():
            self.fail("Missing command")
        name = self.match(ATOM_RE)
        if name is None:
            self.fail(f"Invalid command name {self.where()}")
        name = name.upper()
        uid = False
        if name == "UID":
            self.sp()
            name = self.atom("a UID command").upper()
            if name not in UID_COMMANDS:
                self.fail(f"Unknown command UID {_show(name)}")
            uid = True
        elif name not in COMMANDS:
            self.fail(f"Unknown command {_show(name)}")
        self.name = ("UID " if uid else "") + name
        if name in _NO_ARGS or (name == "EXPUNGE" and not uid):
            args: tuple = ()
        else:
            args = getattr(self, "c_" + name)(uid)
        self.end()
        return Command(tag, name, args, uid)

    def c_LOGIN(self, uid: bool) -> tuple:
        self.sp()
        user = self.text("a user name")
        self.sp()
        return (user, self.text("a password"))

    def c_AUTHENTICATE(self, uid: bool) -> tuple:
        self.sp()
        mechanism = self.atom("a SASL mechanism").upper()
        initial = None
        if self.take(" ") and not self.eof():  # "AUTHENTICATE CRAM-MD5 " (mutt with GNU SASL): no response
            if self.take("="):
                initial = b""
            else:
                value = self.match(BASE64_RE)
                if value is None or len(value) % 4:
                    self.fail("Invalid base64 in the initial response")
                try:
                    initial = base64.b64decode(value, validate=True)
                except (binascii.Error, ValueError):
                    self.fail("Invalid base64 in the initial response")
        return (mechanism, initial)

    def c_SELECT(self, uid: bool) -> tuple:
        self.sp()
        mailbox = self.mailbox()
        condstore = False
        qresync = None
        if self.take(" "):
            seen = set()

            def param():
                nonlocal condstore, qresync
                word = self.atom("a SELECT parameter").upper()
                if word in seen:
                    self.fail(f"Duplicate SELECT parameter {word}")
                seen.add(word)
                if word == "CONDSTORE":
                    condstore = True
                elif word == "QRESYNC":
                    self.sp()
                    qresync = self.qresync()
                else:
                    self.fail(f"Unknown SELECT parameter {_show(word)}")

            self.paren_list(param)
        return (mailbox, SelectParams(condstore=condstore, qresync=qresync))

    c_EXAMINE = c_SELECT

    def qresync(self) -> tuple:
        self.expect("(")
        uidvalidity = self.number(nz=True, what="a UIDVALIDITY")
        self.sp()
        modseq = self.number(maxv=MAX63, what="a mod-sequence")
        known = None
        match = None
        if self.take(" "):
            if not self.at("("):
                known = self.uid_set()
                if self.take(" "):
                    match = self.seq_match()
            else:
                match = self.seq_match()
        self.expect(")")
        return (uidvalidity, modseq, known, match)

    def uid_set(self) -> SeqSet:
        s = self.seqset()
        if s.saved or any(STAR in r for r in s.ranges):
            self.fail("'*' and '$' are not allowed in a known-UID set")
        return s

    def seq_match(self) -> tuple[SeqSet, SeqSet]:
        self.expect("(")
        seqs = self.uid_set()
        self.sp()
        uids = self.uid_set()
        self.expect(")")
        return (seqs, uids)

    def c_CREATE(self, uid: bool) -> tuple:
        self.sp()
        mailbox = self.mailbox()
        uses: list[str] = []
        if self.take(" "):

            def param():
                if not self.keyword("USE"):
                    self.fail(f"Unknown CREATE parameter {self.where()}")
                self.sp()
                uses.extend(self.paren_list(self.use_attr, empty_ok=True))

            self.paren_list(param)
        return (mailbox, tuple(dict.fromkeys(uses)))

    def use_attr(self) -> str:
        self.expect("\\", f"Expected a special-use attribute {self.where()}")
        name = self.atom("a special-use attribute")
        for attr in SPECIAL_USE:
            if attr[1:].upper() == name.upper():
                return attr
        return "\\" + name

    def c_DELETE(self, uid: bool) -> tuple:
        self.sp()
        return (self.mailbox(),)

    c_SUBSCRIBE = c_UNSUBSCRIBE = c_DELETE

    def c_RENAME(self, uid: bool) -> tuple:
        self.sp()
        old = self.mailbox()
        self.sp()
        return (old, self.mailbox())

    def reference(self) -> str:
        raw = self.astring("a reference name")
        try:
            return utf7.decode(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            self.fail(f"Reference name is not valid modified UTF-7: {_show(raw)}")

    def c_LSUB(self, uid: bool) -> tuple:
        self.sp()
        ref = self.reference()
        self.sp()
        return (ref, self.list_mailbox())

    def c_LIST(self, uid: bool) -> tuple:
        self.sp()
        select: list[str] = []
        if self.at("("):
            select = self.paren_list(lambda: self.atom("a LIST selection option").upper(), empty_ok=True)
            for opt in select:
                if opt not in ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"):
                    self.fail(f"Unknown LIST selection option {_show(opt)}")
            if "RECURSIVEMATCH" in select and not {"SUBSCRIBED", "SPECIAL-USE"} & set(select):
                self.fail("RECURSIVEMATCH needs SUBSCRIBED or SPECIAL-USE")
            self.sp()
        ref = self.reference()
        self.sp()
        if self.at("("):
            patterns = self.paren_list(self.list_mailbox)
        else:
            patterns = [self.list_mailbox()]
        returns: list[str] = []
        status: tuple[str, ...] = ()
        if self.take(" "):
            if not self.keyword("RETURN"):
                self.fail(f"Expected RETURN {self.where()}")
            self.sp()

            def option():
                nonlocal status
                opt = self.atom("a LIST return option").upper()
                if opt == "STATUS":
                    self.sp()
                    status = self.status_items()
                elif opt not in ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE"):
                    self.fail(f"Unknown LIST return option {_show(opt)}")
                return opt

            returns = self.paren_list(option, empty_ok=True)
        return (
            ListRequest(
                reference=ref,
                patterns=tuple(patterns),
                select_options=tuple(dict.fromkeys(select)),
                return_options=tuple(dict.fromkeys(returns)),
                status_items=status,
            ),
        )

    def status_items(self) -> tuple[str, ...]:
        def item():
            word = self.atom("a STATUS item").upper()
            if word not in STATUS_ITEMS:
                self.fail(f"Unknown STATUS item {_show(word)}")
            return word

        return tuple(dict.fromkeys(self.paren_list(item)))

    def c_STATUS(self, uid: bool) -> tuple:
        self.sp()
        mailbox = self.mailbox()
        self.sp()
        return (mailbox, self.status_items())

    def c_APPEND(self, uid: bool) -> tuple:
        self.sp()
        mailbox = self.mailbox()
        messages = []
        while True:
            self.sp()
            flags: list[str] = []
            when = None
            if self.at("("):
                flags = self.paren_list(self.flag, empty_ok=True)
                self.sp()
            if self.at('"'):
                when = self.date_time()
                self.sp()
            lit = self.literal(allow_binary=self.binary)
            if lit is None:
                self.fail(f"Expected the message as a literal {self.where()}")
            messages.append(AppendMessage(tuple(dict.fromkeys(flags)), when, lit[0], lit[1]))
            if self.eof():
                return (mailbox, tuple(messages))

    def c_COPY(self, uid: bool) -> tuple:
        self.sp()
        seqs = self.seqset()
        self.sp()
        return (seqs, self.mailbox())

    c_MOVE = c_COPY

    def c_EXPUNGE(self, uid: bool) -> tuple:  # only UID EXPUNGE gets here
        self.sp()
        return (self.seqset(),)

    def c_ENABLE(self, uid: bool) -> tuple:
        caps = []
        self.sp()
        caps.append(self.atom("a capability").upper())
        while self.take(" "):
            caps.append(self.atom("a capability").upper())
        return (tuple(dict.fromkeys(caps)),)

    def c_ID(self, uid: bool) -> tuple:
        self.sp()
        if self.keyword("NIL"):
            return (None,)
        self.expect("(", f"Expected '(' or NIL {self.where()}")
        params = []
        if not self.take(")"):
            while True:
                key = self.string("an ID field name").decode("utf-8", "replace")
                self.sp()
                value = self.nstring()
                params.append((key, None if value is None else value.decode("utf-8", "replace")))
                if self.take(")"):
                    break
                self.sp()
        return (tuple(params),)

    # STORE ---------------------------------------------------------------------------

    def c_STORE(self, uid: bool) -> tuple:
        self.sp()
        seqs = self.seqset()
        self.sp()
        unchanged = None
        if self.take("("):
            if not self.keyword("UNCHANGEDSINCE"):
                self.fail(f"Unknown STORE modifier {self.where()}")
            self.sp()
            unchanged = self.number(maxv=MAX63, what="a mod-sequence")
            self.expect(")")
            self.sp()
        m = STORE_ATT_RE.match(self.s, self.i)
        if m is None:
            self.fail(f"Expected FLAGS, +FLAGS or -FLAGS {self.where()}")
        self.i = m.end()
        mode = {"": "set", "+": "add", "-": "remove"}[m.group(1)]
        self.sp()
        if self.at("("):
            flags = self.paren_list(self.flag, empty_ok=True)
        else:
            flags = [self.flag()]
            while self.take(" "):
                flags.append(self.flag())
        request = StoreRequest(mode, bool(m.group(2)), tuple(dict.fromkeys(flags)), unchanged)
        return (seqs, request)

    # FETCH ---------------------------------------------------------------------------

    _MACROS = {
        "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
        "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
        "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
    }
    _SIMPLE = frozenset(
        "ENVELOPE FLAGS INTERNALDATE RFC822 RFC822.HEADER RFC822.SIZE RFC822.TEXT BODYSTRUCTURE UID MODSEQ "
        "SAVEDATE".split()
    )

    def c_FETCH(self, uid: bool) -> tuple:
        self.sp()
        seqs = self.seqset()
        self.sp()
        if self.at("("):
            atts = self.paren_list(self.fetch_att)
        else:
            start = self.i
            word = (self.match(FETCH_NAME_RE) or "").upper()
            if word in self._MACROS:
                atts = [FetchAtt(name) for name in self._MACROS[word]]
            else:
                self.i = start
                atts = [self.fetch_att()]
        changed = None
        vanished = False
        if self.take(" "):
            seen = set()

            def modifier():
                nonlocal changed, vanished
                word = self.atom("a FETCH modifier").upper()
                if word in seen:
                    self.fail(f"Duplicate FETCH modifier {word}")
                seen.add(word)
                if word == "CHANGEDSINCE":
                    self.sp()
                    changed = self.number(maxv=MAX63, what="a mod-sequence")
                elif word == "VANISHED":
                    vanished = True
                else:
                    self.fail(f"Unknown FETCH modifier {_show(word)}")

            self.paren_list(modifier)
            if vanished and not uid:
                self.fail("VANISHED is only allowed in UID FETCH")
            if vanished and changed is None:
                self.fail("VANISHED needs CHANGEDSINCE")
        return (seqs, FetchRequest(tuple(atts), changed, vanished))

    def fetch_att(self) -> FetchAtt:
        word = self.match(FETCH_NAME_RE)
        if word is None:
            self.fail(f"Expected a FETCH attribute {self.where()}")
        name = word.upper()
        if name in self._SIMPLE:
            return FetchAtt(name)
        if name == "BODY" and not self.at("["):
            return FetchAtt("BODY")
        if name in ("BODY", "BODY.PEEK") and self.at("["):
            section = self.section(binary=False)
            return FetchAtt("BODY[]", section, name == "BODY.PEEK", self.partial())
        if self.binary and name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE") and self.at("["):
            section = self.section(binary=True)
            if name == "BINARY.SIZE":
                return FetchAtt("BINARY.SIZE[]", section)
            return FetchAtt("BINARY[]", section, name == "BINARY.PEEK", self.partial())
        self.fail(f"Unknown FETCH attribute {_show(word)}")

    def section(self, binary: bool) -> Section:
        self.expect("[")
        if self.take("]"):
            return Section()
        part: list[int] = []
        if self.peek() and self.peek() in "0123456789":
            part.append(self.number(nz=True, what="a section part"))
            while self.at(".") and self.s[self.i + 1 : self.i + 2] in tuple("0123456789"):
                self.i += 1
                part.append(self.number(nz=True, what="a section part"))
            if self.take("]"):
                return Section(tuple(part))
            if binary:
                self.fail("A BINARY section is a part number only")
            self.expect(".", f"Invalid section {self.where()}")
        elif binary:
            self.fail("A BINARY section is a part number only")
        word = (self.match(SECTION_TEXT_RE) or "").upper()
        fields: tuple[str, ...] = ()
        if word == "MIME":
            if not part:
                self.fail("MIME needs a part number")
        elif word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            self.sp()
            names = self.paren_list(lambda: self.astring("a header field name"))
            fields = tuple(n.decode("latin-1").upper() for n in names)  # echoed as asked
        elif word not in ("HEADER", "TEXT"):
            self.fail(f"Invalid section {_show(word) if word else self.where()}")
        self.expect("]", f"Expected ']' {self.where()}")
        return Section(tuple(part), word, fields)

    def partial(self) -> tuple[int, int] | None:
        if not self.take("<"):
            return None
        start = self.number(what="a partial start")
        self.expect(".", "Partial needs <start.length>")
        length = self.number(nz=True, what="a partial length")
        self.expect(">", f"Expected '>' {self.where()}")
        return (start, length)

    # SEARCH --------------------------------------------------------------------------

    def c_SEARCH(self, uid: bool) -> tuple:
        self.sp()
        returns = None
        if self.keyword("RETURN"):
            self.sp()

            def option():
                word = self.atom("a SEARCH return option").upper()
                if word not in ("MIN", "MAX", "ALL", "COUNT", "SAVE"):
                    self.fail(f"Unknown SEARCH return option {_show(word)}")
                return word

            returns = tuple(dict.fromkeys(self.paren_list(option, empty_ok=True))) or ("ALL",)
            self.sp()
        charset = "US-ASCII"
        if self.keyword("CHARSET"):
            self.sp()
            charset = self.astring("a charset").decode("latin-1")
            codec = _lookup_charset(charset)
            if codec is None:
                self.fail(
                    f"Unsupported charset {_show(charset)} (supported: {' '.join(SUPPORTED_CHARSETS)})", "BADCHARSET"
                )
            self.charset = "utf-8" if codec == "ascii" else codec
            charset = {"ascii": "US-ASCII", "utf-8": "UTF-8"}.get(codec, charset.upper())
            self.sp()
        keys = [self.search_key(0)]
        while self.take(" "):
            keys.append(self.search_key(0))
        return (SearchProgram(("AND", tuple(keys)), charset, returns),)

    def search_string(self) -> str:
        raw = self.astring()
        try:
            return raw.decode(self.charset, "replace")
        except Exception:  # a codec that cannot decode at all
            self.fail(f"Cannot decode with charset {self.charset}", "BADCHARSET")

    _FLAG_KEYS = frozenset(
        "ALL ANSWERED DELETED DRAFT FLAGGED NEW OLD RECENT SEEN UNANSWERED UNDELETED UNDRAFT UNFLAGGED "
        "UNSEEN SAVEDATESUPPORTED".split()
    )
    _STRING_KEYS = frozenset("BCC CC FROM TO SUBJECT BODY TEXT".split())
    _DATE_KEYS = frozenset("BEFORE ON SINCE SENTBEFORE SENTON SENTSINCE SAVEDBEFORE SAVEDON SAVEDSINCE".split())

    def search_key(self, depth: int) -> tuple:
        if depth > MAX_DEPTH:
            self.fail("SEARCH is nested too deeply")
        c = self.peek()
        if c == "(":
            return ("AND", tuple(self.paren_list(lambda: self.search_key(depth + 1))))
        if c and c in "0123456789*$":
            return ("SEQ", self.seqset())
        word = self.match(ATOM_RE)
        if word is None:
            self.fail(f"Expected a search key {self.where()}")
        key = word.upper()
        if key in self._FLAG_KEYS:
            return (key,)
        self.sp()
        if key in self._STRING_KEYS:
            return (key, self.search_string())
        if key in self._DATE_KEYS:
            return (key, self.date())
        if key in ("KEYWORD", "UNKEYWORD"):
            return (key, self.atom("a keyword"))
        if key == "HEADER":
            name = self.astring("a header field name").decode("utf-8", "replace")
            self.sp()
            return (key, name, self.search_string())
        if key in ("LARGER", "SMALLER"):
            return (key, self.number(maxv=MAX63, what="a size"))
        if key == "UID":
            return (key, self.seqset())
        if key == "NOT":
            return (key, self.search_key(depth + 1))
        if key == "OR":
            a = self.search_key(depth + 1)
            self.sp()
            return (key, a, self.search_key(depth + 1))
        if key == "MODSEQ":
            if self.at('"'):  # entry-name entry-type-req: parsed, then ignored
                self.string()
                self.sp()
                kind = self.atom("an entry type").lower()
                if kind not in ("priv", "shared", "all"):
                    self.fail(f"Invalid MODSEQ entry type {_show(kind)}")
                self.sp()
            return (key, self.number(maxv=MAX63, what="a mod-sequence"))
        if key in ("OLDER", "YOUNGER"):
            return (key, self.number(nz=True, what="an interval"))
        self.fail(f"Unknown search key {_show(word)}")


def parse_command(
    line: bytes | str, literals: list[tuple[bytes, bool]] | None = None, binary: bool = True
) -> Command | ParseError:
    """Parse one complete command.

    `line` is the command text without the final CRLF; with `literals`, each
    literal's place is marked by U+E000 in a latin-1 decoded str (what the
    reader builds). Never raises.
    """
    text = line.decode("latin-1") if isinstance(line, bytes) else line
    literals = list(literals or [])
    if text.count(_SENTINEL) != len(literals):
        return ParseError("*", "Literal count mismatch")
    p = _Parser(text, literals, binary)
    try:
        return p.command()
    except _Bad as err:
        prefix = f"Error in IMAP command {p.name}: " if p.name else ""
        return ParseError(p.tag, prefix + err.text, err.code)
    except Exception:
        if _STRICT:
            raise
        return ParseError(p.tag, "Error in IMAP command: unparseable")


# -- the reader ---------------------------------------------------------------------------

_LINE, _LITERAL, _SKIP, _DISCARD = range(4)


class CommandReader:
    """Sans-IO command reader: `feed(bytes) -> [events]` (see ast.py for the contract).

    - `raw_mode`: the next line comes back as `RawLine` (IDLE's DONE, SASL responses).
    - The reader pauses after a Command IDLE/AUTHENTICATE/STARTTLS and after every
      RawLine (or a ParseError in raw mode): `feed()` then only buffers until
      `resume(raw=...)`. Pausing after each raw line lets "DONE\\r\\nA2 NOOP\\r\\n"
      arrive in one packet and still be read as one RawLine plus one command.
    - `paused` tells whether the reader waits for `resume()`.
    """

    def __init__(self, limits: Limits | None = None, literal_plus: bool = True, binary: bool = True) -> None:
        self.limits = limits or Limits()
        self.literal_plus = literal_plus
        self.binary = binary
        self.raw_mode = False
        self._paused = False
        self._overflow = False
        self._buf = bytearray()
        self._scan = 0  # bytes at the start of _buf known to hold no LF
        self._state = _LINE
        self._need = 0  # bytes still to read (_LITERAL) or to skip (_SKIP)
        self._tail = b""  # last bytes of the line being discarded (_DISCARD)
        self._discard_raw = False
        self._new_command()

    # public API -------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def mid_command(self) -> bool:
        """Part of a command has come in (a line without its end, a literal being sent):
        a server stop waits for the rest rather than lose an APPEND on the way."""
        return bool(self._segments) or self._state != _LINE or (bool(self._buf) and not self._paused)

    def feed(self, data: bytes) -> list[Event]:
        if data:
            self._buf += data
        if self._paused:
            # Only a misbehaving client sends more while we wait: keep a bounded amount.
            cap = self.limits.max_line + self.limits.max_literal + 2
            if len(self._buf) > cap:
                del self._buf[cap:]
                self._overflow = True
            return []
        return self._run()

    def resume(self, raw: bool = False) -> list[Event]:
        self._paused = False
        self.raw_mode = raw
        events: list[Event] = []
        if self._overflow:
            self._overflow = False
            events.append(ParseError("*", "Too much input while a command was running; some was dropped"))
        return events + self._run()

    def clear(self) -> None:
        """Forget buffered input and any half-read command (after STARTTLS)."""
        self._buf.clear()
        self._scan = 0
        self._state = _LINE
        self._need = 0
        self._tail = b""
        self._overflow = False
        self._new_command()

    # framing --------------------------------------------------------------------------

    def _new_command(self) -> None:
        self._segments: list[bytes] = []
        self._literals: list[tuple[bytes, bool]] = []
        self._lit: bytearray | None = None
        self._lit_binary = False
        self._line_used = 0  # line bytes (and non-APPEND literal bytes) of this command
        self._lit_total = 0
        self._tag: str | None = None
        self._name: str | None = None

    def _run(self) -> list[Event]:
        out: list[Event] = []
        buf = self._buf
        while not self._paused:
            state = self._state
            if state == _LITERAL or state == _SKIP:
                if self._need and not buf:
                    break
                take = min(self._need, len(buf))
                if state == _LITERAL:
                    self._lit += buf[:take]
                del buf[:take]
                self._need -= take
                if self._need == 0:
                    if state == _LITERAL:
                        self._literals.append((bytes(self._lit), self._lit_binary))
                        self._lit = None
                        self._state = _LINE
                    else:
                        self._state = _DISCARD
                        self._discard_raw = False
                        self._tail = b""
                    self._scan = 0
                continue
            if state == _DISCARD:
                nl = buf.find(b"\n")
                if nl < 0:
                    self._tail = (self._tail + bytes(buf[-_TAIL:]))[-_TAIL:]
                    buf.clear()
                    break
                tail = (self._tail + bytes(buf[max(0, nl - _TAIL) : nl]))[-_TAIL:]
                del buf[: nl + 1]
                self._scan = 0
                self._after_discard(tail, self._discard_raw)
                continue
            # _LINE
            nl = buf.find(b"\n", self._scan)
            if nl < 0:
                self._scan = len(buf)
                if len(buf) > self._budget() + 1:  # too long whatever comes next
                    raw = self._raw_line_expected()
                    out.append(self._too_long(buf, raw))
                    self._tail = bytes(buf[-_TAIL:])
                    self._discard_raw = raw
                    buf.clear()
                    self._scan = 0
                    self._state = _DISCARD
                    if raw:
                        self._paused = True
                break
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            self._scan = 0
            self._line(line, out)
        return out

    def _budget(self) -> int:
        return self.limits.max_line - self._line_used

    def _raw_line_expected(self) -> bool:
        return self.raw_mode and not self._segments

    def _too_long(self, prefix: bytes | bytearray, raw: bool) -> ParseError:
        if raw:
            tag = "*"
        elif self._tag is not None:
            tag = self._tag
        else:
            m = _TAG_BYTES_RE.match(prefix, 0, self.limits.max_line + 1)
            tag = m.group().decode("ascii") if m and prefix[m.end() : m.end() + 1] == b" " else "*"
        self._new_command()  # a refused command leaves nothing behind
        return ParseError(tag, "Line too long")

    def _after_discard(self, tail: bytes, raw: bool) -> None:
        """The discarded line ended: skip a non-synchronizing literal it announced."""
        self._state = _LINE
        if not raw:
            m = _literal_mark(tail)
            if m is not None and m.group(3):
                self._state = _SKIP
                self._need = int(m.group(2))

    def _line(self, line: bytes, out: list[Event]) -> None:
        text_len = len(line) - 1 if line.endswith(b"\r") else len(line)
        if self._raw_line_expected():
            if text_len > self.limits.max_line:
                out.append(self._too_long(line, True))
            else:
                out.append(RawLine(line[:text_len]))
            self._paused = True
            return
        if text_len > self._budget():
            out.append(self._too_long(line, False))
            self._after_discard(line[-_TAIL:], False)
            return
        m = _literal_mark(line)
        if m is None:
            if not self._segments and text_len == 0:
                return  # empty lines between commands are ignored
            self._segments.append(line[:text_len])
            event = parse_command(
                _SENTINEL.join(seg.decode("latin-1") for seg in self._segments), self._literals, self.binary
            )
            out.append(event)
            self._new_command()
            if isinstance(event, Command) and event.name in PAUSE_AFTER:
                self._paused = True
            return
        self._line_used += text_len
        self._segments.append(line[: m.start()])
        size = int(m.group(2))
        binary = bool(m.group(1))
        sync = not m.group(3)
        error = self._check_literal(size, binary, sync)
        if error is not None:
            out.append(error)
            self._new_command()
            if not sync:
                self._state = _SKIP
                self._need = size
            return
        if self._name != "APPEND":
            self._line_used += size
        self._lit_total += size
        if sync:
            out.append(Continuation())
        self._state = _LITERAL
        self._need = size
        self._lit = bytearray()
        self._lit_binary = binary

    def _check_literal(self, size: int, binary: bool, sync: bool) -> ParseError | None:
        if self._tag is None:  # first literal of the command: look at tag and name now
            m = _EARLY_RE.match(self._segments[0])
            tag, name, sub = m.group(1), (m.group(2) or b"").upper(), (m.group(3) or b"").upper()
            if not tag or _TAG_BYTES_RE.fullmatch(tag) is None:
                return ParseError("*", "Invalid tag")
            self._tag = tag.decode("ascii")
            cmd = name.decode("ascii")
            if name == b"UID":
                if sub.decode("ascii") not in UID_COMMANDS:
                    return ParseError(self._tag, f"Unknown command UID {_show(sub)}")
                cmd = sub.decode("ascii")
            elif cmd not in COMMANDS:
                return ParseError(self._tag, f"Unknown command {_show(name)}" if name else "Missing command")
            if cmd in _NO_ARGS:
                return ParseError(self._tag, f"Error in IMAP command {cmd}: unexpected literal")
            self._name = cmd
        tag = self._tag
        if binary and not self.binary:
            return ParseError(tag, "literal8 (~{n}) needs the BINARY extension")
        if binary and self._name != "APPEND":
            return ParseError(tag, "literal8 (~{n}) is only allowed for APPEND data")
        if not sync and not self.literal_plus:
            return ParseError(tag, "Non-synchronizing literals ({n+}) are not supported")
        if self._name == "APPEND":
            if size > self.limits.max_literal:
                return ParseError(tag, f"Message too big (limit {self.limits.max_literal} octets)", "TOOBIG")
            if self._lit_total + size > self.limits.max_command:
                return ParseError(tag, f"Command too big (limit {self.limits.max_command} octets)", "TOOBIG")
        elif size > self._budget():
            return ParseError(tag, f"Literal too big (limit {self.limits.max_line} octets)", "TOOBIG")
        return None

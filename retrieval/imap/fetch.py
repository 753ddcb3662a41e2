"""FETCH responses: one message's data items, rendered as RFC 3501 wants them."""

from __future__ import annotations

from retrieval.imap import ast
from retrieval.imap.selected import Selected
from retrieval.imap.wire import date_time, flag_list, literal, literal8
from retrieval.mime.message import Message
from retrieval.store.base import to_crlf

# items answered from the index alone
_META = {"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ", "SAVEDATE"}
# items answered from the header block (cached in the index)
_HEADER_ONLY = {"ENVELOPE", "RFC822.HEADER"}


def section_name(att: ast.FetchAtt) -> str:
    """`BODY[1.2.HEADER.FIELDS (FROM TO)]<0>` as the response names it."""
    sec = att.section or ast.Section()
    parts = [".".join(str(p) for p in sec.part)] if sec.part else []
    if sec.text:
        parts.append(sec.text)
    spec = ".".join(parts)
    if sec.fields:
        spec += " (" + " ".join(sec.fields) + ")"
    base = att.name.replace("[]", "")
    name = f"{base}[{spec}]"
    if att.partial is not None:
        name += f"<{att.partial[0]}>"
    return name


def needs_content(att: ast.FetchAtt) -> str | None:
    """None (index only), "header" or "full"."""
    if att.name in _META:
        return None
    if att.name in _HEADER_ONLY:
        return "header"
    if att.name == "BODY[]" and att.section is not None:
        sec = att.section
        if not sec.part and sec.text in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            return "header"
    return "full"


def sets_seen(att: ast.FetchAtt) -> bool:
    return (att.name in ("BODY[]", "BINARY[]") and not att.peek) or att.name in (
        "RFC822",
        "RFC822.TEXT",
    )


class _Content:
    """Loads the message (or just its header) once, when an item first needs it."""

    def __init__(self, selected: Selected, uid: int, level: str | None) -> None:
        self.selected = selected
        self.uid = uid
        self.level = level
        self._message: Message | None = None
        self._raw: bytes | None = None

    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = self.selected.box.read(self.uid)
        return self._raw

    def message(self) -> Message:
        if self._message is None:
            if self.level == "header":
                self._message = Message(self.selected.box.read_header(self.uid))
            else:
                self._message = Message(self.raw())
        return self._message


def _partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    if partial is None:
        return data
    start, length = partial
    return data[start : start + length]


def _body_literal(data: bytes | None) -> bytes:
    if data is None:
        return b"NIL"
    # RFC 3501 forbids NUL in a literal; Dovecot sends 0x80 in its place
    return literal(data.replace(b"\x00", b"\x80"))


def render(selected: Selected, seq: int, uid: int, atts: tuple[ast.FetchAtt, ...], uid_command: bool,
           extra_flags: bool = False, with_modseq: bool = False) -> bytes:
    box = selected.box
    row = box.info(uid)
    levels = {needs_content(a) for a in atts}
    level = "full" if "full" in levels else ("header" if "header" in levels else None)
    content = _Content(selected, uid, level)
    items: list[bytes] = []
    names = {a.name for a in atts}
    if uid_command or "UID" in names:
        items.append(b"UID %d" % uid)
    if extra_flags and "FLAGS" not in names:
        items.append(b"FLAGS " + flag_list(selected.flags_with_recent(uid)))
        selected.told[uid] = row.flags
    for att in atts:
        name = att.name
        if name == "UID":
            continue
        if name == "FLAGS":
            items.append(b"FLAGS " + flag_list(selected.flags_with_recent(uid)))
            selected.told[uid] = row.flags
        elif name == "INTERNALDATE":
            items.append(b"INTERNALDATE " + date_time(row.internaldate))
        elif name == "SAVEDATE":
            items.append(b"SAVEDATE " + date_time(row.savedate))
        elif name == "RFC822.SIZE":
            items.append(b"RFC822.SIZE %d" % row.size)
        elif name == "MODSEQ":
            items.append(b"MODSEQ (%d)" % row.modseq)
        elif name == "ENVELOPE":
            items.append(b"ENVELOPE " + content.message().envelope())
        elif name == "BODYSTRUCTURE":
            items.append(b"BODYSTRUCTURE " + content.message().bodystructure())
        elif name == "BODY" and att.section is None:
            items.append(b"BODY " + content.message().body())
        elif name == "RFC822":
            items.append(b"RFC822 " + _body_literal(to_crlf(content.raw())))
        elif name == "RFC822.HEADER":
            items.append(b"RFC822.HEADER " + _body_literal(content.message().section(ast.Section(text="HEADER"))))
        elif name == "RFC822.TEXT":
            items.append(b"RFC822.TEXT " + _body_literal(content.message().section(ast.Section(text="TEXT"))))
        elif name == "BODY[]":
            sec = att.section or ast.Section()
            if not sec.part and sec.text is None:
                data: bytes | None = to_crlf(content.raw())
            else:
                data = content.message().section(sec)
            data = _partial(data, att.partial) if data is not None else None
            items.append(section_name(att).encode() + b" " + _body_literal(data))
        elif name == "BINARY[]":
            sec = att.section or ast.Section()
            data = content.message().binary(sec.part)
            data = _partial(data, att.partial)
            out = literal8(data) if b"\x00" in data else literal(data)
            items.append(section_name(att).encode() + b" " + out)
        elif name == "BINARY.SIZE[]":
            sec = att.section or ast.Section()
            items.append(b"BINARY.SIZE[" + ".".join(str(p) for p in sec.part).encode() + b"] %d"
                         % content.message().binary_size(sec.part))
    if with_modseq and "MODSEQ" not in names:
        items.append(b"MODSEQ (%d)" % row.modseq)
    return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"

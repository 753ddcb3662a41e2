"""DSN parameters (RFC 3461) and their xtext encoding, both ways.

One place for the grammar: the server session parses RET/ENVID/NOTIFY/ORCPT
with it, the outbound client formats the same values to pass them on, and
the bounce reports print them. Values are kept *decoded* (ENVID "abc+x",
ORCPT "rfc822;bob@example.com"), so nothing downstream has to know xtext.
"""

from __future__ import annotations

import re

NOTIFY_KEYWORDS = ("SUCCESS", "FAILURE", "DELAY")
MAX_ENVID = 100  # RFC 3461 section 4.4, the xtext as sent
MAX_ORCPT = 500  # RFC 3461 section 4.2, the whole parameter value

_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-Fa-f]{2})*")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")  # an RFC 5322 atom
_UNICODE_ESCAPE = re.compile(r"\\x\{([0-9A-Fa-f]{2,6})\}")


def xtext_encode(text: str) -> str:
    """RFC 3461 section 4: "+", "=", controls, space and non-ASCII become +HH (UTF-8 octets)."""
    out = []
    for byte in text.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def xtext_decode(text: str) -> str:
    """The inverse of `xtext_encode`; ValueError for anything that is not xtext.

    Lower-case hex digits are taken (Postfix takes them too); the octets must be UTF-8."""
    if not text.isascii() or _XTEXT.fullmatch(text) is None:
        raise ValueError("not xtext")
    raw = re.sub(rb"\+([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode("ascii"))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("xtext is not UTF-8") from None


def parse_ret(value: str | None) -> str:
    """RET=FULL|HDRS -> "FULL"/"HDRS"; ValueError otherwise."""
    ret = (value or "").upper()
    if ret not in ("FULL", "HDRS"):
        raise ValueError("Bad RET parameter")
    return ret


def parse_envid(value: str | None) -> str:
    """ENVID=xtext -> the decoded id: printable US-ASCII, at most 100 characters as sent."""
    if not value or len(value) > MAX_ENVID:
        raise ValueError("Bad ENVID parameter")
    envid = xtext_decode(value)
    if not all(" " <= c <= "~" for c in envid):
        raise ValueError("Bad ENVID parameter")
    return envid


def parse_notify(value: str | None) -> tuple[str, ...]:
    """NOTIFY=NEVER | SUCCESS,FAILURE,DELAY (any subset, any order, no repeats) -> the keywords.

    The tuple keeps the client's order; ("NEVER",) for NEVER."""
    items = tuple(item.upper() for item in (value or "").split(","))
    if items == ("NEVER",):
        return items
    if not items or len(set(items)) != len(items) or not all(item in NOTIFY_KEYWORDS for item in items):
        raise ValueError("Bad NOTIFY parameter")
    return items


def parse_orcpt(value: str | None) -> str:
    """ORCPT=addr-type;xtext -> "addr-type;address" decoded, addr-type lower-cased.

    The "utf-8" type (RFC 6533 section 3) carries \\x{HEX} escapes and raw UTF-8
    instead of +HH; other types are xtext and must decode to ASCII."""
    if not value or len(value.encode("utf-8")) > MAX_ORCPT:
        raise ValueError("Bad ORCPT parameter")
    addr_type, semi, address = value.partition(";")
    if not semi or _ADDR_TYPE.fullmatch(addr_type) is None or not address:
        raise ValueError("Bad ORCPT parameter")
    addr_type = addr_type.lower()
    if addr_type == "utf-8":
        decoded = _decode_utf8_addr(address)
    else:
        decoded = xtext_decode(address)
        if not decoded.isascii():
            raise ValueError("Bad ORCPT parameter")
    if not decoded or any(ord(c) < 32 or ord(c) == 127 for c in decoded):
        raise ValueError("Bad ORCPT parameter")
    return f"{addr_type};{decoded}"


def _decode_utf8_addr(text: str) -> str:
    """RFC 6533 utf-8-addr-xtext / utf-8-addr-unitext: QCHARs, UTF-8 and \\x{HEX}."""
    out = []
    pos = 0
    for m in _UNICODE_ESCAPE.finditer(text):
        out.append(text[pos : m.start()])
        code = int(m.group(1), 16)
        if code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise ValueError("Bad ORCPT parameter")
        out.append(chr(code))
        pos = m.end()
    out.append(text[pos:])
    literal = "".join(piece for i, piece in enumerate(out) if i % 2 == 0)
    # outside the escapes: no "+", "=", "\\", controls or spaces (QCHAR / QUCHAR)
    if any(c in "+=\\" or ord(c) <= 32 or ord(c) == 127 for c in literal):
        raise ValueError("Bad ORCPT parameter")
    return "".join(out)


def encode_utf8_addr(address: str) -> str:
    """RFC 6533 utf-8-addr-xtext: ASCII only, non-ASCII and specials as \\x{HEX}.

    For passing a utf-8 ORCPT to a server, or printing one in a plain
    message/delivery-status."""
    return "".join(
        c if 33 <= ord(c) <= 126 and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address
    )


def format_orcpt(orcpt: str) -> str:
    """A kept ORCPT ("rfc822;addr") back into its parameter value ("rfc822;xtext")."""
    addr_type, _, address = orcpt.partition(";")
    if addr_type == "utf-8":
        return f"{addr_type};{encode_utf8_addr(address)}"
    return f"{addr_type};{xtext_encode(address)}"


def mail_params(ret: str | None, envid: str | None) -> list[str]:
    """MAIL FROM parameters to pass the DSN request on to a server that offers DSN."""
    params = []
    if ret:
        params.append(f"RET={ret}")
    if envid is not None:
        params.append(f"ENVID={xtext_encode(envid)}")
    return params


def rcpt_params(notify: tuple[str, ...] | None, orcpt: str | None) -> list[str]:
    """RCPT TO parameters to pass NOTIFY and ORCPT on (RFC 3461 section 6.1)."""
    params = []
    if notify:
        params.append("NOTIFY=" + ",".join(notify))
    if orcpt is not None:
        params.append("ORCPT=" + format_orcpt(orcpt))
    return params

"""`retrieval config show`: every effective setting as TOML, like Postfix's `postconf`.

Driven by `config._SCHEMA` and the section dataclasses, so a key added there
shows up here without a change. The output is TOML that `load_config` reads
back to the same `Config` (paths are printed resolved, relative ones made
absolute against the config file's folder): an admin can keep it as a config.

Unset optional keys (None; TOML has no null) are printed as comments, which
read back as "unset". A value that differs from its default carries the
default in a trailing comment.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from retrieval import config as C

_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_key(key: str) -> str:
    return key if key and set(key) <= _BARE_KEY else toml_string(key)


def toml_value(value: Any, kind: str | None = None) -> str:
    """The TOML for one converted value, the inverse of config._convert for every kind it has."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if math.isnan(value):
            return "nan"
        return repr(value)
    if isinstance(value, (str, Path)):
        return toml_string(str(value))
    if isinstance(value, dict):
        return _inline_table(value.items())
    if kind == "sni":  # ((name, cert, key), ...) -> { "name" = { cert = "...", key = "..." } }
        return _inline_table((name, {"cert": cert, "key": key}) for name, cert, key in value)
    if isinstance(value, (tuple, list)):
        pairs = all(isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value)
        if kind == "special_use" or (value and pairs and kind not in ("listen", "domains", "networks")):
            return _inline_table(value)
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__} {value!r}")


def _inline_table(items: Any) -> str:
    body = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in items)
    return "{ " + body + " }" if body else "{}"


def set_keys(path: Path) -> dict[str, set[str]]:
    """The keys a config file sets, by section (the file is already known to load)."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    return {section: set(table) for section, table in data.items() if isinstance(table, dict)}


def render(config: C.Config, only: dict[str, set[str]] | None = None) -> str:
    """Every setting of `config` (or only those in `only`, for -n) as TOML, section by section."""
    lines: list[str] = []
    for section, schema in C._SCHEMA.items():
        current = getattr(config, section)
        default = C._SECTION_CLASSES[section]()
        names = {f.name for f in fields(current)}
        body: list[str] = []
        for key, kind in schema.items():
            if key not in names or (only is not None and key not in only.get(section, ())):
                continue
            value, default_value = getattr(current, key), getattr(default, key)
            if value is None:
                body.append(f"# {key} =  (unset)")
                continue
            line = f"{key} = {toml_value(value, kind)}"
            if value != default_value:
                shown = "unset" if default_value is None else toml_value(default_value, kind)
                line += f"  # default: {shown}"
            body.append(line)
        if body:
            lines.append(f"[{section}]")
            lines.extend(body)
            lines.append("")
    return "\n".join(lines)

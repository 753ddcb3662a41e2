"""Dovecot password schemes: make and check `{SCHEME}hash` values as Dovecot stores them.

A passwd file written by `doveadm pw` must keep working after a migration, and a file we
write must keep working if the admin goes back to Dovecot; so every scheme here reads and
writes exactly Dovecot's stored form.  The crypt(3) family and Argon2 go through passlib
(one `CryptContext` recognises a bare crypt hash); the plain digest schemes (SHA*, SSHA*,
MD5 variants), PBKDF2, SCRAM and CRAM-MD5 are a few lines of `hashlib`/`hmac` because passlib
has no handler for Dovecot's layout of them (PBKDF2, SCRAM, CRAM-MD5) or limits salt sizes
that Dovecot accepts (the `ldap_salted_*` handlers).

Stored form: `{SCHEME}body` or `{SCHEME.HEX}body` / `{SCHEME.B64}body` (Dovecot's encoding
suffixes, `.BASE64` too); a value without `{...}` is CRYPT.  Scheme names are
case-insensitive.  `verify_password` never raises on a malformed stored value: a hash we
cannot read is a password that does not match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from passlib.context import CryptContext
from passlib.hash import argon2 as _argon2
from passlib.hash import bcrypt as _bcrypt
from passlib.hash import des_crypt as _des_crypt
from passlib.hash import md5_crypt as _md5_crypt
from passlib.hash import pbkdf2_sha1 as _pbkdf2_sha1
from passlib.hash import sha256_crypt as _sha256_crypt
from passlib.hash import sha512_crypt as _sha512_crypt

__all__ = [
    "DEFAULT_SCHEME",
    "SCHEMES",
    "ScramCredentials",
    "UnknownSchemeError",
    "canonical_scheme",
    "cram_md5_context",
    "cram_md5_response",
    "cram_md5_verify",
    "dummy_hash",
    "hash_like",
    "hash_password",
    "is_known_scheme",
    "plaintext_of",
    "scheme_of",
    "scram_credentials",
    "stored_problem",
    "verify_password",
]

DEFAULT_SCHEME = "BLF-CRYPT"

# Canonical names, strongest first.  `.HEX`/`.B64` variants of each are accepted too.
SCHEMES: tuple[str, ...] = (
    "ARGON2ID",
    "ARGON2I",
    "BLF-CRYPT",
    "SHA512-CRYPT",
    "SHA256-CRYPT",
    "PBKDF2",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "MD5-CRYPT",
    "CRYPT",
    "DES-CRYPT",
    "SSHA512",
    "SSHA256",
    "SSHA",
    "SMD5",
    "SHA512",
    "SHA256",
    "SHA",
    "LDAP-MD5",
    "PLAIN-MD5",
    "CRAM-MD5",
    "PLAIN",
)

# Dovecot's other names for the same schemes.
_ALIASES = {
    "CLEAR": "PLAIN",
    "CLEARTEXT": "PLAIN",
    "SHA1": "SHA",
    "MD5": "MD5-CRYPT",  # Dovecot's {MD5} is md5-crypt, not a bare digest
    "HMAC-MD5": "CRAM-MD5",
    "BLF": "BLF-CRYPT",
}
_PLAIN_NAMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT"})
_ENCODING_SUFFIXES = {"HEX": "hex", "B64": "b64", "BASE64": "b64"}

_SALT_LEN = 8  # bytes for SSHA*/SMD5; Dovecot writes 4 and reads any length
_PBKDF2_SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BCRYPT_MAX = 72  # crypt_blowfish (Dovecot) ignores bytes past 72; passlib refuses them
_SCRAM_ITERATIONS = 4096  # Dovecot's default; clients compute it on every login

# One context recognises every bare crypt(3) hash Dovecot's CRYPT scheme can check.
_CRYPT_CONTEXT = CryptContext(
    schemes=["bcrypt", "sha512_crypt", "sha256_crypt", "md5_crypt", "des_crypt"],
    default="bcrypt",
)


class UnknownSchemeError(ValueError):
    """The scheme name is not one Dovecot (or we) know; the message lists those we do."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown password scheme {name!r}; known: {', '.join(SCHEMES)}")


# --------------------------------------------------------------------------- helpers


def _to_bytes(password: str | bytes) -> bytes:
    return password if isinstance(password, bytes) else password.encode("utf-8")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    text = text.strip()
    text += "=" * (-len(text) % 4)  # Dovecot tolerates missing padding
    return base64.b64decode(text, validate=True)


@dataclass(frozen=True)
class _Scheme:
    """How one scheme makes a raw value from a password and checks one.

    `raw` is what sits inside the encoding: digest bytes for SHA*, the ASCII crypt string
    for the crypt family.  `params` are cost settings (rounds, memory) so that a dummy hash
    can cost exactly what a real one in the file costs.
    """

    name: str
    encoding: str  # "none" | "b64" | "hex": Dovecot's default encoding for this scheme
    make: Callable[[bytes, dict[str, int | str]], bytes]
    check: Callable[[bytes, bytes], bool]
    raw_len: int | None = None  # fixed digest length: lets us spot hex in a b64 scheme
    params_of: Callable[[bytes], dict[str, int | str]] | None = None
    valid: Callable[[bytes], bool] | None = None  # cheap shape check for problems()


# ----------------------------------------------------------------- plain digest schemes


def _digest_scheme(name: str, algo: str, encoding: str = "b64") -> _Scheme:
    size = hashlib.new(algo).digest_size

    def make(pw: bytes, params: dict[str, int | str]) -> bytes:
        return hashlib.new(algo, pw).digest()

    def check(pw: bytes, raw: bytes) -> bool:
        return hmac.compare_digest(hashlib.new(algo, pw).digest(), raw)

    return _Scheme(name, encoding, make, check, raw_len=size, valid=lambda raw: len(raw) == size)


def _salted_scheme(name: str, algo: str) -> _Scheme:
    size = hashlib.new(algo).digest_size

    def make(pw: bytes, params: dict[str, int | str]) -> bytes:
        salt = secrets.token_bytes(_SALT_LEN)
        return hashlib.new(algo, pw + salt).digest() + salt

    def check(pw: bytes, raw: bytes) -> bool:
        if len(raw) <= size:
            return False
        digest, salt = raw[:size], raw[size:]
        return hmac.compare_digest(hashlib.new(algo, pw + salt).digest(), digest)

    return _Scheme(name, "b64", make, check, valid=lambda raw: len(raw) > size)


def _plain_make(pw: bytes, params: dict[str, int | str]) -> bytes:
    return pw


def _plain_check(pw: bytes, raw: bytes) -> bool:
    return hmac.compare_digest(pw, raw)


# ------------------------------------------------------------------- crypt(3) family


def _crypt_text(raw: bytes) -> str | None:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        return None


def _crypt_check(pw: bytes, raw: bytes) -> bool:
    """Check against any crypt(3) format, as Dovecot's crypt()-based schemes do."""
    text = _crypt_text(raw)
    if not text:
        return False
    try:
        handler = _CRYPT_CONTEXT.identify(text, resolve=True, required=False)
        if handler is None:
            return False
        if handler.name == "bcrypt":
            pw = pw[:_BCRYPT_MAX]
        return bool(handler.verify(pw, text))
    except (ValueError, TypeError):
        return False


def _crypt_valid(raw: bytes) -> bool:
    text = _crypt_text(raw)
    if not text:
        return False
    try:
        handler = _CRYPT_CONTEXT.identify(text, resolve=True, required=False)
        # a salt-only config string ("$6$salt") parses too: it must carry a checksum
        return handler is not None and bool(handler.from_string(text).checksum)
    except (ValueError, TypeError):
        return False


def _crypt_params(raw: bytes) -> dict[str, int | str]:
    text = _crypt_text(raw) or ""
    try:
        handler = _CRYPT_CONTEXT.identify(text, resolve=True, required=False)
        if handler is None:
            return {}
        parsed = handler.from_string(text)
    except (ValueError, TypeError):
        return {}
    params: dict[str, int | str] = {"handler": handler.name}
    rounds = getattr(parsed, "rounds", None)
    if isinstance(rounds, int) and handler.name != "md5_crypt":
        params["rounds"] = rounds
    return params


_HANDLERS = {
    "bcrypt": _bcrypt,
    "sha512_crypt": _sha512_crypt,
    "sha256_crypt": _sha256_crypt,
    "md5_crypt": _md5_crypt,
    "des_crypt": _des_crypt,
}


def _crypt_scheme(name: str, handler_name: str) -> _Scheme:
    def make(pw: bytes, params: dict[str, int | str]) -> bytes:
        hname = str(params.get("handler", handler_name))
        handler = _HANDLERS[hname]
        settings: dict[str, int | str] = {}
        if hname == "bcrypt":
            settings["ident"] = "2y"  # what Dovecot writes; every bcrypt reads it
            pw = pw[:_BCRYPT_MAX]
        if "rounds" in params:
            settings["rounds"] = int(params["rounds"])
        if settings:
            handler = handler.using(**settings)
        return handler.hash(pw).encode("ascii")

    return _Scheme(name, "none", make, _crypt_check, params_of=_crypt_params, valid=_crypt_valid)


# ------------------------------------------------------------------------------ Argon2


def _argon2_scheme(name: str, kind: str) -> _Scheme:
    prefix = f"$argon2{kind.lower()}$".encode()

    def make(pw: bytes, params: dict[str, int | str]) -> bytes:
        # parallelism 1: Dovecot verifies through libsodium, which computes one lane
        settings: dict[str, int | str] = {"type": kind, "parallelism": 1}
        for key in ("rounds", "memory_cost", "parallelism"):
            if key in params:
                settings[key] = int(params[key])
        return _argon2.using(**settings).hash(pw).encode("ascii")

    def check(pw: bytes, raw: bytes) -> bool:
        text = _crypt_text(raw)
        if not text or not text.startswith("$argon2"):
            return False
        try:
            return bool(_argon2.verify(pw, text))
        except (ValueError, TypeError):
            return False

    def params_of(raw: bytes) -> dict[str, int | str]:
        try:
            parsed = _argon2.from_string(_crypt_text(raw) or "")
        except (ValueError, TypeError):
            return {}
        return {
            "rounds": parsed.rounds,
            "memory_cost": parsed.memory_cost,
            "parallelism": parsed.parallelism,
        }

    def valid(raw: bytes) -> bool:
        if not raw.startswith(prefix):
            return False
        try:
            _argon2.from_string(raw.decode("ascii"))
        except (ValueError, TypeError, UnicodeDecodeError):
            return False
        return True

    return _Scheme(name, "none", make, check, params_of=params_of, valid=valid)


# ------------------------------------------------------------------------------ PBKDF2


def _pbkdf2_parse(raw: bytes) -> tuple[bytes, int, bytes] | None:
    """Dovecot's `$1$salt$rounds$hexhash` (PBKDF2-HMAC-SHA1, salt used as text)."""
    parts = raw.split(b"$")
    if len(parts) != 5 or parts[0] or parts[1] != b"1" or not parts[2]:
        return None
    try:
        rounds = int(parts[3])
        digest = bytes.fromhex(parts[4].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
    if rounds <= 0 or not digest:
        return None
    return parts[2], rounds, digest


def _pbkdf2_make(pw: bytes, params: dict[str, int | str]) -> bytes:
    salt = "".join(secrets.choice(_PBKDF2_SALT_CHARS) for _ in range(16)).encode("ascii")
    rounds = int(params.get("rounds", _pbkdf2_sha1.default_rounds))
    digest = hashlib.pbkdf2_hmac("sha1", pw, salt, rounds)
    return b"$1$" + salt + b"$" + str(rounds).encode() + b"$" + digest.hex().encode()


def _pbkdf2_check(pw: bytes, raw: bytes) -> bool:
    parsed = _pbkdf2_parse(raw)
    if parsed is None:
        return False
    salt, rounds, digest = parsed
    ours = hashlib.pbkdf2_hmac("sha1", pw, salt, rounds, dklen=len(digest))
    return hmac.compare_digest(ours, digest)


def _pbkdf2_params(raw: bytes) -> dict[str, int | str]:
    parsed = _pbkdf2_parse(raw)
    return {"rounds": parsed[1]} if parsed else {}


# -------------------------------------------------------------------------------- SCRAM


@dataclass(frozen=True)
class ScramCredentials:
    """What a SCRAM server needs (RFC 5802 section 3): never the password itself."""

    hash_name: str  # hashlib name: "sha256" or "sha1"
    iterations: int
    salt: bytes
    stored_key: bytes
    server_key: bytes


def _scram_derive(hash_name: str, pw: bytes, salt: bytes, iterations: int) -> ScramCredentials:
    salted = hashlib.pbkdf2_hmac(hash_name, pw, salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    server_key = hmac.new(salted, b"Server Key", hash_name).digest()
    stored_key = hashlib.new(hash_name, client_key).digest()
    return ScramCredentials(hash_name, iterations, salt, stored_key, server_key)


def _scram_parse(hash_name: str, raw: bytes) -> ScramCredentials | None:
    """Dovecot's `iterations,b64salt,b64storedkey,b64serverkey`."""
    try:
        parts = raw.decode("ascii").split(",")
        if len(parts) != 4:
            return None
        iterations = int(parts[0])
        salt, stored_key, server_key = (_unb64(p) for p in parts[1:])
    except (ValueError, UnicodeDecodeError, binascii.Error):
        return None
    size = hashlib.new(hash_name).digest_size
    if iterations <= 0 or not salt or len(stored_key) != size or len(server_key) != size:
        return None
    return ScramCredentials(hash_name, iterations, salt, stored_key, server_key)


def _scram_scheme(name: str, hash_name: str) -> _Scheme:
    def make(pw: bytes, params: dict[str, int | str]) -> bytes:
        iterations = int(params.get("rounds", _SCRAM_ITERATIONS))
        cred = _scram_derive(hash_name, pw, secrets.token_bytes(16), iterations)
        text = ",".join(
            [str(iterations), _b64(cred.salt), _b64(cred.stored_key), _b64(cred.server_key)]
        )
        return text.encode("ascii")

    def check(pw: bytes, raw: bytes) -> bool:
        stored = _scram_parse(hash_name, raw)
        if stored is None:
            return False
        ours = _scram_derive(hash_name, pw, stored.salt, stored.iterations)
        return hmac.compare_digest(ours.stored_key, stored.stored_key) and hmac.compare_digest(
            ours.server_key, stored.server_key
        )

    def params_of(raw: bytes) -> dict[str, int | str]:
        stored = _scram_parse(hash_name, raw)
        return {"rounds": stored.iterations} if stored else {}

    return _Scheme(
        name, "none", make, check, params_of=params_of,
        valid=lambda raw: _scram_parse(hash_name, raw) is not None,
    )


# ----------------------------------------------------------------------------- CRAM-MD5
# Dovecot stores the HMAC-MD5 key schedule: the MD5 state after the outer (opad) block,
# then after the inner (ipad) block, each as four little-endian 32-bit words.  hashlib
# cannot resume from a raw state, so here is MD5's compression function (RFC 1321).

_MD5_SHIFTS = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_MD5_K = [int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64)]
_MD5_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MASK = 0xFFFFFFFF


def _md5_compress(state: tuple[int, int, int, int], block: bytes) -> tuple[int, int, int, int]:
    a, b, c, d = state
    words = struct.unpack("<16I", block)
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = (f + a + _MD5_K[i] + words[g]) & _MASK
        a, d, c = d, c, b
        b = (b + ((f << _MD5_SHIFTS[i]) | (f >> (32 - _MD5_SHIFTS[i])))) & _MASK
    return (
        (state[0] + a) & _MASK,
        (state[1] + b) & _MASK,
        (state[2] + c) & _MASK,
        (state[3] + d) & _MASK,
    )


def _md5_finish(state: tuple[int, int, int, int], data: bytes, done: int) -> bytes:
    """MD5 of (`done` bytes already folded into `state`) + `data`."""
    total = done + len(data)
    data += b"\x80" + b"\0" * ((55 - total) % 64) + struct.pack("<Q", (total * 8) & (2**64 - 1))
    for i in range(0, len(data), 64):
        state = _md5_compress(state, data[i : i + 64])
    return struct.pack("<4I", *state)


def _cram_make(pw: bytes, params: dict[str, int | str] | None = None) -> bytes:
    key = hashlib.md5(pw).digest() if len(pw) > 64 else pw
    key = key.ljust(64, b"\0")
    inner = _md5_compress(_MD5_IV, bytes(k ^ 0x36 for k in key))
    outer = _md5_compress(_MD5_IV, bytes(k ^ 0x5C for k in key))
    return struct.pack("<4I", *outer) + struct.pack("<4I", *inner)


def _cram_check(pw: bytes, raw: bytes) -> bool:
    return len(raw) == 32 and hmac.compare_digest(_cram_make(pw), raw)


# ------------------------------------------------------------------------------ registry

_TABLE: dict[str, _Scheme] = {
    s.name: s
    for s in (
        _argon2_scheme("ARGON2ID", "ID"),
        _argon2_scheme("ARGON2I", "I"),
        _crypt_scheme("BLF-CRYPT", "bcrypt"),
        _crypt_scheme("SHA512-CRYPT", "sha512_crypt"),
        _crypt_scheme("SHA256-CRYPT", "sha256_crypt"),
        _crypt_scheme("MD5-CRYPT", "md5_crypt"),
        _crypt_scheme("CRYPT", "bcrypt"),  # Dovecot's CRYPT writes bcrypt too
        _crypt_scheme("DES-CRYPT", "des_crypt"),
        _Scheme("PBKDF2", "none", _pbkdf2_make, _pbkdf2_check, params_of=_pbkdf2_params,
                valid=lambda raw: _pbkdf2_parse(raw) is not None),
        _scram_scheme("SCRAM-SHA-256", "sha256"),
        _scram_scheme("SCRAM-SHA-1", "sha1"),
        _salted_scheme("SSHA512", "sha512"),
        _salted_scheme("SSHA256", "sha256"),
        _salted_scheme("SSHA", "sha1"),
        _salted_scheme("SMD5", "md5"),
        _digest_scheme("SHA512", "sha512"),
        _digest_scheme("SHA256", "sha256"),
        _digest_scheme("SHA", "sha1"),
        _digest_scheme("LDAP-MD5", "md5"),
        _digest_scheme("PLAIN-MD5", "md5", "hex"),
        _Scheme("CRAM-MD5", "hex", _cram_make, _cram_check, raw_len=32,
                valid=lambda raw: len(raw) == 32),
        _Scheme("PLAIN", "none", _plain_make, _plain_check),
    )
}
assert set(_TABLE) == set(SCHEMES)


def _resolve(name: str) -> tuple[_Scheme, str | None, str]:
    """Scheme object, explicit encoding (or None) and the canonical spelling of `name`."""
    upper = name.strip().upper()
    base, encoding = upper, None
    head, dot, tail = upper.rpartition(".")
    if dot and tail in _ENCODING_SUFFIXES:
        base, encoding = head, _ENCODING_SUFFIXES[tail]
    canonical = _ALIASES.get(base, base)
    scheme = _TABLE.get(canonical)
    if scheme is None:
        raise UnknownSchemeError(name)
    suffix = {"hex": ".HEX", "b64": ".B64"}.get(encoding or "", "")
    return scheme, encoding, canonical + suffix


def canonical_scheme(name: str) -> str:
    """`sha.hex` -> `SHA.HEX`, `clear` -> `PLAIN`; raises UnknownSchemeError."""
    return _resolve(name)[2]


def is_known_scheme(name: str) -> bool:
    try:
        _resolve(name)
    except UnknownSchemeError:
        return False
    return True


def _split(stored: str) -> tuple[str, str]:
    """(scheme as written, body).  No `{...}` prefix means a crypt(3) hash."""
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 1:
            return stored[1:end], stored[end + 1 :]
    return "CRYPT", stored


def scheme_of(stored: str) -> str:
    """The scheme a stored value claims, upper-cased, aliases kept (`{clear}x` -> `CLEAR`).

    Unknown names come back as written (upper-cased) so that an admin listing sees them.
    """
    return _split(stored)[0].strip().upper()


def _encode(raw: bytes, encoding: str) -> str:
    if encoding == "hex":
        return raw.hex()
    if encoding == "b64":
        return _b64(raw)
    return raw.decode("utf-8", "surrogateescape")


def _decode(scheme: _Scheme, explicit: str | None, body: str) -> bytes | None:
    try:
        if explicit == "hex":
            return bytes.fromhex(body)
        if explicit == "b64":
            return _unb64(body)
        if scheme.encoding == "none":
            return body.encode("utf-8", "surrogateescape")
        if scheme.raw_len and len(body) == 2 * scheme.raw_len:
            try:  # Dovecot reads hex in a base64 scheme when the length says so
                return bytes.fromhex(body)
            except ValueError:
                pass
        if scheme.encoding == "hex":
            return bytes.fromhex(body)
        return _unb64(body)
    except (ValueError, binascii.Error):
        return None


def _parse(stored: str) -> tuple[_Scheme, str, bytes] | None:
    try:
        scheme, explicit, canonical = _resolve(_split(stored)[0])
    except UnknownSchemeError:
        return None
    raw = _decode(scheme, explicit, _split(stored)[1])
    if raw is None:
        return None
    return scheme, canonical, raw


# ---------------------------------------------------------------------------- public API


def hash_password(password: str | bytes, scheme: str = DEFAULT_SCHEME, *, rounds: int | None = None) -> str:
    """The stored form `{SCHEME}...`, formatted as `doveadm pw -s SCHEME` prints it.

    `rounds` is the cost (`doveadm pw -r`): bcrypt log-rounds, sha-crypt/PBKDF2 rounds,
    SCRAM iterations, Argon2 passes; None takes passlib's production default.
    """
    obj, explicit, _ = _resolve(scheme)
    params: dict[str, int | str] = {} if rounds is None else {"rounds": rounds}
    raw = obj.make(_to_bytes(password), params)
    # doveadm keeps the name it was given ({CLEAR}, {MD5}, {SHA1}), upper-cased
    return "{" + scheme.strip().upper() + "}" + _encode(raw, explicit or obj.encoding)


def verify_password(password: str | bytes, stored: str) -> bool:
    """Whether `password` matches `stored`; False (never an exception) for anything unreadable."""
    try:
        parsed = _parse(stored)
        if parsed is None:
            return False
        scheme, _, raw = parsed
        if not raw:
            return False  # an empty hash never matches, not even an empty password
        return bool(scheme.check(_to_bytes(password), raw))
    except Exception:  # noqa: BLE001 - a broken hash must read as "no", not crash a login
        return False


# passlib's crypt(3) family runs in pure Python here and holds the GIL for the whole
# hash (about a second at default rounds): in a thread it would still stall the
# reactor. These run in a worker process; bcrypt, Argon2 and PBKDF2 release the GIL.
_GIL_BOUND = frozenset({"SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT", "DES-CRYPT", "CRYPT"})
_pool = None


def _worker_pool():  # type: ignore[no-untyped-def]
    global _pool
    if _pool is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        import atexit

        _pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
        atexit.register(_pool.shutdown, wait=True, cancel_futures=True)
    return _pool


def verify_password_isolated(password: str | bytes, stored: str) -> bool:
    """`verify_password` that never holds the GIL long: BLOCKING, call it from a thread."""
    parsed = _parse(stored)
    if parsed is None or parsed[0].name not in _GIL_BOUND:
        return verify_password(password, stored)
    try:
        return bool(_worker_pool().submit(verify_password, password, stored).result(timeout=60))
    except Exception:  # noqa: BLE001 - a dead worker must read as "no", not crash a login
        return False


def stored_problem(stored: str) -> str | None:
    """Why `stored` can never match (unknown scheme, malformed body), or None if it looks fine."""
    name, body = _split(stored)
    if not stored:
        return "the password field is empty"
    try:
        scheme, explicit, canonical = _resolve(name)
    except UnknownSchemeError as exc:
        return str(exc)
    raw = _decode(scheme, explicit, body)
    if raw is None:
        return f"the {canonical} hash is not valid {explicit or scheme.encoding} text"
    if not raw:
        return f"the {canonical} hash is empty"
    if scheme.valid is not None and not scheme.valid(raw):
        return f"the {canonical} hash is malformed"
    return None


def plaintext_of(stored: str) -> str | None:
    """The password itself when stored as PLAIN/CLEAR (APOP and CRAM-MD5 need it), else None."""
    name, _ = _split(stored)
    try:
        _, _, canonical = _resolve(name)
    except UnknownSchemeError:
        return None
    if canonical.split(".")[0] != "PLAIN":
        return None
    parsed = _parse(stored)
    if parsed is None:
        return None
    return parsed[2].decode("utf-8", "surrogateescape")


def cram_md5_context(stored: str) -> bytes | None:
    """The 32-byte HMAC-MD5 context a CRAM-MD5 server needs, or None if `stored` cannot give it.

    Works for `{CRAM-MD5}` (the context itself) and for PLAIN (computed from the password).
    """
    parsed = _parse(stored)
    if parsed is None:
        return None
    scheme, _, raw = parsed
    if scheme.name == "CRAM-MD5":
        return raw if len(raw) == 32 else None
    if scheme.name == "PLAIN":
        return _cram_make(raw)
    return None


def cram_md5_response(context: bytes, challenge: str | bytes) -> str:
    """HMAC-MD5(password, challenge) as lower-case hex, computed from the stored context."""
    if len(context) != 32:
        raise ValueError("a CRAM-MD5 context is 32 bytes")
    o = struct.unpack("<4I", context[:16])
    i = struct.unpack("<4I", context[16:])
    inner_digest = _md5_finish((i[0], i[1], i[2], i[3]), _to_bytes(challenge), 64)
    return _md5_finish((o[0], o[1], o[2], o[3]), inner_digest, 64).hex()


def cram_md5_verify(stored: str, challenge: str | bytes, response_hex: str) -> bool:
    """Check a CRAM-MD5 client's digest (RFC 2195) against `stored`."""
    context = cram_md5_context(stored)
    if context is None:
        return False
    try:
        expected = cram_md5_response(context, challenge)
        return hmac.compare_digest(expected.encode("ascii"), response_hex.strip().lower().encode("ascii"))
    except (ValueError, UnicodeError, struct.error):
        return False


def scram_credentials(stored: str, hash_name: str = "sha256") -> ScramCredentials | None:
    """SCRAM server credentials from `{SCRAM-SHA-*}` or from PLAIN (with a fresh salt)."""
    parsed = _parse(stored)
    if parsed is None:
        return None
    scheme, _, raw = parsed
    wanted = {"sha256": "SCRAM-SHA-256", "sha1": "SCRAM-SHA-1"}.get(hash_name)
    if wanted is None:
        return None
    if scheme.name == wanted:
        return _scram_parse(hash_name, raw)
    if scheme.name == "PLAIN":
        return _scram_derive(hash_name, raw, secrets.token_bytes(16), _SCRAM_ITERATIONS)
    return None


def _cost_key(stored: str | None, scheme: str) -> tuple[str, tuple[tuple[str, int | str], ...]]:
    obj, explicit, canonical = _resolve(scheme)
    if stored is not None:
        parsed = _parse(stored)
        if parsed is not None and parsed[0] is obj and obj.params_of is not None:
            return canonical, tuple(sorted(obj.params_of(parsed[2]).items()))
    return canonical, ()


@lru_cache(maxsize=64)
def _dummy(canonical: str, params: tuple[tuple[str, int | str], ...]) -> str:
    obj, explicit, _ = _resolve(canonical)
    raw = obj.make(secrets.token_bytes(16).hex().encode("ascii"), dict(params))
    return "{" + canonical + "}" + _encode(raw, explicit or obj.encoding)


def dummy_hash(scheme: str = DEFAULT_SCHEME, like: str | None = None) -> str:
    """A hash of a random password to check unknown users against, so they cost the same time.

    With `like` (a real stored value of the same scheme), the dummy copies its cost
    settings: a file made by `doveadm pw` has bcrypt cost 5, not passlib's 12.  Cached.
    """
    return _dummy(*_cost_key(like, scheme))


def hash_like(password: str | bytes, stored: str) -> str:
    """Hash `password` with the scheme and cost of `stored` (for rehash-on-login)."""
    name, _ = _split(stored)
    canonical, params = _cost_key(stored, name)
    obj, explicit, _ = _resolve(canonical)
    raw = obj.make(_to_bytes(password), dict(params))
    written = "{" + name.strip().upper() + "}" if stored.startswith("{") else ""
    return written + _encode(raw, explicit or obj.encoding)

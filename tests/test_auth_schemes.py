"""Password schemes: our hashes, Dovecot's hashes (`doveadm pw`), and hostile stored values."""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import subprocess
from functools import lru_cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.auth import schemes
from retrieval.auth.schemes import (
    SCHEMES,
    canonical_scheme,
    cram_md5_context,
    cram_md5_response,
    cram_md5_verify,
    dummy_hash,
    hash_like,
    hash_password,
    plaintext_of,
    scheme_of,
    scram_credentials,
    stored_problem,
    verify_password,
)

PASSWORD = "sécret Pass:1"  # non-ASCII and a colon: both must survive every scheme
WRONG = "secret Pass:1"  # differs within 8 bytes: DES-CRYPT reads only those

# Encoding variants and Dovecot's aliases, on top of the canonical names.
VARIANTS = ("SHA512.HEX", "SSHA.HEX", "SHA256.B64", "PLAIN.B64", "PLAIN.HEX", "CRAM-MD5.B64",
            "BLF-CRYPT.HEX", "CLEAR", "CLEARTEXT", "SHA1", "MD5", "HMAC-MD5")
ALL = SCHEMES + VARIANTS

DOVEADM = shutil.which("doveadm")


@lru_cache(maxsize=1)
def _doveadm_schemes() -> frozenset[str]:
    out = subprocess.run([DOVEADM, "pw", "-l"], capture_output=True, text=True, timeout=30)  # type: ignore[list-item]
    return frozenset(out.stdout.split())


def _need_doveadm(scheme: str) -> None:
    if DOVEADM is None:
        pytest.skip("doveadm not installed (apt-get install dovecot-core): cannot cross-check with Dovecot")
    base = scheme.split(".")[0]
    if base not in _doveadm_schemes():
        pytest.skip(f"this doveadm does not list {base} in `doveadm pw -l`")


def doveadm_hash(scheme: str, password: str) -> str:
    _need_doveadm(scheme)
    out = subprocess.run([DOVEADM, "pw", "-s", scheme, "-p", password],  # type: ignore[list-item]
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        pytest.skip(f"doveadm pw -s {scheme} failed: {out.stderr.strip()}")
    return out.stdout.strip()


def doveadm_accepts(stored: str, password: str) -> bool:
    out = subprocess.run([DOVEADM, "pw", "-t", stored, "-p", password],  # type: ignore[list-item]
                         capture_output=True, text=True, timeout=60)
    return out.returncode == 0


# --------------------------------------------------------------------- every scheme


# Variants whose default cost is already exercised under their main name: keep them quick.
QUICK_ROUNDS = {"CRYPT": 4, "BLF-CRYPT.HEX": 4}


@pytest.mark.parametrize("scheme", ALL)
def test_our_hash_verifies_and_has_dovecot_form(scheme: str) -> None:
    stored = hash_password(PASSWORD, scheme, rounds=QUICK_ROUNDS.get(scheme))
    assert stored.startswith("{" + scheme + "}")
    assert scheme_of(stored) == scheme
    assert stored_problem(stored) is None
    assert verify_password(PASSWORD, stored)
    assert not verify_password(WRONG, stored)
    if DOVEADM is not None and scheme.split(".")[0] in _doveadm_schemes():
        assert doveadm_accepts(stored, PASSWORD), f"doveadm pw -t rejects our {stored}"


@pytest.mark.parametrize("scheme", ALL)
def test_doveadm_hash_verifies(scheme: str) -> None:
    stored = doveadm_hash(scheme, PASSWORD)
    assert scheme_of(stored) == scheme
    assert stored_problem(stored) is None
    assert verify_password(PASSWORD, stored)
    assert not verify_password(WRONG, stored)


def test_scheme_names_are_case_insensitive() -> None:
    stored = hash_password("pw", "ssha256")
    assert stored.startswith("{SSHA256}")
    assert verify_password("pw", "{ssha256}" + stored[len("{SSHA256}"):])
    assert canonical_scheme("blf-crypt") == "BLF-CRYPT"
    assert canonical_scheme("Sha.Hex") == "SHA.HEX"
    assert canonical_scheme("clear") == "PLAIN"
    assert canonical_scheme("sha256.base64") == "SHA256.B64"
    with pytest.raises(schemes.UnknownSchemeError, match="BLF-CRYPT"):
        hash_password("pw", "NOPE")


# Values printed by `doveadm pw` (Dovecot 2.3) for the password "secret": the tests keep
# checking compatibility where doveadm is not installed.
DOVECOT_SECRET = [
    "{BLF-CRYPT}$2y$05$S/CUAvxbhkd72FN1wXyKOePvFTcnlxtdEbPTQ6gOkvUFVneeRhcbO",
    "$2y$05$ldtyMW/qnYeL.HL.2MDf.O8QvB.qUCY34MLwRMFiMIj2D.xCq68U2",
    "{SHA512-CRYPT}$6$GezZf7ZZ6ndXoaOY$Jlc73/gRXA5hhLesrrRaaoMTshHitvZr6DHpMQc5ybgMMFd.tofMZqGi.732BW.L9G.IP2R5bLKml8M.OKyrT1",
    "{SHA256-CRYPT}$5$zWyui//xUQj82sGg$wlcHnlCDRQayRMoKpu8/uiKDwZkAZ8O7OReMOn34.L1",
    "{MD5-CRYPT}$1$gs9dN4QK$4O3OJ8j.lm2DupgI1ISk6.",
    "{MD5}$1$MN5C93gb$29l9k.MwvoELREWD12Cc00",
    "{DES-CRYPT}c9E622FdlWax6",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$Ef7risY4bdKRXTvM3pcYxA$gPwzDh5fzh7pQ00ZmG4r6H8whdz4PRNFyRelSziVqzk",
    "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$5Zlc8BQI3WJc0L+NtZDBSQ$eIye1l8Y0ZN2JS96rMg6j4PUTsOhS6i3cmP8WHCoWso",
    "{PBKDF2}$1$lFgbZpo7od/Sh.t9$5000$ed60c72bdf740ce7297cf94ea1ec261cd8927206",
    "{SCRAM-SHA-256}4096,nH6UIj+/zyreonQkysA36A==,NGvKHMjNgiJS+6rCuV0xo6T1lpP3uzwuGd2E8h2PpFo=,3F8g3eZ6FKRLQ8dUmQd03Xjel4frk1DjUt72LH3WNSI=",
    "{SCRAM-SHA-1}4096,adoadvuzAhpFViOcv8rV7w==,2fI0EUzREx3fX/Fkx5NVvGkTIkw=,8FMCxBAp3CJl/I6C5o7TCLleyEs=",
    "{SSHA512}lFdV8eFFBSAMhwzU2K4AvdK+gYwIE14snhMYZO/8LhA+tomdw3s+9+MVkCwNFUYItfYk/TVJCH1Ox2TwCqRp1GslUpg=",
    "{SSHA256}VZdtuVRH6B8pHi0uUz2yc6vVnqJaWo6PHE0Cy5yUZFtXlWnP",
    "{SSHA}9pyqitf/eQKFW1tBvii0MKOxBYreX7sO",
    "{SSHA.HEX}d85052ace23599b991b61e3fc70b85b0f02ef70ecceb83cd",
    "{SMD5}OjbWGnKMPcC3VAZQkivQhyARTy4=",
    "{SHA512}vSsar3708Jvp9Szi2NWZZ02Bqp1qRCFpbcTZPdBhnWgs5WtNZKnvCXdhztmeD2cmW192CF5bDufKRpayrW/isg==",
    "{SHA512.HEX}bd2b1aaf7ef4f09be9f52ce2d8d599674d81aa9d6a4421696dc4d93dd0619d682ce56b4d64a9ef097761ced99e0f67265b5f76085e5b0ee7ca4696b2ad6fe2b2",
    "{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=",
    "{SHA256}2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",  # hex, no suffix
    "{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=",
    "{SHA1}5en6G6MezRroT3XKqkdPOmY/BfQ=",
    "{LDAP-MD5}Xr4ilOzQ4PCOq3aQ0qbuaQ==",
    "{PLAIN-MD5}5ebe2294ecd0e0f08eab7690d2a6ee69",
    "{CRAM-MD5}cd3ba7deaad6e5ca23448ba42e379747a9e0f7f1fbc00c8a81bbaac395731b56",
    "{CRAM-MD5.B64}zTun3qrW5cojRIukLjeXR6ng9/H7wAyKgbuqw5VzG1Y=",
    "{PLAIN}secret",
    "{CLEAR}secret",
    "{PLAIN.B64}c2VjcmV0",
    "{PLAIN.HEX}736563726574",
]


@pytest.mark.parametrize("stored", DOVECOT_SECRET, ids=lambda s: s[: s.find("}") + 1] or s[:4])
def test_recorded_dovecot_values(stored: str) -> None:
    assert stored_problem(stored) is None
    assert verify_password("secret", stored)
    assert not verify_password("Secret", stored)
    assert not verify_password("", stored)


def test_bare_crypt_value_is_crypt() -> None:
    assert scheme_of("$2y$05$ldtyMW/qnYeL.HL.2MDf.O8QvB.qUCY34MLwRMFiMIj2D.xCq68U2") == "CRYPT"
    assert verify_password("secret", "c9E622FdlWax6")  # a bare DES hash
    assert scheme_of("{clear}x") == "CLEAR"


def test_rounds_and_defaults() -> None:
    assert hash_password("pw", "BLF-CRYPT", rounds=5).startswith("{BLF-CRYPT}$2y$05$")
    assert hash_password("pw", "BLF-CRYPT").startswith("{BLF-CRYPT}$2y$12$")  # passlib's default
    assert hash_password("pw", "PBKDF2", rounds=5000).startswith("{PBKDF2}$1$")
    assert "$5000$" in hash_password("pw", "PBKDF2", rounds=5000)
    assert hash_password("pw", "SCRAM-SHA-256", rounds=5000).startswith("{SCRAM-SHA-256}5000,")
    argon = hash_password("pw", "ARGON2ID")
    assert ",p=1$" in argon  # libsodium (Dovecot) computes one lane


def test_bcrypt_long_password_matches_dovecot_truncation() -> None:
    long = "a" * 100
    ours = hash_password(long, "BLF-CRYPT", rounds=4)
    assert verify_password(long, ours)
    assert verify_password("a" * 72, ours)  # crypt_blowfish ignores bytes past 72
    assert not verify_password("a" * 71, ours)
    if DOVEADM is not None:
        assert verify_password(long, doveadm_hash("BLF-CRYPT", long))


# ----------------------------------------------------------------- malformed values

MALFORMED = [
    "", "{", "{}", "{}x", "{SHA256}", "{SHA256}!!!!", "{SHA256}YWJj", "{SHA256.HEX}zz",
    "{NOPE}secret", "{BLF-CRYPT}$2y$05$short", "{BLF-CRYPT}", "{BLF-CRYPT}not-a-hash",
    "{SHA512-CRYPT}$6$", "{PBKDF2}$1$salt$notanumber$aa", "{PBKDF2}$1$salt$0$aa",
    "{PBKDF2}$1$salt$5000$zz", "{PBKDF2}$2$salt$5000$aa", "{PBKDF2}", "{SCRAM-SHA-256}1,2,3",
    "{SCRAM-SHA-256}x,YQ==,YQ==,YQ==", "{SCRAM-SHA-1}4096,YQ==,YQ==,YQ==", "{CRAM-MD5}zz",
    "{CRAM-MD5}abcd", "{ARGON2ID}$argon2id$garbage", "{ARGON2I}plain", "$6$x", "$2y$99$",
    "{SSHA}YWJj", "{SMD5}", "{DES-CRYPT}ab", "{PLAIN.B64}!!", "{SHA}\udcff\udcfe", "\x00",
]


@pytest.mark.parametrize("stored", MALFORMED)
def test_malformed_values_never_match_and_are_reported(stored: str) -> None:
    assert verify_password("secret", stored) is False
    assert verify_password("", stored) is False
    assert stored_problem(stored) is not None
    assert cram_md5_verify(stored, "<1@x>", "00" * 16) is False


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(["", "{"] + ["{" + s + "}" for s in ALL] + ["{X}"]),
    body=st.text(max_size=80),
    password=st.text(max_size=20),
)
def test_verify_never_raises(prefix: str, body: str, password: str) -> None:
    stored = prefix + body
    assert verify_password(password, stored) in (True, False)
    stored_problem(stored)
    plaintext_of(stored)
    cram_md5_context(stored)
    scheme_of(stored)


# ------------------------------------------------------------ plaintext, CRAM-MD5, SCRAM


def test_plaintext_of() -> None:
    assert plaintext_of("{PLAIN}secret") == "secret"
    assert plaintext_of("{clear}sé:cret") == "sé:cret"
    assert plaintext_of(hash_password("sé:cret", "PLAIN.B64")) == "sé:cret"
    assert plaintext_of("{PLAIN.HEX}736563726574") == "secret"
    assert plaintext_of("{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=") is None
    assert plaintext_of("{PLAIN.B64}!!") is None
    assert plaintext_of("secret") is None  # bare value is CRYPT, not plain


def test_cram_md5_rfc2195_example() -> None:
    # RFC 2195 section 2: user tim, shared secret tanstaaftanstaaf
    challenge = "<1896.697170952@postoffice.reston.mci.net>"
    response = "b913a602c7eda7a495b4e6e7334d3890"
    for stored in ("{PLAIN}tanstaaftanstaaf", hash_password("tanstaaftanstaaf", "CRAM-MD5"),
                   hash_password("tanstaaftanstaaf", "CRAM-MD5.B64")):
        assert cram_md5_verify(stored, challenge, response)
        assert cram_md5_verify(stored, challenge, response.upper())
        assert not cram_md5_verify(stored, challenge, "0" * 32)
        assert not cram_md5_verify(stored, challenge + "x", response)


def test_cram_md5_context_matches_dovecot_and_hmac() -> None:
    dovecot = "{CRAM-MD5}cd3ba7deaad6e5ca23448ba42e379747a9e0f7f1fbc00c8a81bbaac395731b56"
    context = cram_md5_context(dovecot)
    assert context is not None and len(context) == 32
    assert context == cram_md5_context("{PLAIN}secret")
    for challenge in ("<1.2@host>", "x" * 200):
        expected = hmac.new(b"secret", challenge.encode(), "md5").hexdigest()
        assert cram_md5_response(context, challenge) == expected
    long_key = "k" * 100  # HMAC hashes keys longer than a block first
    ctx = cram_md5_context(hash_password(long_key, "CRAM-MD5"))
    assert ctx is not None
    assert cram_md5_response(ctx, "<c>") == hmac.new(long_key.encode(), b"<c>", "md5").hexdigest()
    assert cram_md5_context("{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=") is None
    assert cram_md5_context(hash_password("secret", "BLF-CRYPT", rounds=4)) is None


def test_scram_credentials_support_a_full_exchange() -> None:
    dovecot = ("{SCRAM-SHA-256}4096,nH6UIj+/zyreonQkysA36A==,NGvKHMjNgiJS+6rCuV0xo6T1lpP3uzwuGd2E8h2PpFo="
               ",3F8g3eZ6FKRLQ8dUmQd03Xjel4frk1DjUt72LH3WNSI=")
    for stored in (dovecot, "{PLAIN}secret"):
        cred = scram_credentials(stored, "sha256")
        assert cred is not None and cred.iterations == 4096 and len(cred.stored_key) == 32
        # what a client does (RFC 5802 section 3) with the salt and iterations we send
        salted = hashlib.pbkdf2_hmac("sha256", b"secret", cred.salt, cred.iterations)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        auth_message = b"n=user,r=abc,r=abcdef,s=" + base64.b64encode(cred.salt) + b",i=4096,c=biws,r=abcdef"
        signature = hmac.new(cred.stored_key, auth_message, "sha256").digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        # what the server checks
        recovered = bytes(a ^ b for a, b in zip(proof, signature))
        assert hashlib.sha256(recovered).digest() == cred.stored_key
        assert hmac.new(salted, b"Server Key", "sha256").digest() == cred.server_key
    assert scram_credentials(dovecot, "sha1") is None
    assert scram_credentials("{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=") is None


# ---------------------------------------------------------------------- dummy hashes


def test_dummy_hash_copies_the_cost_of_real_users() -> None:
    cheap = "{BLF-CRYPT}$2y$05$S/CUAvxbhkd72FN1wXyKOePvFTcnlxtdEbPTQ6gOkvUFVneeRhcbO"
    dummy = dummy_hash("BLF-CRYPT", like=cheap)
    assert dummy.startswith("{BLF-CRYPT}$2y$05$")
    assert dummy == dummy_hash("BLF-CRYPT", like=cheap)  # cached: no hashing per login
    assert dummy_hash("BLF-CRYPT").startswith("{BLF-CRYPT}$2y$12$")
    assert not verify_password("secret", dummy)
    argon = "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$5Zlc8BQI3WJc0L+NtZDBSQ$eIye1l8Y0ZN2JS96rMg6j4PUTsOhS6i3cmP8WHCoWso"
    assert "m=32768,t=4,p=1" in dummy_hash("ARGON2I", like=argon)
    # a `like` of another scheme is ignored
    assert dummy_hash("SSHA512", like=cheap).startswith("{SSHA512}")


def test_hash_like_keeps_scheme_and_cost() -> None:
    cheap = "{BLF-CRYPT}$2y$05$S/CUAvxbhkd72FN1wXyKOePvFTcnlxtdEbPTQ6gOkvUFVneeRhcbO"
    new = hash_like("other", cheap)
    assert new.startswith("{BLF-CRYPT}$2y$05$") and verify_password("other", new)
    bare = hash_like("other", "$2y$05$ldtyMW/qnYeL.HL.2MDf.O8QvB.qUCY34MLwRMFiMIj2D.xCq68U2")
    assert bare.startswith("$2y$05$") and verify_password("other", bare)
    pbkdf2 = hash_like("other", "{PBKDF2}$1$lFgbZpo7od/Sh.t9$5000$ed60c72bdf740ce7297cf94ea1ec261cd8927206")
    assert "$5000$" in pbkdf2 and verify_password("other", pbkdf2)

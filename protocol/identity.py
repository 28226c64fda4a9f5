"""Ed25519 identities: signing keys, public keys, node ids and private key files.

* A public key travels as the lowercase hex of its raw 32 bytes (64 characters).
* A node id is the lowercase hex of the full SHA-256 of those raw 32 bytes
  (64 characters; not truncated, so ids inherit the full collision resistance).
* Only **strong** keys are accepted (README section 2): the canonical encoding (y < p, no
  "negative zero" x) of a point of prime order L. A small-order key (one of the 8
  torsion points, in any encoding) lets anyone forge signatures that verify for every
  message (the identity point with the signature ``01 00..00 || 00..00`` does); a
  mixed-order key (a strong key plus a torsion component) is a second spelling, so a
  second node id, of the same signer. :func:`is_strong_public_key` decides this with
  integer arithmetic on the curve (decompress, multiply by L, compare with the
  identity), cached per key; every signature check and every message field holding a
  key goes through it.
* A private key file is PKCS#8 PEM, unencrypted, created with mode 0600. Loading refuses
  (by default) a file that group or others can read or write, as OpenSSH does: a key that
  others could read must be assumed compromised. Files are protected by the file system,
  not by a passphrase.

This module deliberately knows nothing about messages or envelopes: it signs and verifies
byte strings.
"""

from __future__ import annotations

import hashlib
import os
import stat
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from protocol.errors import KeyFileError, OutOfRangeError, WrongTypeError
from protocol.fields import check_public_key

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
#: A PKCS#8 PEM Ed25519 key is 119 bytes; anything much larger is not a key file.
MAX_KEY_FILE_BYTES = 4096


# --- Ed25519 curve arithmetic (RFC 8032 section 5.1), only to vet public keys -----------

#: The field prime p = 2^255 - 19.
_P = 2**255 - 19
#: The twisted Edwards constant d = -121665 / 121666 (mod p); a = -1.
_D = (-121665 * pow(121666, _P - 2, _P)) % _P
_D2 = 2 * _D % _P
#: sqrt(-1) mod p.
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
#: The prime order L of the base point's subgroup (the curve has cofactor 8).
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493
#: Keys remembered by the strength check (each costs about a millisecond the first time).
KEY_CACHE_SIZE = 16_384

_Point = tuple[int, int, int, int]  # extended coordinates (X : Y : Z : T), x = X/Z, y = Y/Z


def _decompress(raw: bytes) -> tuple[int, int] | None:
    """The affine point (x, y) a 32-byte encoding names, or None (RFC 8032 section 5.1.3).

    Non-canonical encodings are refused: y >= p, and x = 0 with the sign bit set.
    """
    n = int.from_bytes(raw, "little")
    sign, y = n >> 255, n & ((1 << 255) - 1)
    if y >= _P:
        return None
    y2 = y * y % _P
    u, v = (y2 - 1) % _P, (_D * y2 + 1) % _P
    v3 = v * v % _P * v % _P
    x = u * v3 % _P * pow(u * v3 % _P * v3 % _P * v % _P, (_P - 5) // 8, _P) % _P
    vx2 = v * x % _P * x % _P
    if vx2 == (-u) % _P:
        x = x * _SQRT_M1 % _P
    elif vx2 != u:
        return None  # no x: not on the curve
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _add(p: _Point, q: _Point) -> _Point:
    # add-2008-hwcd-3 (a = -1): unified, so it also doubles and handles the identity.
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * _D2 % _P * t2 % _P
    d = 2 * z1 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _double(p: _Point) -> _Point:
    # dbl-2008-hwcd (a = -1).
    x1, y1, z1, _ = p
    a, b, c = x1 * x1 % _P, y1 * y1 % _P, 2 * z1 * z1 % _P
    h = a + b
    e = h - (x1 + y1) ** 2 % _P
    g = a - b
    f = c + g
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _times_order(x: int, y: int) -> _Point:
    """[L](x, y) by double-and-add (the scalar is public: no constant time needed)."""
    acc: _Point = (0, 1, 1, 0)
    base: _Point = (x, y, 1, x * y % _P)
    for bit in bin(GROUP_ORDER)[2:]:
        acc = _double(acc)
        if bit == "1":
            acc = _add(acc, base)
    return acc


@lru_cache(maxsize=KEY_CACHE_SIZE)
def _strong(raw: bytes) -> bool:
    point = _decompress(raw)
    if point is None or point == (0, 1):  # the identity has order 1, not L
        return False
    x, y, z, _ = _times_order(*point)
    # [L]P is the identity (X = 0, Y = Z) iff P has no torsion component: P != O and
    # L prime, so P then has order exactly L.
    return x % _P == 0 and (y - z) % _P == 0


def is_strong_public_key(public_key: str | bytes) -> bool:
    """True iff ``public_key`` (64 lowercase hex characters, or the raw 32 bytes) is the
    canonical encoding of a point of prime order L.

    Refuses non-canonical y (>= p), "negative zero" x, bytes that name no curve point,
    the 8 small-order points in every encoding, and mixed-order points (a torsion
    component). Never raises. The answer is cached per key (:data:`KEY_CACHE_SIZE`).
    """
    if isinstance(public_key, str):
        try:
            raw = bytes.fromhex(check_public_key("public_key", public_key))
        except (OutOfRangeError, WrongTypeError):
            return False
    elif isinstance(public_key, bytes) and len(public_key) == PUBLIC_KEY_BYTES:
        raw = public_key
    else:
        return False
    return _strong(raw)


def check_strong_public_key(name: str, value: object) -> str:
    """A public key field: 64 lowercase hex characters naming a strong key
    (:func:`is_strong_public_key`); ``out_of_range`` otherwise."""
    key = check_public_key(name, value)
    if not _strong(bytes.fromhex(key)):
        raise OutOfRangeError(f"{name}: not the canonical encoding of a prime-order point")
    return key


def node_id_of(public_key: str) -> str:
    """The node id of a public key given as 64 lowercase hex characters."""
    raw = bytes.fromhex(check_public_key("public_key", public_key))
    return hashlib.sha256(raw).hexdigest()


def verify_signature(public_key: str, signature: bytes, data: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` by ``public_key``.

    Never raises for bad input: a malformed key, a key that is not a curve point, a weak
    key (see :func:`is_strong_public_key`), a signature of the wrong length or with a
    non-canonical S (S >= L, RFC 8032 section 5.1.7) all give False. The curve check runs
    after the signature verified, so garbage costs one verification, not the check.
    """
    try:
        raw = bytes.fromhex(check_public_key("public_key", public_key))
        sig = bytes(signature)
        # OpenSSL refuses S >= L too; checked here so no backend can make S malleable.
        if len(sig) != SIGNATURE_BYTES or int.from_bytes(sig[32:], "little") >= GROUP_ORDER:
            return False
        Ed25519PublicKey.from_public_bytes(raw).verify(sig, bytes(data))
    except (InvalidSignature, ValueError, OutOfRangeError, WrongTypeError, TypeError):
        return False
    return _strong(raw)


class VerifyKey:
    """A strong public key loaded once, for verifying many signatures by it (a host
    verifies every request of a known credential with its key): :func:`verify_signature`
    without re-reading the key each time. Build with :meth:`load`."""

    __slots__ = ("_key", "node_id", "public_key")

    def __init__(self, public_key: str, key: Ed25519PublicKey) -> None:
        self.public_key = public_key
        self._key = key
        #: The key's node id (:func:`node_id_of`), computed once.
        self.node_id = hashlib.sha256(bytes.fromhex(public_key)).hexdigest()

    @classmethod
    def load(cls, public_key: str) -> VerifyKey | None:
        """The key named by 64 lowercase hex characters; None unless it is strong
        (:func:`is_strong_public_key`), so no signature by a weak key ever verifies."""
        if not is_strong_public_key(public_key):
            return None
        return cls(public_key, Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)))

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True iff ``signature`` is a valid Ed25519 signature of ``data`` by this key,
        with :func:`verify_signature`'s rules (64 bytes, canonical S); never raises."""
        if (not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES
                or int.from_bytes(signature[32:], "little") >= GROUP_ORDER):
            return False
        try:
            self._key.verify(signature, data)
        except (InvalidSignature, TypeError, ValueError):
            return False
        return True


class Identity:
    """A node's (or the coordinator's) signing key with its public key and node id."""

    __slots__ = ("_key", "node_id", "public_key")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        #: Raw public key as 64 lowercase hex characters.
        self.public_key: str = raw.hex()
        #: SHA-256 of the raw public key, 64 lowercase hex characters.
        self.node_id: str = hashlib.sha256(raw).hexdigest()

    def __repr__(self) -> str:  # never print key material
        return f"Identity(node_id={self.node_id[:16]}...)"

    @classmethod
    def generate(cls) -> Identity:
        """A fresh key from the operating system's random source."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """A key from its 32-byte seed (RFC 8032 private key); used for reproducible tests."""
        if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
            raise OutOfRangeError(f"seed must be {SEED_BYTES} bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``data``."""
        return self._key.sign(data)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key as PKCS#8 PEM to a file created with mode 0600.

        Without ``overwrite`` an existing file is an error (O_EXCL, so no race replaces a
        key). With it, the key is written to a sibling temporary file and renamed over
        the old one, so a crash leaves either the old or the new key, never half of one.
        """
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        target = Path(path)
        if not overwrite:
            _write_new(target, pem)
            return
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        _write_new(tmp, pem)
        try:
            os.replace(tmp, target)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise KeyFileError(f"cannot replace {target}: {exc.strerror}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, strict_permissions: bool = True) -> Identity:
        """Read a key written by :meth:`save`.

        With ``strict_permissions`` (the default) a file whose mode grants any access to
        group or others raises :class:`KeyFileError` (on POSIX systems).
        """
        target = Path(path)
        try:
            fd = os.open(target, os.O_RDONLY)
        except OSError as exc:
            raise KeyFileError(f"cannot open {target}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            # fstat the open file, not the path, so the checked file is the one read.
            mode = os.fstat(handle.fileno()).st_mode
            if strict_permissions and os.name == "posix" and mode & 0o077:
                raise KeyFileError(
                    f"{target} has mode {stat.filemode(mode)}; it must be private (chmod 600)"
                )
            data = handle.read(MAX_KEY_FILE_BYTES + 1)
        if len(data) > MAX_KEY_FILE_BYTES:
            raise KeyFileError(f"{target} is too large to be a key file")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(f"{target} is not an unencrypted PKCS#8 PEM key: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{target} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)


def _write_new(path: Path, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; pass overwrite=True to replace it") from None
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # a key that is lost on power failure is a lost identity
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None

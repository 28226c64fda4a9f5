"""Ed25519 identities: signing keys, public keys, node ids and private key files.

* A public key travels as the lowercase hex of its raw 32 bytes (64 characters).
* A node id is the lowercase hex of the full SHA-256 of those raw 32 bytes
  (64 characters; not truncated, so ids inherit the full collision resistance).
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
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from protocol.errors import KeyFileError, OutOfRangeError
from protocol.fields import check_public_key

SEED_BYTES = 32
SIGNATURE_BYTES = 64
#: A PKCS#8 PEM Ed25519 key is 119 bytes; anything much larger is not a key file.
MAX_KEY_FILE_BYTES = 4096


def node_id_of(public_key: str) -> str:
    """The node id of a public key given as 64 lowercase hex characters."""
    raw = bytes.fromhex(check_public_key("public_key", public_key))
    return hashlib.sha256(raw).hexdigest()


def verify_signature(public_key: str, signature: bytes, data: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``data`` by ``public_key``.

    Never raises for bad input: a malformed key, a key that is not a curve point or a
    signature of the wrong length all give False.
    """
    try:
        raw = bytes.fromhex(check_public_key("public_key", public_key))
        key = Ed25519PublicKey.from_public_bytes(raw)
        key.verify(bytes(signature), bytes(data))
    except (InvalidSignature, ValueError, OutOfRangeError, TypeError):
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

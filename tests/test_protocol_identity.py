"""Ed25519 identities, node ids and private key files."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol.errors import InkindError, KeyFileError
from protocol.identity import Identity, node_id_of, verify_signature

# RFC 8032 section 7.1, TEST 1: pure Ed25519 (no pre-hash, no context).
RFC_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
    "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)

posix_only = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def test_identity_matches_the_rfc_8032_test_vector() -> None:
    ident = Identity.from_seed(RFC_SEED)
    assert ident.public_key == RFC_PUBLIC
    assert ident.sign(b"") == RFC_SIGNATURE
    assert verify_signature(RFC_PUBLIC, RFC_SIGNATURE, b"")


def test_node_id_is_the_full_sha256_of_the_raw_public_key() -> None:
    expected = hashlib.sha256(bytes.fromhex(RFC_PUBLIC)).hexdigest()
    assert node_id_of(RFC_PUBLIC) == expected
    assert Identity.from_seed(RFC_SEED).node_id == expected
    assert len(expected) == 64


def test_node_id_of_refuses_a_malformed_key() -> None:
    with pytest.raises(InkindError) as excinfo:
        node_id_of(RFC_PUBLIC.upper())
    assert excinfo.value.code == "out_of_range"


@pytest.mark.parametrize(
    ("key", "sig", "data"),
    [
        (RFC_PUBLIC, RFC_SIGNATURE, b"x"),
        (RFC_PUBLIC, RFC_SIGNATURE[:-1], b""),
        (RFC_PUBLIC[:-2], RFC_SIGNATURE, b""),
        ("zz" * 32, RFC_SIGNATURE, b""),
        ("00" * 31 + "80", RFC_SIGNATURE, b""),
    ],
)
def test_verify_signature_is_false_never_an_exception_for_bad_input(
    key: str, sig: bytes, data: bytes
) -> None:
    assert verify_signature(key, sig, data) is False


def test_from_seed_refuses_a_seed_of_the_wrong_length() -> None:
    with pytest.raises(InkindError) as excinfo:
        Identity.from_seed(b"\x00" * 31)
    assert excinfo.value.code == "out_of_range"


def test_repr_shows_no_key_material() -> None:
    ident = Identity.from_seed(RFC_SEED)
    assert RFC_SEED.hex() not in repr(ident)
    assert RFC_PUBLIC not in repr(ident)


def test_generate_gives_distinct_identities() -> None:
    assert Identity.generate().node_id != Identity.generate().node_id


@posix_only
def test_save_creates_a_private_file_and_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    Identity.from_seed(RFC_SEED).save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).public_key == RFC_PUBLIC


def test_save_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    Identity.from_seed(RFC_SEED).save(path)
    other = Identity.from_seed(b"\x07" * 32)
    with pytest.raises(KeyFileError):
        other.save(path)
    assert Identity.load(path).public_key == RFC_PUBLIC
    other.save(path, overwrite=True)
    assert Identity.load(path).public_key == other.public_key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key"]


@posix_only
def test_overwrite_leaves_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    Identity.from_seed(RFC_SEED).save(path, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o660])
def test_load_refuses_a_key_file_others_can_access(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    Identity.from_seed(RFC_SEED).save(path)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Identity.load(path)
    assert Identity.load(path, strict_permissions=False).public_key == RFC_PUBLIC


def _private_file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize(
    "data",
    [
        b"not a key",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"x" * 10_000,
        X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    ],
)
def test_load_refuses_what_is_not_an_ed25519_key(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(KeyFileError):
        Identity.load(_private_file(tmp_path / "bad.key", data))


def test_load_of_a_missing_file_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        Identity.load(tmp_path / "absent.key")

"""protocol/'s README is true to the implementation (its imports: the import-linter
contracts in pyproject.toml, run by tests/test_import_layers.py)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

import protocol
from protocol.session import RoamerSession, derive_keys, public_hex

PACKAGE = Path(protocol.__file__).parent
def test_readme_names_every_message_type_and_error_code() -> None:
    text = (PACKAGE / "README.md").read_text(encoding="utf-8")
    for name in protocol.MESSAGE_TYPES:
        assert f"`{name}`" in text, name
    for code in protocol.ERROR_CLASSES:
        assert f"`{code}`" in text, code


def test_readme_test_vector_matches_the_implementation() -> None:
    text = (PACKAGE / "README.md").read_text(encoding="utf-8")
    ident = protocol.Identity.from_seed(bytes(range(32)))
    decl = protocol.Declaration(
        epoch=3, node_id=ident.node_id, theta=420_000, nonce="00112233445566778899aabbccddeeff"
    )
    env = protocol.seal(ident, decl)
    assert len(env.payload) == 146
    for expected in (
        ident.public_key,
        ident.node_id,
        env.payload.decode(),
        env.signature.hex(),
        env.to_bytes().decode(),
    ):
        assert expected in text


def test_readme_access_request_vector_matches_the_implementation() -> None:
    text = (PACKAGE / "README.md").read_text(encoding="utf-8")
    coord = protocol.Identity.from_seed(bytes(range(32)))
    roamer = protocol.Identity.from_seed(bytes(range(32, 64)))
    host = protocol.Identity.from_seed(bytes(range(64, 96)))
    cred = protocol.seal(coord, protocol.Credential(
        node_id=roamer.node_id, public_key=roamer.public_key, epoch=3,
        not_before=1_700_000_000, expires=1_700_086_400, location=2))
    body = protocol.make_access_request(
        roamer, cred, host_id=host.node_id, amount=1_000_000, now=1_700_000_100,
        rng=lambda n: bytes.fromhex("00112233445566778899aabbccddeeff"))
    assert len(body.request.payload) == 255
    for expected in (
        roamer.public_key,
        roamer.node_id,
        host.node_id,
        cred.payload.decode(),
        cred.signature.hex(),
        protocol.credential_digest(cred),
        body.request.payload.decode(),
        body.request.signature.hex(),
    ):
        assert expected in text


def session_vector() -> dict[str, str]:
    """README section 9's session vector, computed (section 7.1)."""
    coord = protocol.Identity.from_seed(bytes(range(32)))
    roamer = protocol.Identity.from_seed(bytes(range(32, 64)))
    host = protocol.Identity.from_seed(bytes(range(64, 96)))
    roamer_x = X25519PrivateKey.from_private_bytes(bytes(range(96, 128)))
    host_x = X25519PrivateKey.from_private_bytes(bytes(range(128, 160)))
    cred = protocol.seal(coord, protocol.Credential(
        node_id=roamer.node_id, public_key=roamer.public_key, epoch=3,
        not_before=1_700_000_000, expires=1_700_086_400, location=2))
    body = protocol.make_access_request(
        roamer, cred, host_id=host.node_id, amount=3_000_000, now=1_700_000_100,
        rng=lambda n: bytes.fromhex("00112233445566778899aabbccddeeff"),
        session_key=public_hex(roamer_x))
    keys = derive_keys(host_x, public_hex(roamer_x), roamer_key=public_hex(roamer_x),
                       host_key=public_hex(host_x), request=body.request)
    mine = derive_keys(roamer_x, public_hex(host_x), roamer_key=public_hex(roamer_x),
                       host_key=public_hex(host_x), request=body.request)
    assert keys == mine
    req = RoamerSession(keys, host_id=host.node_id).request(1_000_000)
    return {
        "roamer_x25519": public_hex(roamer_x), "host_x25519": public_hex(host_x),
        "payload": body.request.payload.decode(), "signature": body.request.signature.hex(),
        "request_key": keys.request_key.hex(), "answer_key": keys.answer_key.hex(),
        "session_id": keys.session_id, "session_request": req.to_bytes().decode(),
    }


def test_readme_session_vector_matches_the_implementation() -> None:
    text = (PACKAGE / "README.md").read_text(encoding="utf-8")
    for name, expected in session_vector().items():
        assert expected in text, name

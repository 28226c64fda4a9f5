"""protocol/'s README is true to the implementation (its imports: the import-linter
contracts in pyproject.toml, run by tests/test_import_layers.py)."""

from __future__ import annotations

from pathlib import Path

import protocol

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

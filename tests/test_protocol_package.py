"""protocol/ depends only on the standard library and cryptography, and reads no clock."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import protocol

PACKAGE = Path(protocol.__file__).parent
ALLOWED_THIRD_PARTY = {"cryptography", "protocol"}
# Sans-I/O: no clocks, no sockets, no event loops, no databases, no hidden randomness.
FORBIDDEN_STDLIB = {"time", "datetime", "socket", "asyncio", "sqlite3", "random", "secrets"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_protocol_imports_only_the_standard_library_and_cryptography() -> None:
    files = sorted(PACKAGE.glob("*.py"))
    assert files
    for path in files:
        roots = imported_roots(path)
        foreign = roots - set(sys.stdlib_module_names) - ALLOWED_THIRD_PARTY
        assert not foreign, f"{path.name} imports {sorted(foreign)}"
        assert not roots & FORBIDDEN_STDLIB, (
            f"{path.name} imports {sorted(roots & FORBIDDEN_STDLIB)}"
        )


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

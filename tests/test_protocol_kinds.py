"""The resource-kind registry (``protocol/kinds.py``): the wire facts every side reads."""

from __future__ import annotations

import pytest

from protocol import Identity, Registration
from protocol.errors import OutOfRangeError
from protocol.kinds import KIND_NAMES, KINDS, Answer, kind_of

KEY = Identity.from_seed(bytes(32)).public_key
SHA = "ab" * 32


def registration(kind: str) -> Registration:
    return Registration(public_key=KEY, epoch=0, home_location=0, capacity=1, kind=kind)


def test_the_registry_is_what_a_registration_accepts() -> None:
    assert KIND_NAMES == set(KINDS) == {"wlan_coverage", "wlan_channels", "files", "compute"}
    for name in KINDS:
        assert registration(name).kind == name and kind_of(name) is KINDS[name]
    for bad in ("spectrum", "", "Files", None, 3):
        with pytest.raises(OutOfRangeError):
            kind_of(bad)  # type: ignore[arg-type]
        if isinstance(bad, str):
            with pytest.raises(OutOfRangeError):
                registration(bad)


def test_each_kind_says_where_a_roamer_asks_and_what_it_names() -> None:
    wire = {n: (k.path(SHA), k.resource_of(SHA), k.answer) for n, k in KINDS.items()}
    assert wire == {
        "wlan_coverage": ("/v1/access", None, Answer.RECEIPT),
        "wlan_channels": ("/v1/access", None, Answer.RECEIPT),
        "files": (f"/v1/files/{SHA}", f"file:{SHA}", Answer.FILE),
        "compute": ("/v1/compute", "compute", Answer.JOB),
    }
    assert [n for n, k in KINDS.items() if k.shares] == ["compute"]
    assert [n for n, k in KINDS.items() if k.sessions] == ["wlan_channels"]
    assert {n: k.granularity for n, k in KINDS.items()}["wlan_channels"] == 1_000_000
    for kind in KINDS.values():
        assert kind.granularity >= 1 and kind.unit
        assert kind.itemised == ("{item}" in kind.endpoint)  # an item is named in the path

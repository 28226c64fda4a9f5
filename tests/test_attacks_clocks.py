"""One clock policy, more instances (issue 11 item 6): every timestamp a peer chooses is
accepted exactly within :data:`protocol.MAX_CLOCK_SKEW` of the receiver's clock and
refused one second beyond, with its code and no state changed; a far-future timestamp
never locks a node's own later updates."""

from __future__ import annotations

import pytest
from helpers.coordinator import T0, new_core, node, raw, registration
from helpers.node import counter_rng, ident

from protocol import (
    MAX_CLOCK_SKEW,
    AccessVerifier,
    Credential,
    Envelope,
    make_access_request,
    seal,
)
from protocol.errors import InkindError

COORD, NODE, HOST = ident(1), ident(2), ident(3)
EPOCH, NOW = 7, 100_000


def cred() -> Envelope:
    return seal(COORD, Credential(node_id=NODE.node_id, public_key=NODE.public_key,
                                  epoch=EPOCH, not_before=NOW - 1_000, expires=NOW + 1_000,
                                  location=0))


@pytest.mark.parametrize(("offset", "code"), [
    (-MAX_CLOCK_SKEW, None), (MAX_CLOCK_SKEW, None), (0, None),
    (-MAX_CLOCK_SKEW - 1, "expired"), (MAX_CLOCK_SKEW + 1, "not_yet_valid"),
    (10**9, "not_yet_valid"), (-NOW, "expired"),
])
def test_an_access_request_is_accepted_exactly_within_the_skew(
        offset: int, code: str | None) -> None:
    v = AccessVerifier(host_id=HOST.node_id, coordinator_key=COORD.public_key)
    body = make_access_request(NODE, cred(), host_id=HOST.node_id, amount=1,
                               now=NOW + offset, rng=counter_rng())
    if code is None:
        v.check(body.to_bytes(), epoch=EPOCH, now=NOW)
        assert len(v.replays) == 1
        return
    with pytest.raises(InkindError) as exc:
        v.check(body.to_bytes(), epoch=EPOCH, now=NOW)
    assert exc.value.code == code and len(v.replays) == 0


@pytest.mark.parametrize(("offset", "code"), [
    (MAX_CLOCK_SKEW, None), (-10**6, "stale_epoch"), (MAX_CLOCK_SKEW + 1, "not_yet_valid"),
    (10**9, "not_yet_valid"),
])
def test_a_registration_is_accepted_exactly_within_the_skew_and_never_locks_updates(
        offset: int, code: str | None) -> None:
    core = new_core()
    a = node(0)
    first = registration(a, issued=T0 - 10, endpoint="127.0.0.1:9000")
    core.apply(core.check_registration(first, raw(a, first), now=T0))
    dated = registration(a, issued=T0 + offset, endpoint="127.0.0.1:9001")
    if code is not None:
        with pytest.raises(InkindError) as exc:
            core.check_registration(dated, raw(a, dated), now=T0)
        assert exc.value.code == code
        assert core.nodes[a.node_id].registration == first  # unchanged
        # The node's own next update, dated by its clock, still goes through.
        update = registration(a, issued=T0 + 1, endpoint="127.0.0.1:9002")
        core.apply(core.check_registration(update, raw(a, update), now=T0 + 1))
        assert core.nodes[a.node_id].registration == update
        return
    change = core.check_registration(dated, raw(a, dated), now=T0)
    assert change is not None
    core.apply(change)
    # Accepted just inside the skew: the node's updates resume once its clock passes it.
    later = registration(a, issued=T0 + offset + 1, endpoint="127.0.0.1:9003")
    core.apply(core.check_registration(later, raw(a, later), now=T0 + offset + 1))
    assert core.nodes[a.node_id].registration == later

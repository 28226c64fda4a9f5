"""Mystery shoppers: who checks whom, secretly (protocol README section 7, step 8).

Probes check a host's key, not its service, and a host can tell a probe from a roamer; a
host that answers probes and relays but drops roamers' requests is caught only when an
included roamer happens to ask it. So each epoch the coordinator assigns every host that
owes something ``k`` *shoppers*: included nodes that make one ordinary access request
to it, with their own credential, exactly as roamers do, and complain like roamers when it
goes unanswered. The host cannot tell a shopper from a roamer; only the shopper learns
its duty (``POST /v1/duties``, answered to its own signed request).

The draw is keyed by a secret only the coordinator can compute -- its Ed25519 signature
over a domain string and the epoch (Ed25519 signatures are deterministic, RFC 8032), so a
restarted coordinator draws the same shoppers without storing them, and nobody without its
private key can predict them. Per host, shoppers come from the included nodes of other
locations (a node asking at home is not how roamers look), then, if those are too few,
from its own location; never the host itself. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping

from protocol import Identity
from protocol.messages import MAX_SHOPPING_HOSTS

#: Default shoppers per owing host and epoch (a colluding shopper only stays silent, so
#: more than one; each costs the host one roamer's request).
SHOPPERS_PER_HOST = 2
#: Domain of the secret's signature (never signed for anything else).
SECRET_DOMAIN = b"inkind/v1/mystery-shoppers\x00"


def epoch_secret(identity: Identity, epoch: int) -> bytes:
    """The draw's key for ``epoch`` (64 bytes): the coordinator's signature over
    :data:`SECRET_DOMAIN` and the epoch (8 bytes big-endian). Deterministic, and
    unpredictable without the coordinator's private key."""
    return identity.sign(SECRET_DOMAIN + epoch.to_bytes(8, "big"))


def _rank(secret: bytes, host: str, label: bytes) -> int:
    """A keyed pseudo-random 64-bit number for (host, label): HMAC-SHA256, first 8 bytes."""
    mac = hmac.new(secret, host.encode() + b"\x00" + label, hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big")


def assign(secret: bytes, hosts: Mapping[str, int], roamers: Mapping[str, int], k: int, *,
           cap: int = MAX_SHOPPING_HOSTS) -> dict[str, tuple[str, ...]]:
    """The shoppers' duties: shopper id -> the host ids it shops at (sorted).

    ``hosts``: id -> location of every host that owes something; ``roamers``: id -> home
    location of every included node (the only candidates). Each host gets
    ``min(k, candidates)`` distinct shoppers, never itself, preferably from other
    locations; no shopper gets more than ``cap`` hosts (a host that would need a capped
    shopper gets the next one). Deterministic in ``secret``; O(hosts × k) HMACs expected
    (rejection sampling over the candidates sorted by location), however many roamers.
    """
    if k < 0:
        raise ValueError("k must be >= 0")
    order = sorted(roamers, key=lambda n: (roamers[n], n))
    start: dict[int, int] = {}
    count: dict[int, int] = {}
    for i, n in enumerate(order):
        start.setdefault(roamers[n], i)
        count[roamers[n]] = count.get(roamers[n], 0) + 1
    load: dict[str, int] = {}
    duties: dict[str, list[str]] = {}
    for host in sorted(hosts):
        a, n_here = start.get(hosts[host], 0), count.get(hosts[host], 0)
        chosen: list[str] = []

        def ok(n: str, host: str = host, chosen: list[str] = chosen) -> bool:
            return n != host and n not in chosen and load.get(n, 0) < cap

        def elsewhere(i: int, a: int = a, m: int = n_here) -> str:
            return order[i if i < a else i + m]  # skips this location's block of order

        def at_home(i: int, a: int = a) -> str:
            return order[a + i]

        chosen += _pick(secret, host, b"o", elsewhere, len(order) - n_here, k, ok)
        chosen += _pick(secret, host, b"h", at_home, n_here, k - len(chosen), ok)
        for shopper in chosen:
            load[shopper] = load.get(shopper, 0) + 1
            duties.setdefault(shopper, []).append(host)
    return {s: tuple(sorted(hs)) for s, hs in sorted(duties.items())}


def _pick(secret: bytes, host: str, tag: bytes, pool: Callable[[int], str], size: int,
          need: int, ok: Callable[[str], bool]) -> list[str]:
    """Up to ``need`` distinct members of ``pool`` (indices 0..size-1) that are ``ok``,
    drawn by keyed indices; a small pool (or an unlucky run of rejections) is ranked
    whole by its keyed ranks instead, so the result never depends on luck."""
    out: list[str] = []
    if need <= 0 or size <= 0:
        return out
    if size > 4 * need:
        for j in range(16 * need):
            n = pool(_rank(secret, host, tag + j.to_bytes(4, "big")) % size)
            if ok(n) and n not in out:
                out.append(n)
                if len(out) == need:
                    return out
    ranked = sorted((n for n in map(pool, range(size)) if ok(n) and n not in out),
                    key=lambda n: _rank(secret, host, tag + b"\x00" + n.encode()))
    return out + ranked[:need - len(out)]


__all__ = ["SHOPPERS_PER_HOST", "assign", "epoch_secret"]

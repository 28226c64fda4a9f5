"""The message catalogue: one frozen dataclass per message type, and the type registry.

Every message is a frozen, slotted, keyword-only dataclass that validates itself in
``__post_init__``: an invalid message cannot be built, whether by a caller or by
:meth:`Message.from_payload` from a peer's payload. Limits are module constants, so the
README, the checks and the tests share one source.

Conventions (normative, README "Messages"):

* quantities (capacities, fees, Q_l, contributions, theta) are integers in micro-units;
* times are integer Unix seconds (UTC), supplied by the caller; nothing here reads a clock;
* sequences are tuples in Python and arrays on the wire; an optional field is omitted
  from the payload when it is None (``null`` never appears);
* an unknown field, a missing required field, a wrong JSON type (a boolean is not an
  integer) or a value out of range is refused with ``unknown_field``, ``missing_field``,
  ``wrong_type`` or ``out_of_range`` (``too_large`` for an over-long list).

This module deliberately does not verify signatures or check anything that depends on
the receiver's state (current epoch, clock, registered keys, inclusion): see
:mod:`protocol.verify` and :mod:`protocol.guards`.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, Self, TypeVar

from protocol.encoding import MAX_SAFE_INTEGER, JsonObject, JsonValue, decode_object
from protocol.envelope import Envelope
from protocol.errors import (
    SERVICE_CODES,
    WIRE_CODES,
    MissingFieldError,
    OutOfRangeError,
    TooLargeError,
    UnexpectedMessageError,
    UnknownFieldError,
    WrongTypeError,
)
from protocol.fields import (
    MAX_EPOCH,
    MAX_TIME,
    check_choice,
    check_endpoint,
    check_epoch,
    check_hex,
    check_int,
    check_int_tuple,
    check_node_id,
    check_nonce,
    check_str,
    check_time,
    check_tuple,
)
from protocol.identity import check_strong_public_key, node_id_of
from protocol.kinds import KIND_NAMES

# --- limits (normative; mirrored in protocol/README.md) -------------------------------

#: Locations are indexed 0 .. MAX_LOCATIONS - 1.
MAX_LOCATIONS = 1024
#: Most node ids one allocation may include.
MAX_INCLUDED = 100_000
#: Most receipts and refusals one audit report may carry (500 receipts with their
#: requests are about 1 MB).
MAX_AUDIT_ITEMS = 500
MAX_ENDPOINT_CHARS = 255
MAX_RESOURCE_CHARS = 128
#: A SHA-256 digest as lowercase hex.
DIGEST_HEX_CHARS = 64
#: A raw X25519 public key (32 bytes) as lowercase hex.
SESSION_KEY_HEX_CHARS = 64
_X25519_P = 2**255 - 19
#: The u-coordinates, reduced mod p, of the X25519 points of small order (RFC 7748 section
#: 6.1: the exchange with any of them is the all-zero secret): 0, 1, the two of order 8
#: and p - 1. Their other encodings (u + p, the top bit set) reduce to these.
_X25519_LOW_ORDER_U = frozenset({
    0, 1, _X25519_P - 1,
    int.from_bytes(bytes.fromhex(
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), "little"),
    int.from_bytes(bytes.fromhex(
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"), "little"),
})


def check_session_key(name: str, value: object) -> str:
    """An X25519 public key (README section 7.1): 64 lowercase hex characters naming no
    point of small order in any encoding (``out_of_range``), so no session can be agreed
    on the all-zero secret and no message carrying such a key can be built: a request
    no host could grant a session is refused at the gate, unsigned, and a complaint
    about it is refused by the coordinator, so an honest host is never blamed for it."""
    text = check_hex(name, value, SESSION_KEY_HEX_CHARS)
    u = int.from_bytes(bytes.fromhex(text), "little") & ((1 << 255) - 1)  # RFC 7748 5
    if u % _X25519_P in _X25519_LOW_ORDER_U:
        raise OutOfRangeError(f"{name}: an X25519 point of small order")
    return text
#: theta in [0, 1] as micro-units.
THETA_MAX_MICRO = 1_000_000
#: Upper bound of any non-negative quantity: 1e9 units.
MAX_QUANTITY_MICRO = 10**15
#: Bound of |expected welfare|.
MAX_WELFARE_MICRO = MAX_SAFE_INTEGER
#: Longest validity window of a credential, in seconds (31 days).
MAX_CREDENTIAL_LIFETIME = 31 * 24 * 3600
#: Payload size limit of every message type unless it sets its own.
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024

#: A roamer's share of a host: what one requester may be granted by one host in one epoch
#: is at most 1/ROAMER_SHARE_DIVISOR of what the host owes in it (README section 7, step
#: 3), so one included roamer cannot drain a host and leave the others without service.
ROAMER_SHARE_DIVISOR = 4


def roamer_share(owed: int, granularity: int = 1) -> int:
    """The most one requester may be granted by a host owing ``owed`` micro-units in an
    epoch: ``owed / ROAMER_SHARE_DIVISOR`` rounded down to the kind's ``granularity``, and
    at least one granule (a host owing one WLAN channel can still grant it)."""
    share = owed // ROAMER_SHARE_DIVISOR
    return max(granularity, share - share % granularity)


MECHANISMS = frozenset({"posted_fee", "optimal"})
PAYMENTS = frozenset({"money", "in_kind"})
#: Message types an audit report may carry as evidence.
EVIDENCE_TYPES = frozenset({"grant_receipt", "refusal"})
#: Codes a refusal may give as its reason (every wire code except the abstract branches
#: and the HTTP binding's service answers).
REFUSAL_REASONS = WIRE_CODES - {"internal", "protocol_violation", "refused"} - SERVICE_CODES


def _check_quantity(name: str, value: object) -> int:
    return check_int(name, value, 0, MAX_QUANTITY_MICRO)


def _check_location(name: str, value: object) -> int:
    return check_int(name, value, 0, MAX_LOCATIONS - 1)


def _check_resource(name: str, value: object) -> str:
    text = check_str(name, value, max_chars=MAX_RESOURCE_CHARS, min_chars=1)
    # Printable ASCII only: a resource name is an identifier (a hash, a job id), not prose.
    if not (text.isascii() and text.isprintable()):
        raise OutOfRangeError(f"{name}: must be printable ASCII")
    return text


def _check_embedded(name: str, value: object, allowed: frozenset[str]) -> Envelope:
    if not isinstance(value, Envelope):
        raise WrongTypeError(f"{name}: expected an envelope")
    if value.type not in allowed:
        raise UnexpectedMessageError(f"{name}: {value.type!r} not one of {sorted(allowed)}")
    return value


def _to_json(value: object) -> JsonValue:
    if isinstance(value, Envelope):
        return dict(value.to_obj())
    if isinstance(value, tuple):
        return [_to_json(item) for item in value]
    if isinstance(value, int | str):
        return value
    raise WrongTypeError(f"cannot encode {type(value).__name__}")  # unreachable if valid


M = TypeVar("M", bound="Message")


def unchecked(cls: type[M], **values: Any) -> M:
    """``cls(**values)`` without ``__post_init__``'s checks, for values already proven
    valid where they entered (a match of the canonical grammar, a request
    :class:`protocol.access.AccessVerifier` verified): a message is checked once, at the
    boundary. Every field must be given (one missing fails when it is read)."""
    message = _new(cls)
    for name, value in values.items():
        _set(message, name, value)
    return message


_new = object.__new__
_set = object.__setattr__


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every message: the payload mapping and the signer rule.

    Subclasses set ``TYPE`` (the envelope type) and ``SIGNER`` (who signs it: ``"node"``
    is the node the message names, see :meth:`signer_node_id`; ``"coordinator"`` is a key
    the receiver trusts as coordinator; ``"credential_holder"`` is the key in the embedded
    credential), and may raise ``MAX_PAYLOAD_BYTES`` and ``MAX_DEPTH``.
    """

    TYPE: ClassVar[str] = ""
    SIGNER: ClassVar[str] = ""
    MAX_PAYLOAD_BYTES: ClassVar[int] = DEFAULT_MAX_PAYLOAD_BYTES
    MAX_DEPTH: ClassVar[int] = 2
    #: Fields holding an embedded envelope or a tuple of them.
    ENVELOPE_FIELDS: ClassVar[frozenset[str]] = frozenset()

    def to_payload(self) -> JsonObject:
        """The payload object; fields that are None are omitted."""
        out: JsonObject = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is not None:
                out[spec.name] = _to_json(value)
        return out

    @classmethod
    def parse_payload(cls, payload: bytes) -> Self:
        """The message a signed payload holds: :func:`decode_object` (canonical form
        required) within the type's limits, then :meth:`from_payload`. Types an endpoint
        receives in bulk read a canonical payload with one match of its exact grammar
        instead (same message, same errors)."""
        return cls.from_payload(decode_object(
            payload, max_bytes=cls.MAX_PAYLOAD_BYTES, max_depth=cls.MAX_DEPTH))

    @classmethod
    def from_payload(cls, payload: object) -> Self:
        """Build the message from a decoded payload, refusing anything not in the catalogue."""
        if not isinstance(payload, dict):
            raise WrongTypeError(f"{cls.TYPE}: payload must be a JSON object")
        specs = {spec.name: spec for spec in fields(cls)}
        unknown = set(payload) - set(specs)
        if unknown:
            raise UnknownFieldError(f"{cls.TYPE}: unknown fields {sorted(unknown)}")
        values: dict[str, Any] = {}
        for name, spec in specs.items():
            if name not in payload:
                if spec.default is MISSING:
                    raise MissingFieldError(f"{cls.TYPE}: missing field {name!r}")
                continue
            value = payload[name]
            if value is None:  # the canonical form omits optional fields; null is refused
                raise WrongTypeError(f"{cls.TYPE}: {name} is null")
            if isinstance(value, tuple):  # payloads hold JSON values: arrays are lists
                raise WrongTypeError(f"{cls.TYPE}: {name} is a tuple, not a JSON array")
            if isinstance(value, list):
                value = tuple(value)
            if name in cls.ENVELOPE_FIELDS:
                value = (
                    tuple(Envelope.from_obj(item) for item in value)
                    if isinstance(value, tuple)
                    else Envelope.from_obj(value)
                )
            values[name] = value
        return cls(**values)

    def signer_node_id(self) -> str | None:
        """The node id that must have signed this message, or None if the trusted-key set
        decides (coordinator-signed messages, and access requests whose signer is bound to
        the embedded credential by :func:`protocol.verify.check_access_request`)."""
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Registration(Message):
    """node -> coordinator: join, or update one's registration from ``epoch`` on.

    A coordinator keeps the newest registration per node, ordered by (``epoch``,
    ``issued``), and refuses one that is not newer than the stored one (``stale_epoch``)
    unless it is the stored one resent, so a replayed registration cannot roll back a
    newer one, even within one epoch (a node restarted on a new port).
    """

    TYPE = "registration"
    SIGNER = "node"

    public_key: str
    epoch: int
    home_location: int
    capacity: int
    kind: str
    endpoint: str | None = None
    issued: int | None = None

    def __post_init__(self) -> None:
        check_strong_public_key("public_key", self.public_key)
        check_epoch("epoch", self.epoch)
        if self.issued is not None:
            check_time("issued", self.issued)
        _check_location("home_location", self.home_location)
        _check_quantity("capacity", self.capacity)
        check_choice("kind", self.kind, KIND_NAMES)
        if self.endpoint is not None:
            check_endpoint("endpoint", self.endpoint, max_chars=MAX_ENDPOINT_CHARS)

    @property
    def node_id(self) -> str:
        return node_id_of(self.public_key)

    @property
    def order(self) -> tuple[int, int]:
        """What "newer" means between two registrations of one node."""
        return (self.epoch, -1 if self.issued is None else self.issued)

    def signer_node_id(self) -> str:
        return self.node_id


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochAnnouncement(Message):
    """coordinator -> all: epoch ``epoch`` is open for declarations until ``deadline``.

    ``fees[l]`` and ``q[l]`` are the posted fee and Q*_l of location l (micro-units);
    both are required and of equal length for ``posted_fee``, possibly empty for
    ``optimal``. ``coordinator_key`` must equal the envelope's signer.
    """

    TYPE = "epoch_announcement"
    SIGNER = "coordinator"

    epoch: int
    mechanism: str
    payment: str
    deadline: int
    fees: tuple[int, ...]
    q: tuple[int, ...]
    coordinator_key: str

    def __post_init__(self) -> None:
        check_epoch("epoch", self.epoch)
        check_choice("mechanism", self.mechanism, MECHANISMS)
        check_choice("payment", self.payment, PAYMENTS)
        check_time("deadline", self.deadline)
        check_int_tuple("fees", self.fees, 0, MAX_QUANTITY_MICRO, max_len=MAX_LOCATIONS)
        check_int_tuple("q", self.q, 0, MAX_QUANTITY_MICRO, max_len=MAX_LOCATIONS)
        check_strong_public_key("coordinator_key", self.coordinator_key)
        if len(self.fees) != len(self.q):
            raise OutOfRangeError("fees and q must have one entry per location each")
        if self.mechanism == "posted_fee" and not self.fees:
            raise OutOfRangeError("posted_fee needs fees and q for every location")

    def signer_node_id(self) -> str:
        return node_id_of(self.coordinator_key)


@dataclass(frozen=True, slots=True, kw_only=True)
class Declaration(Message):
    """node -> coordinator: my type theta for ``epoch`` (micro-units of [0, 1]).

    ``nonce`` is 16 random bytes (hex); the coordinator refuses a nonce seen before in the
    epoch (``replay``) and a second declaration by the node (``duplicate_declaration``).
    """

    TYPE = "declaration"
    SIGNER = "node"

    epoch: int
    node_id: str
    theta: int
    nonce: str

    def __post_init__(self) -> None:
        check_epoch("epoch", self.epoch)
        check_node_id("node_id", self.node_id)
        check_int("theta", self.theta, 0, THETA_MAX_MICRO)
        check_nonce("nonce", self.nonce)

    def signer_node_id(self) -> str:
        return self.node_id

    @classmethod
    def parse_payload(cls, payload: bytes) -> Self:
        """:meth:`Message.parse_payload`, a canonical payload (every honest node's) read
        with one match of :data:`_CANONICAL_DECLARATION` (the coordinator receives one
        per node and epoch); anything else through the strict decoder."""
        m = _CANONICAL_DECLARATION.fullmatch(payload) if type(payload) is bytes else None
        if m is not None:
            epoch, theta = int(m[1]), int(m[4])
            # The grammar proved the strings' formats (``__post_init__``'s checks of
            # them); only the integers' ranges are left (else the strict path's error).
            if epoch <= MAX_EPOCH and theta <= THETA_MAX_MICRO:
                return unchecked(cls, epoch=epoch, node_id=m[2].decode("ascii"),
                                 theta=theta, nonce=m[3].decode("ascii"))
        # (Not super(): a slots dataclass is a new class, which zero-argument super()
        # does not know.)
        return cls.from_payload(decode_object(
            payload, max_bytes=cls.MAX_PAYLOAD_BYTES, max_depth=cls.MAX_DEPTH))


#: The canonical payload of a declaration, exactly: keys in order, no whitespace,
#: non-negative integers without leading zeros (at most 16 digits: ranges are checked
#: after the match), lowercase hex of a node id's and a nonce's lengths.
_CANONICAL_DECLARATION = re.compile(
    rb'\{"epoch":(0|[1-9][0-9]{0,15}),"node_id":"([0-9a-f]{64})",'
    rb'"nonce":"([0-9a-f]{32})","theta":(0|[1-9][0-9]{0,15})\}'
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocation(Message):
    """coordinator -> all: the outcome of ``epoch``.

    ``q[l]`` is Q_l per location; ``included`` the included node ids in strictly
    increasing order; ``contributions[i]`` what the mechanism charges ``included[i]`` (in
    kind: units of its own location's resource; in money: money units), all micro-units.
    ``debts`` (optional) is restitution: ``debts[i]`` what ``included[i]`` withheld in an
    earlier epoch it was caught free-riding in and still owes, in the same units. What
    ``included[i]`` owes this epoch is ``contributions[i] + debts[i]`` (:meth:`owed_of`).
    Omitted when nobody owes a debt (one encoding per allocation: present means some
    entry is positive).
    """

    TYPE = "allocation"
    SIGNER = "coordinator"
    MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # 100_000 ids and amounts fit in about 9 MB

    epoch: int
    mechanism: str
    q: tuple[int, ...]
    included: tuple[str, ...]
    contributions: tuple[int, ...]
    expected_welfare: int
    debts: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        check_epoch("epoch", self.epoch)
        check_choice("mechanism", self.mechanism, MECHANISMS)
        check_int_tuple("q", self.q, 0, MAX_QUANTITY_MICRO, max_len=MAX_LOCATIONS)
        check_tuple("included", self.included, max_len=MAX_INCLUDED)
        for i, node in enumerate(self.included):
            check_node_id(f"included[{i}]", node)
        # Strictly increasing: one encoding per set, and duplicates are impossible.
        if any(a >= b for a, b in zip(self.included, self.included[1:], strict=False)):
            raise OutOfRangeError("included must be sorted and free of duplicates")
        check_int_tuple(
            "contributions", self.contributions, 0, MAX_QUANTITY_MICRO, max_len=MAX_INCLUDED
        )
        if len(self.contributions) != len(self.included):
            raise OutOfRangeError("contributions must have one entry per included node")
        check_int("expected_welfare", self.expected_welfare, -MAX_WELFARE_MICRO, MAX_WELFARE_MICRO)
        if self.debts is not None:
            check_int_tuple("debts", self.debts, 0, MAX_QUANTITY_MICRO, max_len=MAX_INCLUDED)
            if len(self.debts) != len(self.included):
                raise OutOfRangeError("debts must have one entry per included node")
            if not any(self.debts):
                raise OutOfRangeError("debts must be omitted when every entry is 0")
            if any(c + d > MAX_QUANTITY_MICRO
                   for c, d in zip(self.contributions, self.debts, strict=True)):
                raise OutOfRangeError(f"contribution + debt above {MAX_QUANTITY_MICRO}")

    def _index(self, node_id: str) -> int | None:
        i = bisect_left(self.included, node_id)
        return i if i < len(self.included) and self.included[i] == node_id else None

    def contribution_of(self, node_id: str) -> int | None:
        """What the mechanism charges ``node_id``, or None if it is not included."""
        i = self._index(node_id)
        return None if i is None else self.contributions[i]

    def debt_of(self, node_id: str) -> int | None:
        """The earlier debt ``node_id`` must repay this epoch (0 if none), or None if it
        is not included."""
        i = self._index(node_id)
        return None if i is None else (0 if self.debts is None else self.debts[i])

    def owed_of(self, node_id: str) -> int | None:
        """What ``node_id`` owes this epoch, contribution plus debt (micro-units), or None
        if it is not included (binary search)."""
        i = self._index(node_id)
        if i is None:
            return None
        return self.contributions[i] + (0 if self.debts is None else self.debts[i])

    def owed(self) -> dict[str, int]:
        """node id -> contribution + debt, for every included node."""
        debts = self.debts if self.debts is not None else (0,) * len(self.included)
        return {n: c + d for n, c, d in zip(self.included, self.contributions, debts,
                                            strict=True)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Credential(Message):
    """coordinator -> included node: proof of inclusion, valid in [not_before, expires).

    ``node_id`` must be the id of ``public_key``; ``location`` is the holder's home
    location (where its contribution is owed), for attribution in audits.
    """

    TYPE = "credential"
    SIGNER = "coordinator"
    MAX_PAYLOAD_BYTES = 1024  # about 250 bytes; small, as it travels with every request

    node_id: str
    public_key: str
    epoch: int
    not_before: int
    expires: int
    location: int

    def __post_init__(self) -> None:
        check_node_id("node_id", self.node_id)
        check_strong_public_key("public_key", self.public_key)
        check_epoch("epoch", self.epoch)
        check_time("not_before", self.not_before)
        check_time("expires", self.expires)
        _check_location("location", self.location)
        if node_id_of(self.public_key) != self.node_id:
            raise OutOfRangeError("node_id is not the id of public_key")
        if not self.not_before < self.expires <= self.not_before + MAX_CREDENTIAL_LIFETIME:
            raise OutOfRangeError(
                f"need not_before < expires <= not_before + {MAX_CREDENTIAL_LIFETIME}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Commitment(Message):
    """included node -> coordinator: I have opened ``contribution`` for ``epoch``."""

    TYPE = "commitment"
    SIGNER = "node"

    epoch: int
    node_id: str
    contribution: int

    def __post_init__(self) -> None:
        check_epoch("epoch", self.epoch)
        check_node_id("node_id", self.node_id)
        _check_quantity("contribution", self.contribution)

    def signer_node_id(self) -> str:
        return self.node_id


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessRequest(Message):
    """requester -> host: a proof of possession bound to one host and one moment.

    Signed by the key of the credential whose ``credential_digest`` it names (README
    section 7); the credential itself travels beside the request in the access body
    (:mod:`protocol.access`). ``issued`` is the requester's clock (Unix seconds): a host
    accepts it within :data:`protocol.fields.MAX_CLOCK_SKEW` of its own and refuses a
    second request with the same ``nonce`` in that window (``replay``). ``amount`` is how
    much of the host's resource is asked for (micro-units; one WLAN channel is
    1_000_000); ``resource`` optionally names it (a file hash, ``compute``).
    ``session_key`` (optional) is the requester's fresh X25519 public key: granted, the
    request opens a session whose later requests draw on ``amount`` under a MAC (README
    section 7.1, :mod:`protocol.session`).
    """

    TYPE = "access_request"
    SIGNER = "credential_holder"
    MAX_PAYLOAD_BYTES = 1024
    MAX_DEPTH = 1

    credential_digest: str
    host_id: str
    epoch: int
    issued: int
    nonce: str
    amount: int
    resource: str | None = None
    session_key: str | None = None

    def __post_init__(self) -> None:
        check_hex("credential_digest", self.credential_digest, DIGEST_HEX_CHARS)
        check_node_id("host_id", self.host_id)
        check_epoch("epoch", self.epoch)
        check_time("issued", self.issued)
        check_nonce("nonce", self.nonce)
        check_int("amount", self.amount, 1, MAX_QUANTITY_MICRO)
        if self.resource is not None:
            _check_resource("resource", self.resource)
        if self.session_key is not None:
            check_session_key("session_key", self.session_key)

    @classmethod
    def parse_payload(cls, payload: bytes) -> AccessRequest:
        """The request of a (signed) payload: what ``decode_object`` and
        :meth:`from_payload` give, with a canonical payload (every honest one) matched
        in one step instead (:data:`_CANONICAL_ACCESS_REQUEST`); anything else goes
        through the strict decoder, which decides its error."""
        return _parse_access_request(payload)


@functools.lru_cache(maxsize=1024)
def _parse_access_request(payload: bytes) -> AccessRequest:
    # A pure function of the bytes with a frozen result, so remembering the last ones is
    # safe: a host parses each granted request twice (its check, then the receipt's).
    m = _CANONICAL_ACCESS_REQUEST.fullmatch(payload)
    if m is None:
        return AccessRequest.from_payload(decode_object(
            payload, max_bytes=AccessRequest.MAX_PAYLOAD_BYTES,
            max_depth=AccessRequest.MAX_DEPTH))
    amount, digest, epoch, host_id, issued, nonce, resource, session_key = m.groups()
    # The grammar proved every string field's format (``__post_init__``'s checks of
    # them); the integers' ranges are all that is left to check.
    values = (int(epoch), int(issued), int(amount))
    if values[0] > MAX_EPOCH or values[1] > MAX_TIME or not 1 <= values[2] <= MAX_QUANTITY_MICRO:
        return AccessRequest.from_payload(decode_object(  # it raises the field's error
            payload, max_bytes=AccessRequest.MAX_PAYLOAD_BYTES,
            max_depth=AccessRequest.MAX_DEPTH))
    # The grammar proves a session key's format, not that it names a point of large
    # order (a small-order one must be refused here as by the strict path).
    key = None if session_key is None else check_session_key("session_key",
                                                              session_key.decode())
    return unchecked(AccessRequest, credential_digest=digest.decode(),
                     host_id=host_id.decode(), epoch=values[0], issued=values[1],
                     nonce=nonce.decode(), amount=values[2],
                     resource=None if resource is None else resource.decode(),
                     session_key=key)


#: The canonical payload of an access request, exactly: keys in order, no spaces,
#: non-negative integers without leading zeros (at most 16 digits; ranges are
#: ``__post_init__``'s), lowercase hex, a printable ASCII resource without the two
#: characters JSON escapes. At most 1 024 bytes by construction.
_CANONICAL_ACCESS_REQUEST = re.compile(
    rb'\{"amount":(0|[1-9][0-9]{0,15}),"credential_digest":"([0-9a-f]{64})",'
    rb'"epoch":(0|[1-9][0-9]{0,15}),"host_id":"([0-9a-f]{64})",'
    rb'"issued":(0|[1-9][0-9]{0,15}),"nonce":"([0-9a-f]{32})"'
    rb'(?:,"resource":"([\x20\x21\x23-\x5b\x5d-\x7e]{1,128})")?'
    rb'(?:,"session_key":"([0-9a-f]{64})")?\}'
)


def _embedded_request(request: object) -> tuple[Envelope, AccessRequest]:
    """The ``request`` field of a receipt, refusal or complaint: an ``access_request``
    envelope within its type's limits, and its parsed payload (its signature is checked
    where the message enters)."""
    env = _check_embedded("request", request, frozenset({AccessRequest.TYPE}))
    if len(env.payload) > AccessRequest.MAX_PAYLOAD_BYTES:
        raise TooLargeError("request: payload over the access_request limit")
    return env, AccessRequest.parse_payload(env.payload)


def _answered_request(
    answer: GrantReceipt | Refusal, request: object
) -> AccessRequest:
    """The embedded request of a receipt or refusal, which must be the one it answers:
    same host, nonce and epoch, signed by the requester it names. (Its signature is
    checked where the answer enters: by the roamer against what it sent, by the
    coordinator in protocol.verify.open_evidence.)"""
    env, req = _embedded_request(request)
    if (req.host_id != answer.host_id or req.nonce != answer.nonce
            or req.epoch != answer.epoch or node_id_of(env.signer) != answer.requester_id):
        raise OutOfRangeError("request: not the request this answer names")
    return req


@dataclass(frozen=True, slots=True, kw_only=True)
class GrantReceipt(Message):
    """host -> requester (and, via audits, coordinator): ``amount`` granted at ``time``.

    ``request`` is the requester's own signed ``access_request`` that was granted: the
    host's ledger entry. The requester cannot deny it (its signature) and the host cannot
    make one up (it cannot sign for the requester), so the audit counts a receipt toward
    the host's capacity used only through it (README section 7, step 5). ``nonce`` and
    ``amount`` repeat the request's nonce and what was granted (at most what was asked).
    ``session_key`` (only if the request has one): the host's X25519 key of the epoch;
    the session opened holds ``amount`` (README section 7.1).
    """

    TYPE = "grant_receipt"
    SIGNER = "node"
    MAX_PAYLOAD_BYTES = 4096  # the embedded request is at most 1024 bytes of payload
    MAX_DEPTH = 2
    ENVELOPE_FIELDS = frozenset({"request"})

    epoch: int
    host_id: str
    requester_id: str
    nonce: str
    amount: int
    time: int
    request: Envelope
    session_key: str | None = None

    def __post_init__(self) -> None:
        check_epoch("epoch", self.epoch)
        check_node_id("host_id", self.host_id)
        check_node_id("requester_id", self.requester_id)
        check_nonce("nonce", self.nonce)
        check_int("amount", self.amount, 1, MAX_QUANTITY_MICRO)
        check_time("time", self.time)
        req = _answered_request(self, self.request)
        if self.amount > req.amount:
            raise OutOfRangeError(f"amount {self.amount} exceeds the {req.amount} asked")
        if self.session_key is not None:
            check_session_key("session_key", self.session_key)
            if req.session_key is None:
                raise OutOfRangeError("session_key: the request asked for no session")

    def signer_node_id(self) -> str:
        return self.host_id

    def canonical_payload(self) -> bytes:
        """``canonical(self.to_payload())``, written directly: every field is a checked
        integer or lowercase hex, and the request is an envelope (whose own encoding is
        canonical), so key order is all there is to it (a property test compares)."""
        key = "" if self.session_key is None else f',"session_key":"{self.session_key}"'
        return (f'{{"amount":{self.amount},"epoch":{self.epoch},"host_id":"{self.host_id}",'
                f'"nonce":"{self.nonce}","request":').encode("ascii") + (
            self.request.to_bytes() + (f',"requester_id":"{self.requester_id}"{key},'
                                       f'"time":{self.time}}}').encode("ascii"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Refusal(Message):
    """host -> requester (and, via audits, coordinator): access refused, with a code.

    ``request`` is the requester's signed request that was refused (only a verified
    request is ever refused with a signed refusal) and ``nonce`` its nonce. ``amount``
    (optional) must then equal what the request asked for; the audit judges a
    ``capacity_exhausted`` refusal by the request (README section 7, step 5), and bounds
    the refusal's ``time`` by the request's ``issued``, so a host cannot date a refusal
    late to make later grants excuse it.
    """

    TYPE = "refusal"
    SIGNER = "node"
    MAX_PAYLOAD_BYTES = 4096
    MAX_DEPTH = 2
    ENVELOPE_FIELDS = frozenset({"request"})

    epoch: int
    host_id: str
    requester_id: str
    nonce: str
    reason: str
    time: int
    request: Envelope
    amount: int | None = None  # what the refused request asked for (micro-units)

    def __post_init__(self) -> None:
        check_epoch("epoch", self.epoch)
        check_node_id("host_id", self.host_id)
        check_node_id("requester_id", self.requester_id)
        check_nonce("nonce", self.nonce)
        check_choice("reason", self.reason, REFUSAL_REASONS)
        check_time("time", self.time)
        if self.amount is not None:
            check_int("amount", self.amount, 1, MAX_QUANTITY_MICRO)
        req = _answered_request(self, self.request)
        if self.amount is not None and self.amount != req.amount:
            raise OutOfRangeError(f"amount {self.amount} is not the {req.amount} asked")

    def signer_node_id(self) -> str:
        return self.host_id


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeAnswer(Message):
    """host -> coordinator: "I, ``host_id``, am here for ``epoch``", over the probe's
    fresh ``nonce`` (README section 7, probes). Only the host's key can make it, so an
    answer from another node's endpoint, or none, is a probe unanswered."""

    TYPE = "probe_answer"
    SIGNER = "node"
    MAX_PAYLOAD_BYTES = 512
    MAX_DEPTH = 1

    epoch: int
    host_id: str
    nonce: str

    def __post_init__(self) -> None:
        check_epoch("epoch", self.epoch)
        check_node_id("host_id", self.host_id)
        check_nonce("nonce", self.nonce)

    def signer_node_id(self) -> str:
        return self.host_id


@dataclass(frozen=True, slots=True, kw_only=True)
class Complaint(Message):
    """roamer -> coordinator: "``host_id`` did not answer this request of mine".

    ``request`` is the roamer's own signed ``access_request`` to ``host_id`` for
    ``epoch`` that got no signed answer (no receipt, no refusal: a dropped connection, a
    timeout, a plain error). The coordinator, as the resolving third party, relays
    exactly that request to the host, which must answer it with a receipt or a signed
    refusal (README section 7, step 7); a complaint the host leaves unanswered counts
    against it at the audit cut-off.
    """

    TYPE = "complaint"
    SIGNER = "node"
    MAX_PAYLOAD_BYTES = 4096  # the embedded request is at most 1024 bytes of payload
    MAX_DEPTH = 2
    ENVELOPE_FIELDS = frozenset({"request"})

    epoch: int
    requester_id: str
    host_id: str
    request: Envelope

    def __post_init__(self) -> None:
        check_epoch("epoch", self.epoch)
        check_node_id("requester_id", self.requester_id)
        check_node_id("host_id", self.host_id)
        if self.host_id == self.requester_id:
            raise OutOfRangeError("a node does not complain about itself")
        env, req = _embedded_request(self.request)
        if (req.host_id != self.host_id or req.epoch != self.epoch
                or node_id_of(env.signer) != self.requester_id):
            raise OutOfRangeError("request: not a request of this requester to this host")

    @property
    def nonce(self) -> str:
        """The complained-of request's nonce (the audit knows an answer by it)."""
        return complained_request(self).nonce

    def signer_node_id(self) -> str:
        return self.requester_id


def complained_request(complaint: Complaint) -> AccessRequest:
    """The access request a complaint carries (checked when it was built)."""
    return _embedded_request(complaint.request)[1]


#: Hosts one shopping list names at most (README section 7, step 8): the coordinator
#: assigns each host ``shoppers_per_host`` shoppers, so a shopper's expected load is about
#: that many requests per epoch; the cap bounds the worst draw.
MAX_SHOPPING_HOSTS = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class DutyRequest(Message):
    """included node -> coordinator: "which hosts do I shop at in ``epoch``?" (README
    section 7, step 8). Signed by ``node_id``, so only that node learns its duties;
    ``issued`` (its clock) must be within ``MAX_CLOCK_SKEW`` of the coordinator's, so a
    request seen later cannot be replayed to read them."""

    TYPE = "duty_request"
    SIGNER = "node"
    MAX_PAYLOAD_BYTES = 512
    MAX_DEPTH = 1

    epoch: int
    node_id: str
    issued: int

    def __post_init__(self) -> None:
        check_epoch("epoch", self.epoch)
        check_node_id("node_id", self.node_id)
        check_time("issued", self.issued)

    def signer_node_id(self) -> str:
        return self.node_id


@dataclass(frozen=True, slots=True, kw_only=True)
class ShoppingList(Message):
    """coordinator -> one shopper: the hosts ``shopper_id`` must ask in ``epoch`` with an
    ordinary access request, exactly as a roamer would (README section 7, step 8). Sent
    only in answer to the shopper's own signed ``duty_request``; never published."""

    TYPE = "shopping_list"
    SIGNER = "coordinator"
    MAX_PAYLOAD_BYTES = 8192  # 64 ids of 66 bytes, and the rest
    MAX_DEPTH = 2

    epoch: int
    shopper_id: str
    hosts: tuple[str, ...]

    def __post_init__(self) -> None:
        check_epoch("epoch", self.epoch)
        check_node_id("shopper_id", self.shopper_id)
        for i, host in enumerate(check_tuple("hosts", self.hosts,
                                             max_len=MAX_SHOPPING_HOSTS)):
            check_node_id(f"hosts[{i}]", host)
        if len(set(self.hosts)) != len(self.hosts):
            raise OutOfRangeError("hosts: a host is named twice")
        if self.shopper_id in self.hosts:
            raise OutOfRangeError("hosts: a shopper never shops at itself")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditReport(Message):
    """node -> coordinator: signed receipts and refusals it holds for ``epoch``.

    The evidence envelopes are carried as received, so the coordinator verifies each
    host's signature itself; the reporter cannot forge or alter them.
    """

    TYPE = "audit_report"
    SIGNER = "node"
    MAX_PAYLOAD_BYTES = 1536 * 1024  # its envelope stays within 2 MiB
    MAX_DEPTH = 3
    ENVELOPE_FIELDS = frozenset({"evidence"})

    epoch: int
    reporter_id: str
    evidence: tuple[Envelope, ...]

    def __post_init__(self) -> None:
        check_epoch("epoch", self.epoch)
        check_node_id("reporter_id", self.reporter_id)
        check_tuple("evidence", self.evidence, max_len=MAX_AUDIT_ITEMS)
        for i, item in enumerate(self.evidence):
            _check_embedded(f"evidence[{i}]", item, EVIDENCE_TYPES)

    def signer_node_id(self) -> str:
        return self.reporter_id


#: Every message type string mapped to its class: the one registry of the catalogue.
MESSAGE_TYPES: Mapping[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Registration,
        EpochAnnouncement,
        Declaration,
        Allocation,
        Credential,
        Commitment,
        AccessRequest,
        GrantReceipt,
        Refusal,
        AuditReport,
        ProbeAnswer,
        Complaint,
        DutyRequest,
        ShoppingList,
    )
}


def message_from_payload(message_type: str, payload: object) -> Message:
    """Build a message of a registered type from a decoded payload."""
    cls = MESSAGE_TYPES.get(message_type)
    if cls is None:
        raise UnexpectedMessageError(f"unknown message type {message_type!r:.40}")
    return cls.from_payload(payload)

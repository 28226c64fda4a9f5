"""Access sessions, sans-I/O: later decisions at one host authenticated by a shared key
(README section 7.1).

A roamer that will come back puts a fresh X25519 public key (``session_key``) in its
signed ``access_request``. When the host grants it, the ``grant_receipt`` (signed by the
host) carries the host's X25519 key of the epoch, and both sides derive, with
HKDF-SHA256 over the X25519 shared secret (salt: the digest of the signed request; info:
the domain and both public keys), a request key, an answer key and a 16-byte session id.
Both public keys are signed by their owners, so the agreement is authenticated.

Later requests in the session are *session requests*: a small JSON object MACed with
HMAC-SHA256 under the request key, with a counter (replays refused by a 64-wide sliding
window, as in IPsec and DTLS). They draw from the session's **balance**: the amount the
host granted the signed request, which is the session's bound, signed by the roamer. The
audit credits only the signed receipt (nothing a MAC authenticates, since the host knows
the key too), so a host cannot pad its ledger with session requests it made up.

* :func:`new_session_key` / :func:`open_roamer_session` / :class:`RoamerSession`: the
  roamer's side (build requests, check answers);
* :class:`SessionTable`: the host's bounded table of open sessions, its check of a
  session request (:meth:`SessionTable.check`) and its answer (:meth:`SessionTable.grant`).

Nothing here reads a clock or the network. Policy (revocation, resource, amount) is the
host's (``node.gate.authorize_session``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from protocol.encoding import JsonObject, canonical, decode
from protocol.envelope import DOMAIN, Envelope, _signing_bytes
from protocol.errors import (
    BadProofError,
    ExpiredError,
    OutOfRangeError,
    ReplayError,
    UnknownSessionError,
    WrongTypeError,
)
from protocol.fields import (
    MAX_TIME,
    check_epoch,
    check_hex,
    check_int,
    check_node_id,
    check_object,
    check_str,
    check_time,
)

SESSION_ID_BYTES = 16
SESSION_ID_HEX_CHARS = 2 * SESSION_ID_BYTES
MAC_BYTES = 32
#: Counters below the highest accepted one by less than this are still accepted once (a
#: roamer may have several requests in flight on several connections).
REPLAY_WINDOW = 64
#: Largest counter (JSON-safe integer).
MAX_COUNTER = 2**53 - 1
#: Largest amount of a session request (as for an ``access_request``).
MAX_SESSION_AMOUNT = 10**15
MAX_SESSION_RESOURCE_CHARS = 128
#: Largest session request body, bytes.
MAX_SESSION_BODY_BYTES = 512
#: Session request fields (``resource`` optional).
SESSION_REQUEST_FIELDS = frozenset({"amount", "counter", "host_id", "mac", "session"})

_KDF_INFO = DOMAIN + b"session\x00"
_REQUEST_LABEL = DOMAIN + b"session_request\x00"
_ANSWER_LABEL = DOMAIN + b"session_answer\x00"


def new_session_key() -> X25519PrivateKey:
    """A fresh X25519 key for one session (the roamer's side)."""
    return X25519PrivateKey.generate()


def public_hex(key: X25519PrivateKey) -> str:
    """The raw public key of ``key``, lowercase hex (the ``session_key`` field)."""
    return key.public_key().public_bytes_raw().hex()


def request_digest(request: Envelope) -> bytes:
    """SHA-256 of a signed request's signer, signature and signing input: the transcript
    a session's keys are bound to (the same construction as a credential's digest)."""
    # An Envelope's type was checked when it was built: the signing input needs no check.
    data = _signing_bytes(request.type, request.payload)
    return hashlib.sha256(bytes.fromhex(request.signer) + request.signature + data).digest()


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """What both sides derive: the session id (hex), the request and the answer key."""

    session_id: str
    request_key: bytes
    answer_key: bytes


def derive_keys(
    own: X25519PrivateKey, peer_key: str, *, roamer_key: str, host_key: str, request: Envelope
) -> SessionKeys:
    """HKDF-SHA256 (RFC 5869) over the X25519 (RFC 7748) shared secret of ``own`` and
    ``peer_key``: salt = :func:`request_digest` of the signed request that opened the
    session, info = ``"inkind/v1" 0x00 "session" 0x00 || roamer_key || host_key`` (raw
    bytes), 80 bytes of output = request key (32) || answer key (32) || session id (16).

    Raises ``bad_proof`` if ``peer_key`` is a low-order point (no shared secret).
    """
    try:
        shared = own.exchange(X25519PublicKey.from_public_bytes(bytes.fromhex(peer_key)))
    except ValueError:
        raise BadProofError("session key is a low-order point") from None
    okm = HKDF(
        algorithm=hashes.SHA256(),
        length=64 + SESSION_ID_BYTES,
        salt=request_digest(request),
        info=_KDF_INFO + bytes.fromhex(roamer_key) + bytes.fromhex(host_key),
    ).derive(shared)
    return SessionKeys(session_id=okm[64:].hex(), request_key=okm[:32], answer_key=okm[32:64])


def _u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def request_mac_input(
    session_id: str, host_id: str, counter: int, amount: int, resource: str | None
) -> bytes:
    """The bytes a session request's MAC covers (normative, README section 7.1)::

        "inkind/v1" 0x00 "session_request" 0x00 || session id (16) || host id (32)
        || u64 counter || u64 amount || u8 len(resource) || resource (ASCII, may be empty)
    """
    res = b"" if resource is None else resource.encode("ascii")
    return (_REQUEST_LABEL + bytes.fromhex(session_id) + bytes.fromhex(host_id)
            + _u64(counter) + _u64(amount) + len(res).to_bytes(1, "big") + res)


def answer_mac_input(session_id: str, counter: int, amount: int) -> bytes:
    """The bytes a session answer's MAC covers::

        "inkind/v1" 0x00 "session_answer" 0x00 || session id (16) || u64 counter
        || u64 amount granted
    """
    return _ANSWER_LABEL + bytes.fromhex(session_id) + _u64(counter) + _u64(amount)


def _mac(key: bytes, data: bytes) -> str:
    return hmac.digest(key, data, "sha256").hex()


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionRequest:
    """A later request in a session: ``amount`` of ``resource`` at ``host_id``, number
    ``counter``, MACed. Wire form: the canonical JSON object of these fields (``resource``
    omitted when None; ``mac`` 64 lowercase hex)."""

    session: str
    host_id: str
    counter: int
    amount: int
    resource: str | None = None
    mac: str

    def __post_init__(self) -> None:
        check_hex("session", self.session, SESSION_ID_HEX_CHARS)
        check_node_id("host_id", self.host_id)
        check_int("counter", self.counter, 1, MAX_COUNTER)
        check_int("amount", self.amount, 1, MAX_SESSION_AMOUNT)
        if self.resource is not None:
            text = check_str("resource", self.resource, max_chars=MAX_SESSION_RESOURCE_CHARS,
                             min_chars=1)
            if not (text.isascii() and text.isprintable()):
                raise OutOfRangeError("resource: must be printable ASCII")
        check_hex("mac", self.mac, 2 * MAC_BYTES)

    def mac_input(self) -> bytes:
        return request_mac_input(self.session, self.host_id, self.counter, self.amount,
                                 self.resource)

    def to_bytes(self) -> bytes:
        obj: JsonObject = {"amount": self.amount, "counter": self.counter,
                                     "host_id": self.host_id, "mac": self.mac,
                                     "session": self.session}
        if self.resource is not None:
            obj["resource"] = self.resource
        return canonical(obj, max_depth=1)

    @classmethod
    def from_obj(cls, obj: object) -> SessionRequest:
        """From a decoded JSON object (``unknown_field``, ``missing_field``, ...)."""
        if isinstance(obj, dict) and "resource" in obj:
            fields = check_object("session request", obj, SESSION_REQUEST_FIELDS | {"resource"})
            resource = fields["resource"]
            if not isinstance(resource, str):
                raise WrongTypeError("resource: expected string")
        else:
            fields = check_object("session request", obj, SESSION_REQUEST_FIELDS)
            resource = None
        session, host_id, mac = fields["session"], fields["host_id"], fields["mac"]
        counter, amount = fields["counter"], fields["amount"]
        if not (isinstance(session, str) and isinstance(host_id, str) and isinstance(mac, str)):
            raise WrongTypeError("session request: session, host_id and mac are strings")
        if not (isinstance(counter, int) and isinstance(amount, int)):
            raise WrongTypeError("session request: counter and amount are integers")
        return cls(session=session, host_id=host_id, counter=counter, amount=amount,
                   resource=resource, mac=mac)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SessionRequest:
        """Parse wire bytes (``too_large`` over :data:`MAX_SESSION_BODY_BYTES`)."""
        fast = parse_canonical_session(raw)
        if fast is not None:
            return fast
        return cls.from_obj(decode(raw, max_bytes=MAX_SESSION_BODY_BYTES, max_depth=1))


#: The canonical encoding of a session request, exactly (keys in order, no spaces,
#: integers without leading zeros, lowercase hex, printable ASCII resource without the
#: two characters JSON would escape): what :meth:`SessionRequest.to_bytes` writes.
_CANONICAL_SESSION = re.compile(
    rb'\{"amount":(0|[1-9][0-9]{0,15}),"counter":(0|[1-9][0-9]{0,15}),'
    rb'"host_id":"([0-9a-f]{64})","mac":"([0-9a-f]{64})",'
    rb'(?:"resource":"([\x20\x21\x23-\x5b\x5d-\x7e]{1,128})",)?'
    rb'"session":"([0-9a-f]{32})"\}'
)


def parse_canonical_session(raw: bytes) -> SessionRequest | None:
    """A session request in canonical form, parsed with one match instead of the general
    JSON decoder (every value still goes through :class:`SessionRequest`'s checks); None
    for anything else, which the general, strict parser then decides."""
    m = _CANONICAL_SESSION.fullmatch(raw)
    if m is None:
        return None
    amount, counter, host_id, mac, resource, session = m.groups()
    return SessionRequest(session=session.decode(), host_id=host_id.decode(),
                          counter=int(counter), amount=int(amount),
                          resource=None if resource is None else resource.decode(),
                          mac=mac.decode())


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionAnswer:
    """The host's answer to a granted session request, MACed under the answer key:
    ``{"amount": granted, "counter": c, "mac": hex, "session": id}``."""

    session: str
    counter: int
    amount: int
    mac: str

    def to_obj(self) -> JsonObject:
        return {"amount": self.amount, "counter": self.counter, "mac": self.mac,
                "session": self.session}

    def to_bytes(self) -> bytes:
        """Canonical JSON (keys sorted, no spaces; the values are integers and hex, so
        formatting them is the canonical encoding, which a test checks)."""
        return (f'{{"amount":{self.amount},"counter":{self.counter},"mac":"{self.mac}",'
                f'"session":"{self.session}"}}').encode("ascii")


# --- the roamer's side -------------------------------------------------------------------


class RoamerSession:
    """A roamer's open session at one host: builds MACed requests with increasing
    counters and checks the host's answers."""

    __slots__ = ("counter", "host_id", "keys")

    def __init__(self, keys: SessionKeys, *, host_id: str) -> None:
        self.keys = keys
        self.host_id = host_id
        self.counter = 0

    @property
    def session_id(self) -> str:
        return self.keys.session_id

    def request(self, amount: int, *, resource: str | None = None) -> SessionRequest:
        """The next request (counter + 1)."""
        self.counter += 1
        mac = _mac(self.keys.request_key, request_mac_input(
            self.keys.session_id, self.host_id, self.counter, amount, resource))
        return SessionRequest(session=self.keys.session_id, host_id=self.host_id,
                              counter=self.counter, amount=amount, resource=resource, mac=mac)

    def check_answer(self, obj: object, request: SessionRequest) -> int:
        """The amount granted by an answer (decoded JSON) to ``request``; ``bad_proof``
        unless it is the host's (its MAC) answer to that very request."""
        fields = check_object("session answer", obj, frozenset({"amount", "counter", "mac",
                                                                  "session"}))
        amount, count, mac = fields["amount"], fields["counter"], fields["mac"]
        if (fields["session"] != request.session or count != request.counter
                or not isinstance(amount, int) or isinstance(amount, bool)
                or not 1 <= amount <= request.amount or not isinstance(mac, str)):
            raise BadProofError("session answer is for another request")
        want = _mac(self.keys.answer_key, answer_mac_input(request.session, count, amount))
        if not hmac.compare_digest(want, mac):
            raise BadProofError("session answer MAC does not verify")
        return amount


def open_roamer_session(
    own: X25519PrivateKey, *, request: Envelope, host_id: str, host_session_key: str
) -> RoamerSession:
    """The roamer's session after a grant: ``request`` is its signed request (with
    ``session_key`` = ``own``'s public key), ``host_session_key`` the receipt's
    ``session_key`` (the receipt's signature must have been checked)."""
    keys = derive_keys(own, host_session_key, roamer_key=public_hex(own),
                       host_key=host_session_key, request=request)
    return RoamerSession(keys, host_id=host_id)


# --- the host's side ---------------------------------------------------------------------


@dataclass(slots=True)
class _Session:
    requester_id: str
    epoch: int
    expires: int  # refused from this time on (the credential's expiry + skew)
    request_key: bytes
    answer_key: bytes
    balance: int  # micro-units left of the signed grant
    top: int = 0  # highest counter accepted
    seen: int = 0  # bit i: counter top - i accepted (i < REPLAY_WINDOW)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedSession:
    """A session request whose MAC verified, fresh (its counter now recorded)."""

    request: SessionRequest
    requester_id: str
    epoch: int
    balance: int  # the session's balance before this request


class SessionTable:
    """The host's open sessions (README section 7.1), bounded.

    At most ``capacity`` sessions and ``per_requester`` per requester. Opening one more
    for a requester at its limit closes that requester's oldest; opening one in a full
    table closes the least recently used session. Only a granted signed request opens a
    session, so a requester can never hold more than ``per_requester``, and closing an
    honest roamer's session that is in use takes ``capacity / per_requester`` other
    included requesters each paying for grants. A closed session's requests are
    ``unknown_session``: the roamer opens another with one signed request.

    Sessions end with the epoch (:meth:`end_epoch`) and with their credential
    (``expired``). A refused session request changes nothing.
    """

    __slots__ = ("_by_requester", "_capacity", "_per_requester", "_sessions", "host_id")

    def __init__(self, *, host_id: str, capacity: int = 1 << 16, per_requester: int = 4) -> None:
        self.host_id = check_node_id("host_id", host_id)
        self._capacity = check_int("capacity", capacity, 1, 1 << 24)
        self._per_requester = check_int("per_requester", per_requester, 1, 1 << 10)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()  # least recent first
        self._by_requester: dict[str, list[str]] = {}  # session ids, oldest first

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        return session_id in self._sessions

    def balance(self, session_id: str) -> int | None:
        """A session's balance (micro-units), None if it is not open."""
        s = self._sessions.get(session_id)
        return None if s is None else s.balance

    def sessions_of(self, requester_id: str) -> int:
        return len(self._by_requester.get(requester_id, ()))

    def open(
        self, keys: SessionKeys, *, requester_id: str, epoch: int, expires: int, balance: int
    ) -> None:
        """Open a session (after a granted signed request; ``balance`` = amount granted)."""
        check_epoch("epoch", epoch)
        check_time("expires", expires)
        check_int("balance", balance, 1, MAX_SESSION_AMOUNT)
        if keys.session_id in self._sessions:  # 2^-64 per pair; never merge two sessions
            raise BadProofError("session id collision")
        mine = self._by_requester.setdefault(requester_id, [])
        if len(mine) >= self._per_requester:
            self._close(mine[0])
        elif len(self._sessions) >= self._capacity:
            self._close(next(iter(self._sessions)))
        self._sessions[keys.session_id] = _Session(
            requester_id=requester_id, epoch=epoch, expires=min(expires, MAX_TIME),
            request_key=keys.request_key, answer_key=keys.answer_key, balance=balance)
        self._by_requester.setdefault(requester_id, []).append(keys.session_id)

    def _close(self, session_id: str) -> None:
        s = self._sessions.pop(session_id)
        mine = self._by_requester[s.requester_id]
        mine.remove(session_id)
        if not mine:
            del self._by_requester[s.requester_id]

    def end_epoch(self, epoch: int) -> None:
        """Close every session of another epoch than ``epoch`` (sessions end with it)."""
        for sid in [sid for sid, s in self._sessions.items() if s.epoch != epoch]:
            self._close(sid)

    def check(self, request: SessionRequest, *, epoch: int, now: int) -> VerifiedSession:
        """Check a session request for the host enforcing ``epoch`` at ``now``.

        In order: addressed to this host (``bad_proof``); an open session
        (``unknown_session``) of this epoch (``unknown_session``: sessions end with their
        epoch) whose credential has not expired (``expired``); the MAC (``bad_proof``,
        constant-time compare); the counter new to the window (``replay``). Only then is
        the counter recorded (and the session marked recently used): a refused request
        changes nothing.
        """
        if request.host_id != self.host_id:
            raise BadProofError("session request is addressed to another host")
        s = self._sessions.get(request.session)
        if s is None or s.epoch != epoch:
            raise UnknownSessionError("no such session at this host (open one)")
        if now >= s.expires:
            raise ExpiredError("the session's credential has expired")
        want = hmac.digest(s.request_key, request.mac_input(), "sha256")
        if not hmac.compare_digest(want, bytes.fromhex(request.mac)):
            raise BadProofError("session request MAC does not verify")
        counter = request.counter
        if counter > s.top:
            shift = counter - s.top
            s.seen = ((s.seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1)
            s.top = counter
        else:
            back = s.top - counter
            if back >= REPLAY_WINDOW or s.seen >> back & 1:
                raise ReplayError(f"session counter {counter} already used or too old")
            s.seen |= 1 << back
        self._sessions.move_to_end(request.session)
        return VerifiedSession(request=request, requester_id=s.requester_id, epoch=s.epoch,
                               balance=s.balance)

    def grant(self, verified: VerifiedSession, amount: int) -> SessionAnswer:
        """Draw ``amount`` (at most the balance) from the session; the MACed answer."""
        sid = verified.request.session
        s = self._sessions.get(sid)
        if s is None or not 1 <= amount <= s.balance:
            raise OutOfRangeError("amount exceeds the session's balance")
        s.balance -= amount
        counter = verified.request.counter
        answer = SessionAnswer(session=sid, counter=counter, amount=amount,
                               mac=_mac(s.answer_key, answer_mac_input(sid, counter, amount)))
        if not s.balance:  # spent: free its slot (later requests: unknown_session)
            self._close(sid)
        return answer


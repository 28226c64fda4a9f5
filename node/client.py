"""HTTP clients a node uses: one for the coordinator, one for other nodes (hosts).

Both follow ``protocol/HTTP.md`` and wrap an :class:`aiohttp.ClientSession` the caller
owns (one session serves many nodes in one event loop).

* :class:`CoordinatorClient` turns every ``{"code", "message"}`` error answer back into
  the typed error with :func:`protocol.from_wire` and raises it; coordinator-signed
  answers (announcement, allocation, credential) are verified against the trusted
  coordinator key before they are returned. An epoch's allocation and directory are the
  same document for every node: clients that share one :class:`SharedDocuments` (the
  nodes of one process) fetch, verify and parse each once, not once per node. The HTTP
  binding's own codes (``no_epoch``, ``unknown_epoch``, ...) are protocol codes too; a
  code this implementation does not know arrives as
  :class:`~protocol.errors.UnrecognizedError` keeping the code.
* :class:`PeerClient` asks a host for access in one round trip (plain, a file download
  or a compute job), sending a body built by :func:`protocol.make_access_request`
  (re-exported here). A refusal is an answer, not an exception: :class:`AccessAnswer` carries
  the host-signed receipt or refusal (checked against the host's key from the directory)
  or the plain error of a request the host could not verify. A request built with a
  ``session_key`` opens a session when granted (:meth:`PeerClient.open_session`); later
  requests in it (:meth:`PeerClient.session_access`) are MACed (README section 7.1).

Response bodies are read with size limits. Network failures surface as
:class:`aiohttp.ClientError` / :class:`TimeoutError`; this module does not retry.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from protocol import (
    AccessBody,
    Allocation,
    Credential,
    DutyRequest,
    Envelope,
    EpochAnnouncement,
    GrantReceipt,
    InkindError,
    Refusal,
    ShoppingList,
    check_receipt,
    check_refusal,
    from_wire,
    node_id_of,
    open_embedded,
)
from protocol.access import make_access_request as make_access_request  # re-exported
from protocol.envelope import envelope_size_limit
from protocol.errors import (
    MalformedError,
    OutOfRangeError,
    TooLargeError,
    UnknownKeyError,
    WrongSignerError,
)
from protocol.fields import check_node_id
from protocol.identity import check_strong_public_key
from protocol.session import RoamerSession, SessionRequest, open_roamer_session

#: Largest JSON answer that is not an envelope (directory, status), bytes.
MAX_JSON_BYTES = 32 * 1024 * 1024
#: Largest file a download accepts, bytes.
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024
#: Headers of a file download: the receipt (base64 of its envelope JSON), or the answer
#: to a session request (its JSON).
RECEIPT_HEADER = "X-Inkind-Receipt"
SESSION_HEADER = "X-Inkind-Session-Answer"
DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=30)
#: Documents a :class:`SharedDocuments` keeps (the allocation and directory of the last
#: few epochs; an allocation of 100,000 nodes is about 9 MB).
SHARED_DOCUMENTS = 8

T = TypeVar("T")


async def _read(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, refused (``too_large``) once it exceeds ``limit`` bytes.

    ``StreamReader.read(n)`` returns what has arrived so far, not n bytes: read to EOF.
    """
    if resp.content_length is not None and resp.content_length > limit:
        raise TooLargeError(f"answer of {resp.content_length} bytes exceeds {limit}")
    buf = bytearray()
    while chunk := await resp.content.read(min(limit + 1 - len(buf), 1 << 20)):
        buf += chunk
        if len(buf) > limit:
            raise TooLargeError(f"answer exceeds {limit} bytes")
    return bytes(buf)


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise MalformedError(f"answer is not JSON: {data[:80]!r}") from None


def _error_of(body: object, status: int) -> InkindError:
    if isinstance(body, dict) and "code" in body and "message" in body:
        return from_wire({"code": body["code"], "message": body["message"]})
    return MalformedError(f"HTTP {status} without an error body: {body!r:.120}")


async def _raise_for(resp: aiohttp.ClientResponse) -> None:
    if resp.status < 400:
        return
    data = await _read(resp, 64 * 1024)
    try:
        body: object = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        body = data[:200]
    raise _error_of(body, resp.status)


def base_url(endpoint: str) -> str:
    """``host:port`` from the directory to an HTTP base URL."""
    return endpoint if "://" in endpoint else f"http://{endpoint}"


# --- coordinator --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryEntry:
    """An included host: where it listens and what it owes (micro-units)."""

    node_id: str
    public_key: str
    location: int
    endpoint: str | None
    kind: str
    contribution: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Directory:
    epoch: int
    nodes: tuple[DirectoryEntry, ...]

    def by_id(self) -> dict[str, DirectoryEntry]:
        return {n.node_id: n for n in self.nodes}


def parse_directory(body: object) -> Directory:
    """Validate the unsigned directory JSON; an entry whose id is not its key's is refused."""
    if not isinstance(body, dict) or not isinstance(body.get("nodes"), list):
        raise MalformedError("directory: expected {epoch, nodes: [...]}")
    epoch = body.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise OutOfRangeError("directory: bad epoch")
    nodes: list[DirectoryEntry] = []
    for item in body["nodes"]:
        if not isinstance(item, dict):
            raise MalformedError("directory: an entry is not an object")
        key = check_strong_public_key("public_key", item.get("public_key"))
        nid = check_node_id("node_id", item.get("node_id"))
        if node_id_of(key) != nid:
            raise WrongSignerError("directory: node_id is not the id of public_key")
        location, contribution = item.get("location"), item.get("contribution", 0)
        endpoint, kind = item.get("endpoint"), item.get("kind", "")
        if isinstance(location, bool) or not isinstance(location, int):
            raise OutOfRangeError("directory: bad location")
        if isinstance(contribution, bool) or not isinstance(contribution, int):
            raise OutOfRangeError("directory: bad contribution")
        if endpoint is not None and not isinstance(endpoint, str):
            raise OutOfRangeError("directory: bad endpoint")
        if not isinstance(kind, str):
            raise OutOfRangeError("directory: bad kind")
        nodes.append(
            DirectoryEntry(
                node_id=nid,
                public_key=key,
                location=location,
                endpoint=endpoint or None,
                kind=kind,
                contribution=contribution,
            )
        )
    return Directory(epoch=epoch, nodes=tuple(nodes))


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """An epoch's verified allocation with its included set as a frozenset (built once
    and shared: a host's gate keeps it as is instead of copying N ids)."""

    allocation: Allocation
    included: frozenset[str]


class SharedDocuments:
    """Epoch documents of the coordinator, fetched, verified and parsed once per process.

    Every node asks for the same allocation and directory of an epoch; N nodes in one
    process each downloading and checking the whole document is O(N) work per node and
    O(N^2) per process. Clients given one instance share each document: the first asker
    loads it, concurrent askers wait for that load, later ones get the kept value. Only
    what a load returned is kept -- the loader verifies the coordinator's signature
    against the trusted key before it returns -- and the key names everything the check
    depended on (coordinator URL, trusted key, document, epoch), so a client trusting
    another key never reads a value checked against this one. A failed load is not kept
    (every waiter gets its error; the next ask loads again). At most ``max_entries``
    documents are kept, the least recently loaded dropped first.
    """

    def __init__(self, max_entries: int = SHARED_DOCUMENTS) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.loads = 0  # loads started (what sharing saves, for tests and benchmarks)
        self._entries: OrderedDict[Hashable, asyncio.Future[Any]] = OrderedDict()
        self._opened: OrderedDict[Hashable, Any] = OrderedDict()

    async def get(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        """The value kept under ``key``, else what ``await load()`` returns (loaded once
        however many ask at the same time). A caller cancelled while waiting does not
        cancel the load the others wait for."""
        entry = self._entries.get(key)
        if entry is None:
            entry = asyncio.ensure_future(self._load(key, load))
            self._entries[key] = entry
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        value: T = await asyncio.shield(entry)
        return value

    def opened(self, key: Hashable, open_: Callable[[], T]) -> T:
        """``open_()``, remembered under ``key`` (which must name all it depends on: the
        exact bytes received and the trusted key), so the same signed bytes are
        verified and parsed once per process however many nodes poll them (the
        announcement). A refusal is raised, never kept. Bounded like :meth:`get`."""
        if key in self._opened:
            value: T = self._opened[key]
            return value
        value = open_()
        self._opened[key] = value
        while len(self._opened) > self.max_entries:
            self._opened.popitem(last=False)
        return value

    async def _load(self, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
        self.loads += 1
        try:
            return await load()
        except BaseException:
            if self._entries.get(key) is asyncio.current_task():
                del self._entries[key]
            raise


class CoordinatorClient:
    """The coordinator's endpoints (HTTP.md "Coordinator").

    ``coordinator_key`` is the trusted coordinator key; if None and
    ``trust_on_first_use`` is set, the signer of the first announcement is trusted from
    then on (convenient for a local testbed; configure the key in production).
    ``documents``: where epoch documents are kept, shared with the other clients of this
    process that are given the same object (default: this client's own).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        *,
        coordinator_key: str | None = None,
        trust_on_first_use: bool = False,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        documents: SharedDocuments | None = None,
    ) -> None:
        self.session = session
        self.documents = documents if documents is not None else SharedDocuments()
        self.url = url.rstrip("/")
        if coordinator_key is not None:
            check_strong_public_key("coordinator_key", coordinator_key)
        self.coordinator_key = coordinator_key
        self.trust_on_first_use = trust_on_first_use
        self.timeout = timeout

    def _trusted(self) -> frozenset[str]:
        if self.coordinator_key is None:
            raise UnknownKeyError("no coordinator key is trusted")
        return frozenset({self.coordinator_key})

    async def _get(self, path: str, limit: int) -> bytes:
        async with self.session.get(self.url + path, timeout=self.timeout) as resp:
            await _raise_for(resp)
            return await _read(resp, limit)

    async def _post(self, path: str, envelope: Envelope) -> dict[str, Any]:
        async with self.session.post(
            self.url + path,
            data=envelope.to_bytes(),
            headers={"Content-Type": "application/json"},
            timeout=self.timeout,
        ) as resp:
            await _raise_for(resp)
            body = _json(await _read(resp, MAX_JSON_BYTES))
        if not isinstance(body, dict):
            raise MalformedError("answer is not a JSON object")
        return body

    async def register(self, envelope: Envelope) -> dict[str, Any]:
        """``POST /v1/register`` with a signed ``registration``."""
        return await self._post("/v1/register", envelope)

    async def announcement(self) -> tuple[Envelope, EpochAnnouncement]:
        """``GET /v1/announcement``, verified (the coordinator key, as signer)."""
        raw = await self._get(
            "/v1/announcement", envelope_size_limit(EpochAnnouncement.MAX_PAYLOAD_BYTES)
        )
        env = Envelope.from_bytes(
            raw, max_size=envelope_size_limit(EpochAnnouncement.MAX_PAYLOAD_BYTES)
        )
        if self.coordinator_key is None and self.trust_on_first_use:
            _, ann = open_embedded(env, EpochAnnouncement, trusted=frozenset({env.signer}))
            self.coordinator_key = env.signer
            return env, ann
        trusted = self._trusted()

        def open_() -> EpochAnnouncement:
            return open_embedded(env, EpochAnnouncement, trusted=trusted)[1]

        # Every node of the process polls the same announcement: verified once.
        return env, self.documents.opened(("announcement", trusted, raw), open_)

    async def declare(self, envelope: Envelope) -> dict[str, Any]:
        """``POST /v1/declarations`` with a signed ``declaration``."""
        return await self._post("/v1/declarations", envelope)

    async def allocation(self, epoch: int) -> Allocation:
        """``GET /v1/allocation/{epoch}``, verified and checked to be for ``epoch``."""
        return (await self.outcome(epoch)).allocation

    async def outcome(self, epoch: int) -> Outcome:
        """The allocation of ``epoch`` (:meth:`allocation`) with its included set, loaded
        once per :class:`SharedDocuments`."""
        trusted = self._trusted()

        async def load() -> Outcome:
            limit = envelope_size_limit(Allocation.MAX_PAYLOAD_BYTES)
            raw = await self._get(f"/v1/allocation/{epoch}", limit)
            env = Envelope.from_bytes(raw, max_size=limit)
            _, alloc = open_embedded(env, Allocation, trusted=trusted)
            if alloc.epoch != epoch:
                raise OutOfRangeError(
                    f"asked for the allocation of epoch {epoch}, got {alloc.epoch}")
            return Outcome(allocation=alloc, included=frozenset(alloc.included))

        return await self.documents.get(("allocation", self.url, trusted, epoch), load)

    async def credential(self, epoch: int, node_id: str) -> tuple[Envelope, Credential]:
        """``GET /v1/credential/{epoch}/{node_id}``, verified; ``not_included`` if excluded."""
        limit = envelope_size_limit(Credential.MAX_PAYLOAD_BYTES)
        raw = await self._get(f"/v1/credential/{epoch}/{node_id}", limit)
        env = Envelope.from_bytes(raw, max_size=limit)
        _, cred = open_embedded(env, Credential, trusted=self._trusted())
        if cred.epoch != epoch or cred.node_id != node_id:
            raise OutOfRangeError("credential for another epoch or node than asked")
        return env, cred

    async def directory(self, epoch: int) -> Directory:
        """``GET /v1/directory/{epoch}`` (unsigned; receipts are checked against its keys),
        loaded once per :class:`SharedDocuments`."""

        async def load() -> Directory:
            raw = await self._get(f"/v1/directory/{epoch}", MAX_JSON_BYTES)
            directory = parse_directory(_json(raw))
            if directory.epoch != epoch:
                raise OutOfRangeError(f"asked for the directory of epoch {epoch}")
            return directory

        return await self.documents.get(("directory", self.url, epoch), load)

    async def commit(self, envelope: Envelope) -> dict[str, Any]:
        """``POST /v1/commitments`` with a signed ``commitment``."""
        return await self._post("/v1/commitments", envelope)

    async def audit(self, envelope: Envelope) -> dict[str, Any]:
        """``POST /v1/audit`` with a signed ``audit_report``."""
        return await self._post("/v1/audit", envelope)

    async def complain(self, envelope: Envelope) -> dict[str, Any]:
        """``POST /v1/complaints`` with a signed ``complaint`` (protocol README §7, step 7)."""
        return await self._post("/v1/complaints", envelope)

    async def duties(self, envelope: Envelope) -> ShoppingList:
        """``POST /v1/duties`` with this node's signed ``duty_request``: the hosts it shops
        at in that epoch (protocol README section 7, step 8), verified as signed by the
        coordinator for this very request (``out_of_range`` if for another node or
        epoch)."""
        _, req = open_embedded(envelope, DutyRequest, trusted={envelope.signer})
        limit = envelope_size_limit(ShoppingList.MAX_PAYLOAD_BYTES)
        async with self.session.post(
            self.url + "/v1/duties",
            data=envelope.to_bytes(),
            headers={"Content-Type": "application/json"},
            timeout=self.timeout,
        ) as resp:
            await _raise_for(resp)
            raw = await _read(resp, limit)
        _, duty = open_embedded(Envelope.from_bytes(raw, max_size=limit), ShoppingList,
                                trusted=self._trusted())
        if duty.epoch != req.epoch or duty.shopper_id != req.node_id:
            raise OutOfRangeError("shopping list for another epoch or node than asked")
        return duty

    async def status(self) -> dict[str, Any]:
        """``GET /v1/status`` (unsigned operator JSON)."""
        body = _json(await self._get("/v1/status", MAX_JSON_BYTES))
        if not isinstance(body, dict):
            raise MalformedError("status is not a JSON object")
        return body


# --- peers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessAnswer:
    """A host's answer: a verified receipt, a verified refusal, or a plain error."""

    receipt_envelope: Envelope | None = None
    receipt: GrantReceipt | None = None
    refusal_envelope: Envelope | None = None
    refusal: Refusal | None = None
    error: InkindError | None = None

    @property
    def granted(self) -> bool:
        return self.receipt is not None

    @property
    def reason(self) -> str:
        if self.receipt is not None:
            return "granted"
        if self.refusal is not None:
            return self.refusal.reason
        return self.error.code if self.error is not None else "internal"

    @property
    def evidence(self) -> Envelope | None:
        """What goes into an audit report (a host-signed receipt or refusal)."""
        return self.receipt_envelope or self.refusal_envelope


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionGrant:
    """A host's answer to a session request: the amount granted, or the plain error."""

    request: SessionRequest
    amount: int = 0
    error: InkindError | None = None

    @property
    def granted(self) -> bool:
        return self.error is None and self.amount > 0


class PeerClient:
    """A node's client for other nodes' host endpoints (HTTP.md "Node").

    Pass ``host_key`` (from the directory) to the access methods so that a receipt or
    refusal signed by anyone else is refused (``unknown_key``) rather than kept.
    """

    def __init__(
        self, session: aiohttp.ClientSession, *, timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT
    ) -> None:
        self.session = session
        self.timeout = timeout

    async def _send(
        self, url: str, path: str, request: AccessBody, host_key: str | None
    ) -> tuple[AccessAnswer, aiohttp.ClientResponse, bytes]:
        async with self.session.post(
            url.rstrip("/") + path,
            data=request.to_bytes(),
            headers={"Content-Type": "application/json"},
            timeout=self.timeout,
        ) as resp:
            data = await _read(resp, MAX_DOWNLOAD_BYTES if resp.status < 400 else 256 * 1024)
        if resp.status < 400:
            return AccessAnswer(), resp, data
        try:
            body: object = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            body = data[:200]
        error = _error_of(body, resp.status)
        if isinstance(body, dict) and "refusal" in body:
            try:
                env = Envelope.from_obj(body["refusal"])
                refusal = self._open(env, Refusal, host_key)
                check_refusal(refusal, request)
            except InkindError as exc:
                return AccessAnswer(error=exc), resp, data
            return AccessAnswer(refusal_envelope=env, refusal=refusal, error=error), resp, data
        return AccessAnswer(error=error), resp, data

    @staticmethod
    def _open(env: Envelope, cls: type[GrantReceipt] | type[Refusal], host_key: str | None) -> Any:
        trusted = frozenset({host_key}) if host_key is not None else None
        _, message = open_embedded(env, cls, trusted=trusted)
        return message

    def _granted(self, env: Envelope, host_key: str | None, request: AccessBody) -> AccessAnswer:
        try:
            receipt: GrantReceipt = self._open(env, GrantReceipt, host_key)
            check_receipt(receipt, request)
        except InkindError as exc:
            return AccessAnswer(error=exc)
        return AccessAnswer(receipt_envelope=env, receipt=receipt)

    async def access(
        self, url: str, request: AccessBody, *, host_key: str | None = None
    ) -> AccessAnswer:
        """``POST /v1/access`` (WLAN coverage and channels)."""
        answer, _, data = await self._send(url, "/v1/access", request, host_key)
        if answer.error is not None or answer.refusal is not None:
            return answer
        try:
            env = Envelope.from_bytes(data, max_size=64 * 1024)
        except InkindError as exc:
            return AccessAnswer(error=exc)
        return self._granted(env, host_key, request)

    async def download(
        self, url: str, sha256: str, request: AccessBody, *, host_key: str | None = None
    ) -> tuple[AccessAnswer, bytes | None]:
        """``POST /v1/files/{sha256}``: the file's bytes (checked against the hash)."""
        answer, resp, data = await self._send(url, f"/v1/files/{sha256}", request, host_key)
        if answer.error is not None or answer.refusal is not None:
            return answer, None
        try:
            header = resp.headers.get(RECEIPT_HEADER, "")
            env = Envelope.from_bytes(base64.b64decode(header, validate=True), max_size=64 * 1024)
        except (binascii.Error, ValueError, InkindError):
            return AccessAnswer(error=MalformedError("download without a valid receipt")), None
        answer = self._granted(env, host_key, request)
        if answer.granted and hashlib.sha256(data).hexdigest() != sha256:
            return AccessAnswer(error=MalformedError("downloaded bytes do not match")), None
        return answer, data if answer.granted else None

    async def compute(
        self, url: str, request: AccessBody, *, host_key: str | None = None
    ) -> tuple[AccessAnswer, dict[str, Any] | None]:
        """``POST /v1/compute``: ``{"receipt", "result"}``."""
        answer, _, data = await self._send(url, "/v1/compute", request, host_key)
        if answer.error is not None or answer.refusal is not None:
            return answer, None
        try:
            body = _json(data)
            if not isinstance(body, dict) or not isinstance(body.get("result"), dict):
                raise MalformedError("compute answer without a result")
            env = Envelope.from_obj(body.get("receipt"))
        except InkindError as exc:
            return AccessAnswer(error=exc), None
        answer = self._granted(env, host_key, request)
        return answer, body["result"] if answer.granted else None

    @staticmethod
    def open_session(
        own: X25519PrivateKey, request: AccessBody, answer: AccessAnswer
    ) -> RoamerSession | None:
        """The session a granted ``request`` (built with ``session_key`` = ``own``'s public
        key) opened, None if the host opened none (its receipt has no ``session_key``)."""
        receipt = answer.receipt
        if receipt is None or receipt.session_key is None:
            return None
        return open_roamer_session(own, request=request.request, host_id=receipt.host_id,
                                   host_session_key=receipt.session_key)

    async def session_access(
        self, url: str, session: RoamerSession, *, amount: int, resource: str | None = None
    ) -> SessionGrant:
        """``POST /v1/access`` with the session's next request: the amount granted (the
        answer's MAC checked), or the plain error."""
        request = session.request(amount, resource=resource)
        async with self.session.post(
            url.rstrip("/") + "/v1/access",
            data=request.to_bytes(),
            headers={"Content-Type": "application/json"},
            timeout=self.timeout,
        ) as resp:
            data = await _read(resp, 64 * 1024)
        try:
            body: object = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            body = data[:200]
        if resp.status >= 400:
            return SessionGrant(request=request, error=_error_of(body, resp.status))
        try:
            return SessionGrant(request=request, amount=session.check_answer(body, request))
        except InkindError as exc:
            return SessionGrant(request=request, error=exc)

    async def files(self, url: str) -> list[dict[str, Any]]:
        """``GET /v1/files``: the host's shared files ``[{"sha256", "size"}]``."""
        async with self.session.get(url.rstrip("/") + "/v1/files", timeout=self.timeout) as r:
            await _raise_for(r)
            body = _json(await _read(r, MAX_JSON_BYTES))
        if not isinstance(body, dict) or not isinstance(body.get("files"), list):
            raise MalformedError("files answer is not {files: [...]}")
        return [f for f in body["files"] if isinstance(f, dict)]

    async def status(self, url: str) -> dict[str, Any]:
        async with self.session.get(url.rstrip("/") + "/v1/status", timeout=self.timeout) as r:
            await _raise_for(r)
            body = _json(await _read(r, MAX_JSON_BYTES))
        if not isinstance(body, dict):
            raise MalformedError("status is not a JSON object")
        return body

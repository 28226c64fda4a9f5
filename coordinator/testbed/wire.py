"""The launcher's side of the wire: the coordinator's endpoints and a roaming device.

Built from ``protocol`` and aiohttp alone (protocol/HTTP.md), as any third party would
build them: the launcher imports nothing of ``node``. Every signed answer is verified
against the key it must carry (the coordinator's, or the host's own) before it is used.

* :class:`Coordinator`: status, the signed allocation, credentials and the directory of
  an epoch, registrations and audit reports, and the admin actions (open, close, probe)
  of a ``--manual`` coordinator;
* :func:`ask`: one access attempt of a roaming device -- one POST of the access body
  (the credential beside an ``access_request`` signed for that host and moment, built by
  :func:`protocol.make_access_request`), and read the host's signed receipt or refusal
  -- the whole device in one function.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from protocol import (
    Allocation,
    Credential,
    DutyRequest,
    Envelope,
    GrantReceipt,
    Identity,
    InkindError,
    Refusal,
    ShoppingList,
    check_receipt,
    check_refusal,
    make_access_request,
)
from protocol.envelope import envelope_size_limit
from protocol.errors import MalformedError, OutOfRangeError, TooLargeError, from_wire
from protocol.identity import node_id_of
from protocol.kinds import Answer as KindAnswer
from protocol.kinds import ResourceKind
from protocol.verify import open_embedded, open_envelope

#: What the launcher reads at most: a status page, or a download (kind files), bytes.
JSON_LIMIT, DOWNLOAD_LIMIT = 32 << 20, 256 << 20
#: The header a file download's receipt comes in (protocol/HTTP.md "Node").
RECEIPT_HEADER = "X-Inkind-Receipt"
#: Admin actions wait for the mechanism (a close) and for the probes.
ADMIN_TIMEOUT = aiohttp.ClientTimeout(total=300)


async def _body(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, or ``too_large`` once it exceeds ``limit`` bytes."""
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


def _error(body: Any, status: int) -> InkindError:
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        return from_wire({"code": body["code"], "message": str(body.get("message", ""))})
    return MalformedError(f"HTTP {status} without an error body")


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryEntry:
    """An included host as the coordinator's directory publishes it."""

    node_id: str
    public_key: str
    endpoint: str | None


def parse_directory(body: Any, epoch: int) -> list[DirectoryEntry]:
    """The unsigned directory JSON of ``epoch``; an entry whose id is not its key's, or
    any other malformed entry, is refused (protocol/HTTP.md "Coordinator")."""
    if not isinstance(body, dict) or body.get("epoch") != epoch or not isinstance(
            body.get("nodes"), list):
        raise MalformedError(f"directory: expected {{epoch: {epoch}, nodes: [...]}}")
    out = []
    for item in body["nodes"]:
        key = item.get("public_key") if isinstance(item, dict) else None
        if not isinstance(key, str) or node_id_of(key) != item.get("node_id"):
            raise MalformedError("directory: an entry's node_id is not its key's")
        endpoint = item.get("endpoint")
        out.append(DirectoryEntry(node_id=item["node_id"], public_key=key,
                                  endpoint=endpoint if isinstance(endpoint, str) else None))
    return out


@dataclass(slots=True)
class Coordinator:
    """A coordinator at ``url`` whose signing key is ``key`` (hex)."""

    session: aiohttp.ClientSession
    url: str
    key: str
    token: str = ""  # the admin token (``INKIND_ADMIN_TOKEN``) of a --manual coordinator
    timeout: aiohttp.ClientTimeout = ADMIN_TIMEOUT

    async def _get(self, path: str, limit: int) -> bytes:
        async with self.session.get(self.url + path, timeout=self.timeout) as resp:
            data = await _body(resp, limit)
            if resp.status >= 400:
                raise _error(json.loads(data) if data[:1] == b"{" else None, resp.status)
            return data

    async def _post(self, path: str, data: bytes, headers: dict[str, str]) -> dict[str, Any]:
        async with self.session.post(self.url + path, data=data, headers=headers,
                                     timeout=self.timeout) as resp:
            body = _json(await _body(resp, JSON_LIMIT))
            if resp.status >= 400:
                raise _error(body, resp.status)
        if not isinstance(body, dict):
            raise MalformedError("answer is not a JSON object")
        return body

    async def status(self) -> dict[str, Any]:
        """``GET /v1/status`` (unsigned operator JSON)."""
        body = _json(await self._get("/v1/status", JSON_LIMIT))
        if not isinstance(body, dict):
            raise MalformedError("status is not a JSON object")
        return body

    async def allocation(self, epoch: int) -> Allocation:
        """``GET /v1/allocation/{epoch}``, verified as the coordinator's and for ``epoch``."""
        raw = await self._get(f"/v1/allocation/{epoch}",
                              envelope_size_limit(Allocation.MAX_PAYLOAD_BYTES))
        _, alloc = open_envelope(raw, Allocation, trusted=frozenset({self.key}))
        if alloc.epoch != epoch:
            raise OutOfRangeError(f"asked for the allocation of epoch {epoch}, got {alloc.epoch}")
        return alloc

    async def credential(self, epoch: int, node_id: str) -> Envelope:
        """``GET /v1/credential/{epoch}/{node_id}``: the signed credential, verified."""
        limit = envelope_size_limit(Credential.MAX_PAYLOAD_BYTES)
        env = Envelope.from_bytes(await self._get(f"/v1/credential/{epoch}/{node_id}", limit),
                                  max_size=limit)
        _, cred = open_embedded(env, Credential, trusted=frozenset({self.key}))
        if cred.epoch != epoch or cred.node_id != node_id:
            raise OutOfRangeError("credential for another epoch or node than asked")
        return env

    async def directory(self, epoch: int) -> list[DirectoryEntry]:
        """``GET /v1/directory/{epoch}``: the included hosts, their keys and endpoints."""
        return parse_directory(_json(await self._get(f"/v1/directory/{epoch}", JSON_LIMIT)),
                               epoch)

    async def register(self, registration: Envelope) -> dict[str, Any]:
        """``POST /v1/register`` with a signed ``registration``."""
        return await self._post("/v1/register", registration.to_bytes(),
                                {"Content-Type": "application/json"})

    async def audit(self, report: Envelope) -> dict[str, Any]:
        """``POST /v1/audit`` with a signed ``audit_report``."""
        return await self._post("/v1/audit", report.to_bytes(),
                                {"Content-Type": "application/json"})

    async def complain(self, complaint: Envelope) -> dict[str, Any]:
        """``POST /v1/complaints`` with a roamer's signed ``complaint``."""
        return await self._post("/v1/complaints", complaint.to_bytes(),
                                {"Content-Type": "application/json"})

    async def duties(self, request: Envelope) -> tuple[str, ...]:
        """``POST /v1/duties`` with a shopper's signed ``duty_request``: the host ids it
        shops at, from the coordinator-signed ``shopping_list`` for that very request."""
        limit = envelope_size_limit(ShoppingList.MAX_PAYLOAD_BYTES)
        async with self.session.post(self.url + "/v1/duties", data=request.to_bytes(),
                                     headers={"Content-Type": "application/json"},
                                     timeout=self.timeout) as resp:
            data = await _body(resp, limit)
            if resp.status >= 400:
                raise _error(json.loads(data) if data[:1] == b"{" else None, resp.status)
        _, duty = open_embedded(Envelope.from_bytes(data, max_size=limit), ShoppingList,
                                trusted=frozenset({self.key}))
        _, req = open_embedded(request, DutyRequest, trusted=frozenset({request.signer}))
        if duty.epoch != req.epoch or duty.shopper_id != req.node_id:
            raise OutOfRangeError("shopping list for another epoch or node than asked")
        return duty.hosts

    async def admin(self, action: str) -> dict[str, Any]:
        """``POST /v1/admin/{open|close|probe}`` with the admin token."""
        return await self._post(f"/v1/admin/{action}", b"",
                                {"Authorization": f"Bearer {self.token}"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """What a host answered one access attempt: ``reason`` is ``granted`` or the
    refusal's or error's code; ``evidence`` the host-signed receipt or refusal (for the
    audit), ``amount`` what the receipt grants (micro-units)."""

    reason: str
    amount: int = 0
    evidence: Envelope | None = None


async def ask(session: aiohttp.ClientSession, url: str, *, kind: ResourceKind,
              identity: Identity, credential: Envelope, host_id: str, host_key: str,
              amount: int, item: str = "", timeout: aiohttp.ClientTimeout,
              sent: list[Envelope] | None = None) -> Answer:
    """One access attempt of a roaming device at the host ``url`` (protocol README §7)
    for ``amount`` micro-units of ``kind`` (``item``: the file's SHA-256, if itemised).
    ``sent``, if given, gets the signed request before it is sent (what a complaint
    carries if no signed answer comes).

    Raises aiohttp.ClientError (unreachable) and TimeoutError as they come; a reply that
    breaks the protocol is an answer with the protocol error's code, never a grant.
    """
    try:
        request = make_access_request(identity, credential, host_id=host_id, amount=amount,
                                      now=int(time.time()), resource=kind.resource_of(item))
    except InkindError as exc:  # a credential of another key: nothing to send
        return Answer(reason=exc.code)
    if sent is not None:
        sent.append(request.request)
    async with session.post(url + kind.path(item), data=request.to_bytes(), timeout=timeout,
                            headers={"Content-Type": "application/json"}) as resp:
        data = await _body(resp, DOWNLOAD_LIMIT if resp.status < 400 else 256 * 1024)
        header = resp.headers.get(RECEIPT_HEADER, "")
        status = resp.status
    try:
        if status >= 400:
            err = _json(data)
            if not (isinstance(err, dict) and "refusal" in err):
                return Answer(reason=_error(err, status).code)
            env = Envelope.from_obj(err["refusal"])
            _, refusal = open_embedded(env, Refusal, trusted=frozenset({host_key}))
            check_refusal(refusal, request)  # it answers this very request
            return Answer(reason=refusal.reason, evidence=env)
        if kind.answer is KindAnswer.FILE:
            env = Envelope.from_bytes(base64.b64decode(header, validate=True),
                                      max_size=64 * 1024)
            if hashlib.sha256(data).hexdigest() != item:
                raise MalformedError("downloaded bytes do not match their hash")
        elif kind.answer is KindAnswer.JOB:
            reply = _json(data)
            if not isinstance(reply, dict) or not isinstance(reply.get("result"), dict):
                raise MalformedError("compute answer without a result")
            env = Envelope.from_obj(reply.get("receipt"))
        else:
            env = Envelope.from_bytes(data, max_size=64 * 1024)
        _, receipt = open_embedded(env, GrantReceipt, trusted=frozenset({host_key}))
        check_receipt(receipt, request)  # it answers this very request
    except InkindError as exc:
        return Answer(reason=exc.code)
    except (binascii.Error, ValueError):
        return Answer(reason=MalformedError.code)
    return Answer(reason="granted", amount=receipt.amount, evidence=env)

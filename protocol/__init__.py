"""The inkind wire protocol, sans-I/O: identities, canonical encoding, signed envelopes,
typed messages, errors, and the checks peers share.

Bytes and values in, values out: nothing in this package opens a socket, touches a
database or reads a clock (time is always an argument ``now`` in integer Unix seconds).
It depends only on the standard library, ``cryptography`` and ``orjson`` (canonical JSON,
the same bytes as the standard library's; see :mod:`~protocol.encoding`). The normative
description for a second implementation is ``protocol/README.md``.

Submodules: :mod:`~protocol.errors`, :mod:`~protocol.encoding`, :mod:`~protocol.fields`,
:mod:`~protocol.identity`, :mod:`~protocol.envelope`, :mod:`~protocol.messages`,
:mod:`~protocol.verify`, :mod:`~protocol.guards`, :mod:`~protocol.access`. The names below
are the public API.
"""

from protocol.access import (
    AccessBody,
    AccessVerifier,
    VerifiedAccess,
    check_probe_answer,
    check_receipt,
    check_refusal,
    credential_digest,
    make_access_request,
    make_probe_answer,
    request_of,
)
from protocol.encoding import MICRO, canonical, decode, decode_canonical, from_micro, to_micro
from protocol.envelope import Envelope, signing_input
from protocol.errors import (
    ERROR_CLASSES,
    InkindError,
    ProtocolViolationError,
    RefusedError,
    error_from_code,
    from_wire,
    to_wire,
)
from protocol.fields import MAX_CLOCK_SKEW
from protocol.guards import CredentialCache, ReplayGuard, ReplayWindow
from protocol.identity import Identity, is_strong_public_key, node_id_of, verify_signature
from protocol.messages import (
    MESSAGE_TYPES,
    AccessRequest,
    Allocation,
    AuditReport,
    Commitment,
    Complaint,
    Credential,
    Declaration,
    DutyRequest,
    EpochAnnouncement,
    GrantReceipt,
    Message,
    ProbeAnswer,
    Refusal,
    Registration,
    ShoppingList,
)
from protocol.verify import (
    check_credential,
    check_declaration,
    check_epoch,
    check_validity,
    open_any,
    open_embedded,
    open_envelope,
    open_evidence,
    seal,
    seal_bytes,
)

__all__ = [
    "ERROR_CLASSES",
    "MAX_CLOCK_SKEW",
    "MESSAGE_TYPES",
    "MICRO",
    "AccessBody",
    "AccessRequest",
    "AccessVerifier",
    "Allocation",
    "AuditReport",
    "Commitment",
    "Complaint",
    "Credential",
    "CredentialCache",
    "Declaration",
    "DutyRequest",
    "Envelope",
    "EpochAnnouncement",
    "GrantReceipt",
    "Identity",
    "InkindError",
    "Message",
    "ProbeAnswer",
    "ProtocolViolationError",
    "Refusal",
    "RefusedError",
    "Registration",
    "ReplayGuard",
    "ReplayWindow",
    "ShoppingList",
    "VerifiedAccess",
    "canonical",
    "check_credential",
    "check_declaration",
    "check_epoch",
    "check_probe_answer",
    "check_receipt",
    "check_refusal",
    "check_validity",
    "credential_digest",
    "decode",
    "decode_canonical",
    "error_from_code",
    "from_micro",
    "from_wire",
    "is_strong_public_key",
    "make_access_request",
    "make_probe_answer",
    "node_id_of",
    "open_any",
    "open_embedded",
    "open_envelope",
    "open_evidence",
    "request_of",
    "seal",
    "seal_bytes",
    "signing_input",
    "to_micro",
    "to_wire",
    "verify_signature",
]

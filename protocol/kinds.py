"""The resource kinds, as the wire knows them: one registry every side reads.

A resource kind is what a node shares in kind (DESIGN "Three resource kinds, one
protocol"). What a third party must know to interoperate is here: the kind's name (the
``kind`` field of a ``registration`` and of the directory), what one unit of it is (every
amount on the wire is an integer in micro-units, 1 unit = 1 000 000), the granularity of an
amount, where a roamer sends its ``access_request`` and what comes back, what the request's
``resource`` field names, and whether a requester is limited to the share its contribution
bought. How a node accounts a grant is node-side behaviour (``node/resources.py``, keyed by
this registry).

* ``wlan_coverage``: one unit is a coverage cell; ``POST /v1/access`` answers the receipt;
* ``wlan_channels``: a simultaneous roaming channel, asked in whole channels (granularity
  1 000 000) and held for a session; ``POST /v1/access``;
* ``files``: 1 MB served (1 micro-unit = 1 byte); ``POST /v1/files/{sha256}`` with
  ``resource`` = ``"file:" + sha256`` answers the file's bytes;
* ``compute``: a compute unit; ``POST /v1/compute`` with ``resource`` = ``"compute"``
  answers the receipt and the job's result; a requester is held to the share it bought.

Adding a kind: one entry in :data:`KINDS` here and one in ``node/resources.py``'s
accounting registry; a kind with a new endpoint shape also needs its handler in
``node/service.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from protocol.errors import OutOfRangeError


class Answer(enum.StrEnum):
    """What a host's endpoint answers on a grant (a refusal is always ``403`` JSON)."""

    #: the ``grant_receipt`` envelope as the body
    RECEIPT = "receipt"
    #: the file's bytes, the receipt envelope base64 in the ``X-Inkind-Receipt`` header
    FILE = "file"
    #: ``{"receipt": ENVELOPE, "result": {...}}``: the receipt and the job's result
    JOB = "job"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceKind:
    """One resource kind's wire facts.

    * ``name``: the wire name;
    * ``unit``: what one unit (1 000 000 micro-units) is, for people;
    * ``granularity``: amounts are positive multiples of it (micro-units);
    * ``endpoint``: the path a roamer POSTs its ``access_request`` to; ``{item}`` stands
      for the item asked for (a file's SHA-256);
    * ``answer``: the shape of the grant's answer (:class:`Answer`);
    * ``resource``: the ``resource`` field of the request: None (the endpoint is the
      resource), a fixed name, or, when ``itemised``, a prefix the item follows;
    * ``shares``: a requester's grants on one host add up to at most the share its own
      contribution bought (the tariff menu), besides the host's capacity;
    * ``sessions``: a grant is held for a session and released when it ends (else it is
      consumed for the rest of the epoch).
    """

    name: str
    unit: str
    granularity: int = 1
    endpoint: str
    answer: Answer
    resource: str | None = None
    itemised: bool = False
    shares: bool = False
    sessions: bool = False

    def resource_of(self, item: str = "") -> str | None:
        """The request's ``resource`` field for ``item`` (ignored unless itemised)."""
        if self.resource is None:
            return None
        return self.resource + item if self.itemised else self.resource

    def path(self, item: str = "") -> str:
        """The endpoint's path for ``item``."""
        return self.endpoint.replace("{item}", item)


WLAN_COVERAGE = ResourceKind(
    name="wlan_coverage", unit="coverage cell", endpoint="/v1/access", answer=Answer.RECEIPT
)
WLAN_CHANNELS = ResourceKind(
    name="wlan_channels",
    unit="simultaneous roaming channel",
    granularity=1_000_000,
    endpoint="/v1/access",
    answer=Answer.RECEIPT,
    sessions=True,
)
FILES = ResourceKind(
    name="files",
    unit="MB served (1 micro-unit = 1 byte)",
    endpoint="/v1/files/{item}",
    answer=Answer.FILE,
    resource="file:",
    itemised=True,
)
COMPUTE = ResourceKind(
    name="compute",
    unit="compute unit",
    endpoint="/v1/compute",
    answer=Answer.JOB,
    resource="compute",
    shares=True,
)

#: Every kind by name, in the order the documentation lists them.
KINDS: Mapping[str, ResourceKind] = MappingProxyType(
    {k.name: k for k in (WLAN_COVERAGE, WLAN_CHANNELS, FILES, COMPUTE)}
)
#: The wire names (what ``registration.kind`` may be).
KIND_NAMES = frozenset(KINDS)


def kind_of(name: str) -> ResourceKind:
    """The kind called ``name``; ``out_of_range`` for any other name."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise OutOfRangeError(f"unknown resource kind {name!r:.40}") from None

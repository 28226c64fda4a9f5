"""The coordinator's configuration: which market, which mechanism, which schedule.

A plain frozen record, built by the CLI from its flags or by tests directly; it reads
nothing itself except through :meth:`CoordinatorConfig.from_spec_file`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from coordinator.allocation import coordinator_mechanism
from coordinator.enforcement import REBUTTAL_SECONDS
from coordinator.mechanism import Market, check_solvable, load_market
from coordinator.penalty import PenaltyPolicy
from coordinator.shoppers import SHOPPERS_PER_HOST

#: Refuse bodies above this many bytes whatever the type (largest inbound: audit reports).
MAX_BODY_BYTES = 2 * 1024 * 1024
#: A connection without a whole request head for this many seconds (from its start or its
#: last answer) is closed, so stalled clients cannot hold the coordinator's descriptors
#: (issue 11 item 5; the node's limit is 5 s). Longer than aiohttp clients keep an idle
#: pooled connection (15 s), so an honest node's client always lets go first and never
#: reuses a connection the coordinator is closing.
IDLE_SECONDS = 30.0
#: A request body must have arrived this many seconds after its head (``malformed`` and
#: the connection closed otherwise): a 2 MiB audit report at 70 KB/s.
BODY_SECONDS = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CoordinatorConfig:
    """Everything the service needs besides its store, key and clock.

    ``epoch_seconds``: how long declarations are accepted after an epoch opens;
    ``pause_seconds``: between a close and the next open (auto-scheduling only);
    ``credential_grace``: credentials stay valid this long after the next epoch's
    deadline; ``auto_schedule``: close epochs at their deadline and open the next ones
    by themselves (otherwise only ``POST /v1/admin/open|close`` drive epochs);
    ``admin_token``: the bearer token of the admin endpoints (None disables them);
    ``probe_attempts``: probes of each owing host per closed epoch (0 disables the
    probes, :mod:`coordinator.probe`); ``probe_timeout``: seconds one probe may take;
    ``penalty``: how long free riders stay excluded (:mod:`coordinator.penalty`);
    ``rebuttal_seconds``: a refusal filed later than this before an audit cut-off is not
    judged at it, so the host it accuses can still file its rebuttal
    (:meth:`coordinator.epoch.AuditState.judged`); ``probation_epochs``: audited epochs
    in which a key must have owed and delivered before it gets credentials (after the
    founding epoch; 0: no probation; README "Probation"); ``shoppers_per_host``: mystery
    shoppers assigned to each owing host per epoch (:mod:`coordinator.shoppers`; 0: none).
    """

    market: Market
    mechanism: str = "posted_fee"
    epoch_seconds: int = 60
    pause_seconds: int = 5
    credential_grace: int = 300
    auto_schedule: bool = True
    admin_token: str | None = None
    probe_attempts: int = 3
    probe_timeout: float = 2.0
    penalty: PenaltyPolicy = field(default_factory=PenaltyPolicy)
    rebuttal_seconds: int = REBUTTAL_SECONDS
    probation_epochs: int = 1
    shoppers_per_host: int = SHOPPERS_PER_HOST

    def __post_init__(self) -> None:
        # The wire name (an alias such as ``second_best`` resolved); ValueError if unknown.
        object.__setattr__(self, "mechanism", coordinator_mechanism(self.mechanism))
        # A market the mechanism cannot solve is refused here, at start-up, rather than
        # at every close (UnsupportedMarketError, a ValueError the CLI reports).
        check_solvable(self.market, self.mechanism)
        if not 1 <= self.epoch_seconds <= 7 * 24 * 3600:
            raise ValueError("epoch_seconds must be in [1, 604800]")
        if not 0 <= self.pause_seconds <= 7 * 24 * 3600:
            raise ValueError("pause_seconds must be in [0, 604800]")
        if not 0 <= self.credential_grace <= 7 * 24 * 3600:
            raise ValueError("credential_grace must be in [0, 604800]")
        if self.admin_token is not None and len(self.admin_token) < 8:
            raise ValueError("an admin token needs at least 8 characters")
        if not 0 <= self.probe_attempts <= 100:
            raise ValueError("probe_attempts must be in [0, 100]")
        if not 0 <= self.rebuttal_seconds <= 7 * 24 * 3600:
            raise ValueError("rebuttal_seconds must be in [0, 604800]")
        if self.auto_schedule and self.epoch_seconds + self.pause_seconds <= self.rebuttal_seconds:
            # The audit cut-off of epoch e is the close of e + 1, pause + epoch seconds
            # after e's close; evidence filed after e's close is judged only if filed
            # rebuttal_seconds before it, so a shorter period judges no refusal at all.
            # (Both times are the coordinator's clock: clock skew does not enter.)
            raise ValueError(
                f"epoch_seconds + pause_seconds ({self.epoch_seconds} + "
                f"{self.pause_seconds} s) must exceed rebuttal_seconds "
                f"({self.rebuttal_seconds} s): the audit period must leave room for the "
                "hosts' rebuttal window, or no refusal filed in it is ever judged")
        if not 0 <= self.probation_epochs <= 1000:
            raise ValueError("probation_epochs must be in [0, 1000]")
        if not 0 <= self.shoppers_per_host <= 16:
            raise ValueError("shoppers_per_host must be in [0, 16]")
        if not 0.01 <= self.probe_timeout <= 300:
            raise ValueError("probe_timeout must be in [0.01, 300] seconds")

    @classmethod
    def from_spec_file(cls, path: str | Path, **kwargs: object) -> CoordinatorConfig:
        return cls(market=load_market(path), **kwargs)  # type: ignore[arg-type]

"""SQLite persistence of the coordinator: WAL, ``synchronous=FULL``, one transaction per
acknowledged change.

Each change record of :mod:`coordinator.epoch` is written by :meth:`Store.persist` in a
single ``BEGIN IMMEDIATE ... COMMIT``; the service answers only after the commit
returns, so an acknowledged declaration survives ``kill -9`` (and, with
``synchronous=FULL``, a power cut). :meth:`Store.snapshot` reads back what the state
machine needs to resume the same epoch with the same declarations; signed messages are
kept as the exact envelope bytes and verified again when loaded, so a tampered database
or a different coordinator key is noticed at start-up rather than served.

Tables: ``meta`` (coordinator key, mechanism), ``nodes``, ``epochs`` (phase, deadline,
announcement envelope), ``declarations`` (unique (epoch, node) and (epoch, nonce)),
``allocations`` (envelope), ``credentials``, ``commitments``, ``evidence`` (one
receipt and one refusal per (epoch, host, requester, nonce): a request is its
requester's nonce),
``exclusions`` (offences of the recent history and the last epoch each keeps its node
out), ``standings`` (one decayed offence score and unpaid debt per node,
:mod:`coordinator.penalty`; a row stays while the node owes a debt),
``probes`` (coordinator probe results, :mod:`coordinator.probe`), ``complaints`` (roamers'
complaints of unanswered requests, by (epoch, host, requester, nonce), and how often
each was relayed), ``deliveries`` (one
probation record per node: the audited epochs in which it owed and delivered,
README "Probation"), ``probation`` (per closed epoch, the included nodes that got no
credential: listed in the directory as hosts, told apart from nodes not included). This
module deliberately makes no decisions: it stores what the state machine accepted.

One writer: a coordinator holds an exclusive ``flock`` on ``<db>.lock`` for as long as
its :class:`Store` is open, and a second one on the same database refuses to start
(:class:`StoreLockedError`) instead of closing epochs without the first one's
acknowledged declarations and signing a conflicting allocation. The lock lives on a file
beside the database, not on the database itself, because SQLite's own locks are taken
and dropped per transaction; the kernel releases it when the process dies, so a
``kill -9`` leaves nothing to clean up. The lock file is named after the database's
resolved path (symlinks, ``..`` and relative paths name one lock), and the database file
itself is ``flock``-ed too, which catches a second name that resolves elsewhere (a hard
link); ``flock`` locks are separate from SQLite's POSIX record locks on Linux.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from coordinator.enforcement import Exclusion
from coordinator.epoch import (
    Audited,
    Change,
    Closed,
    Committed,
    Complained,
    ComplaintRecord,
    DeclarationRecord,
    Declared,
    Delivery,
    EpochRecord,
    NodeRecord,
    Opened,
    Registered,
    Relayed,
    Snapshot,
)
from coordinator.penalty import Sanction, Standing
from coordinator.probe import ProbeResult
from protocol import (
    Allocation,
    Commitment,
    Complaint,
    Credential,
    Declaration,
    EpochAnnouncement,
    GrantReceipt,
    Refusal,
    Registration,
    open_envelope,
)

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY, public_key TEXT NOT NULL UNIQUE, reg_epoch INTEGER NOT NULL,
    home_location INTEGER NOT NULL, capacity INTEGER NOT NULL, kind TEXT NOT NULL,
    endpoint TEXT, envelope BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY, phase TEXT NOT NULL CHECK (phase IN ('open', 'closed')),
    deadline INTEGER NOT NULL, opened_at INTEGER NOT NULL, closed_at INTEGER,
    announcement BLOB NOT NULL, status TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS declarations (
    epoch INTEGER NOT NULL, node_id TEXT NOT NULL, theta INTEGER NOT NULL,
    nonce TEXT NOT NULL, received_at INTEGER NOT NULL, envelope BLOB NOT NULL,
    PRIMARY KEY (epoch, node_id), UNIQUE (epoch, nonce));
CREATE TABLE IF NOT EXISTS allocations (
    epoch INTEGER PRIMARY KEY, envelope BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS credentials (
    epoch INTEGER NOT NULL, node_id TEXT NOT NULL, location INTEGER NOT NULL,
    contribution INTEGER NOT NULL, envelope BLOB NOT NULL, PRIMARY KEY (epoch, node_id));
CREATE TABLE IF NOT EXISTS commitments (
    epoch INTEGER NOT NULL, node_id TEXT NOT NULL, contribution INTEGER NOT NULL,
    envelope BLOB NOT NULL, PRIMARY KEY (epoch, node_id));
CREATE TABLE IF NOT EXISTS evidence (
    epoch INTEGER NOT NULL, host_id TEXT NOT NULL, challenge TEXT NOT NULL,
    kind TEXT NOT NULL, requester_id TEXT NOT NULL, reporter_id TEXT NOT NULL,
    envelope BLOB NOT NULL, received_at INTEGER,
    PRIMARY KEY (epoch, host_id, requester_id, challenge, kind));
CREATE TABLE IF NOT EXISTS exclusions (
    node_id TEXT NOT NULL, excluded_epoch INTEGER NOT NULL, detected_epoch INTEGER NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, last_epoch INTEGER,
    PRIMARY KEY (node_id, excluded_epoch, reason));
CREATE TABLE IF NOT EXISTS standings (
    node_id TEXT PRIMARY KEY, score REAL NOT NULL, detected_epoch INTEGER NOT NULL,
    first_epoch INTEGER NOT NULL, last_epoch INTEGER NOT NULL, offences INTEGER NOT NULL,
    debt INTEGER NOT NULL DEFAULT 0 CHECK (debt >= 0));
CREATE TABLE IF NOT EXISTS probes (
    epoch INTEGER NOT NULL, node_id TEXT NOT NULL, time INTEGER NOT NULL,
    answered INTEGER NOT NULL CHECK (answered IN (0, 1)));
CREATE INDEX IF NOT EXISTS probes_epoch ON probes (epoch);
CREATE TABLE IF NOT EXISTS complaints (
    epoch INTEGER NOT NULL, host_id TEXT NOT NULL, nonce TEXT NOT NULL,
    requester_id TEXT NOT NULL, filed_at INTEGER NOT NULL,
    relays INTEGER NOT NULL DEFAULT 0, envelope BLOB NOT NULL,
    PRIMARY KEY (epoch, host_id, requester_id, nonce));
CREATE TABLE IF NOT EXISTS deliveries (
    node_id TEXT PRIMARY KEY, delivered INTEGER NOT NULL CHECK (delivered > 0),
    last_epoch INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS probation (
    epoch INTEGER NOT NULL, node_id TEXT NOT NULL, location INTEGER NOT NULL,
    contribution INTEGER NOT NULL, PRIMARY KEY (epoch, node_id));
"""


_INSERT_DECLARATION = (
    "INSERT INTO declarations (epoch, node_id, theta, nonce, received_at, envelope)"
    " VALUES (?, ?, ?, ?, ?, ?)")


def _declaration_row(change: Declared) -> tuple[int, str, int, str, int, bytes]:
    d = change.record.declaration
    return (d.epoch, d.node_id, d.theta, d.nonce, change.record.received_at,
            change.record.envelope)


def _create(table: str) -> str:
    """The ``CREATE TABLE`` statement of ``table`` in :data:`SCHEMA`."""
    head = f"CREATE TABLE IF NOT EXISTS {table} ("
    return next(stmt.strip() for stmt in SCHEMA.split(";") if stmt.strip().startswith(head))


class StoreError(RuntimeError):
    """The database does not belong to this coordinator or is inconsistent."""


class StoreLockedError(StoreError):
    """Another coordinator (process) has this database open."""


def _lock(path: str) -> int:
    """An exclusive, non-blocking ``flock`` on ``path`` (created); the open descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreLockedError(
            f"{path}: another coordinator is running on this database; stop it first "
            "(one writer per database)") from None
    except BaseException:
        os.close(fd)
        raise
    return fd


class Store:
    """One SQLite database file; used from one thread at a time (the event loop).

    Raises :class:`StoreLockedError` if another :class:`Store` (in any process) has the
    same database open.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock_fd: int | None = _lock(os.path.realpath(self.path) + ".lock")
        self._db_lock_fd: int | None = None
        try:
            # An empty file is an empty SQLite database, so creating it here is harmless.
            self._db_lock_fd = _lock(self.path)
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
        except BaseException:
            self._unlock()
            raise
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(exclusions)")}
        if "last_epoch" not in columns:  # a database from before graded exclusion
            self._db.execute("ALTER TABLE exclusions ADD COLUMN last_epoch INTEGER")
            # Its offences each excluded one epoch: one standing per node from them.
            self._db.execute(
                "INSERT OR IGNORE INTO standings (node_id, score, detected_epoch, first_epoch,"
                " last_epoch, offences) SELECT node_id, 1.0, MAX(detected_epoch),"
                " MAX(excluded_epoch), MAX(excluded_epoch), COUNT(DISTINCT detected_epoch)"
                " FROM exclusions GROUP BY node_id")
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(standings)")}
        if "debt" not in columns:  # a database from before restitution: nobody owes
            self._db.execute(
                "ALTER TABLE standings ADD COLUMN debt INTEGER NOT NULL DEFAULT 0")
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(evidence)")}
        if "received_at" not in columns:  # before the rebuttal window: untimed evidence
            self._db.execute("ALTER TABLE evidence ADD COLUMN received_at INTEGER")
        self._key_by_requester()
        self._meta_default("schema_version", SCHEMA_VERSION)

    def _key_by_requester(self) -> None:
        """Migrate a database whose ``evidence`` and ``complaints`` were keyed by (host,
        nonce): a request is (requester, nonce), so the requester joins both primary
        keys. SQLite cannot change a primary key in place: each table is copied into one
        of the new shape, every row kept (a wider key never merges two rows), in one
        transaction, so a crash leaves the old tables or the new ones."""
        old = [table for table in ("evidence", "complaints")
               if "requester_id" not in {r[1] for r in self._db.execute(
                   f"PRAGMA table_info({table})") if r[5] > 0}]
        if not old:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for table in old:
                columns = ", ".join(r[1] for r in db.execute(f"PRAGMA table_info({table})"))
                db.execute(f"ALTER TABLE {table} RENAME TO {table}_by_nonce")
                db.execute(_create(table))
                db.execute(f"INSERT INTO {table} ({columns}) SELECT {columns}"
                           f" FROM {table}_by_nonce")
                db.execute(f"DROP TABLE {table}_by_nonce")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self._db.close()
        self._unlock()

    def _unlock(self) -> None:
        # Only after the connection is closed: closing a descriptor of the database file
        # drops every POSIX lock this process holds on it, SQLite's included.
        for fd in (self._db_lock_fd, self._lock_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)  # closing the descriptor drops the flock
        self._db_lock_fd = self._lock_fd = None

    def pragma(self, name: str) -> Any:
        return self._db.execute(f"PRAGMA {name}").fetchone()[0]

    # -- meta --------------------------------------------------------------------------

    def _meta_default(self, key: str, value: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            return value
        return str(row[0])

    def bind(self, *, coordinator_key: str, mechanism: str,
             former_names: Collection[str] = ()) -> None:
        """Record (first run) or check (restart) whose database this is.

        ``former_names``: older names of ``mechanism`` a database may have been bound
        under (the mechanism is the same; see :data:`coordinator.mechanism.ALIASES`).
        """
        for key, value in (("coordinator_key", coordinator_key), ("mechanism", mechanism)):
            stored = self._meta_default(key, value)
            if stored != value and not (key == "mechanism" and stored in former_names):
                raise StoreError(f"{self.path}: database was created with {key} {stored!r}, "
                                 f"not {value!r}")

    # -- writing -----------------------------------------------------------------------

    def persist(self, change: Change) -> None:
        """Write ``change`` in one durable transaction (or not at all)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            self._write(change)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def persist_many(self, changes: Sequence[Change]) -> None:
        """Write ``changes`` in ONE durable transaction (group commit): all or none."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            # Declarations (the bulk of a group commit) in one executemany; the rest in
            # order (a batch holds no change that depends on a declaration of it).
            decls = [c for c in changes if isinstance(c, Declared)]
            if decls:
                db.executemany(_INSERT_DECLARATION, [_declaration_row(c) for c in decls])
            for change in changes:
                if not isinstance(change, Declared):
                    self._write(change)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _write(self, change: Change) -> None:
        db = self._db
        if isinstance(change, Registered):
            r = change.node.registration
            db.execute(
                "INSERT INTO nodes (node_id, public_key, reg_epoch, home_location, capacity,"
                " kind, endpoint, envelope) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (node_id) DO UPDATE SET reg_epoch = excluded.reg_epoch,"
                " home_location = excluded.home_location, capacity = excluded.capacity,"
                " kind = excluded.kind, endpoint = excluded.endpoint,"
                " envelope = excluded.envelope",
                (r.node_id, r.public_key, r.epoch, r.home_location, r.capacity, r.kind,
                 r.endpoint, change.node.envelope))
        elif isinstance(change, Opened):
            e = change.record
            db.execute(
                "INSERT INTO epochs (epoch, phase, deadline, opened_at, announcement)"
                " VALUES (?, 'open', ?, ?, ?)", (e.epoch, e.deadline, e.opened_at, e.envelope))
        elif isinstance(change, Declared):
            db.execute(_INSERT_DECLARATION, _declaration_row(change))
        elif isinstance(change, Closed):
            cur = db.execute(
                "UPDATE epochs SET phase = 'closed', closed_at = ?, status = ?"
                " WHERE epoch = ? AND phase = 'open'",
                (change.closed_at, change.status, change.epoch))
            if cur.rowcount != 1:
                raise StoreError(f"epoch {change.epoch} is not open in the database")
            db.execute("INSERT INTO allocations (epoch, envelope) VALUES (?, ?)",
                       (change.epoch, change.envelope))
            owed = dict(zip(change.allocation.included, change.allocation.contributions,
                            strict=True))
            db.executemany(
                "INSERT INTO credentials (epoch, node_id, location, contribution, envelope)"
                " VALUES (?, ?, ?, ?, ?)",
                [(change.epoch, c.credential.node_id, c.credential.location,
                  owed[c.credential.node_id], c.envelope) for c in change.credentials])
            db.executemany(
                "INSERT INTO probation (epoch, node_id, location, contribution)"
                " VALUES (?, ?, ?, ?)",
                [(change.epoch, n, loc, owed[n]) for n, loc in change.probation])
            db.executemany(
                "INSERT INTO deliveries (node_id, delivered, last_epoch) VALUES (?, ?, ?)"
                " ON CONFLICT (node_id) DO UPDATE SET delivered = excluded.delivered,"
                " last_epoch = excluded.last_epoch",
                [(d.node_id, d.delivered, d.last_epoch) for d in change.delivered])
            until = {s.node_id: s.last_epoch for s in change.standings}
            db.executemany(
                "INSERT OR IGNORE INTO exclusions (node_id, excluded_epoch, detected_epoch,"
                " reason, detail, last_epoch) VALUES (?, ?, ?, ?, ?, ?)",
                [(x.node_id, x.excluded_epoch, x.detected_epoch, x.reason, x.detail,
                  until.get(x.node_id, x.excluded_epoch)) for x in change.exclusions])
            db.executemany("DELETE FROM standings WHERE node_id = ?",
                           [(n,) for n in change.forgotten])
            db.executemany(
                "INSERT INTO standings (node_id, score, detected_epoch, first_epoch,"
                " last_epoch, offences, debt) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT"
                " (node_id) DO UPDATE SET score = excluded.score,"
                " detected_epoch = excluded.detected_epoch,"
                " first_epoch = excluded.first_epoch, last_epoch = excluded.last_epoch,"
                " offences = excluded.offences, debt = excluded.debt",
                [(s.node_id, s.score, s.detected_epoch, s.first_epoch, s.last_epoch,
                  s.offences, s.debt) for s in change.standings])
            db.execute("DELETE FROM exclusions WHERE COALESCE(last_epoch, excluded_epoch) < ?",
                       (change.history_from,))
        elif isinstance(change, Committed):
            c = change.commitment
            db.execute(
                "INSERT INTO commitments (epoch, node_id, contribution, envelope)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (epoch, node_id) DO UPDATE SET"
                " contribution = excluded.contribution, envelope = excluded.envelope"
                " WHERE excluded.contribution > commitments.contribution",
                (c.epoch, c.node_id, c.contribution, change.envelope))
        elif isinstance(change, Audited):
            db.executemany(
                "INSERT OR IGNORE INTO evidence (epoch, host_id, challenge, kind,"
                " requester_id, reporter_id, envelope, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(change.epoch, rec.item.host_id, rec.item.nonce, rec.key[3],
                  rec.item.requester_id, rec.reporter_id, rec.envelope, rec.received_at)
                 for rec in change.new_items])
        elif isinstance(change, Complained):
            filed = change.record
            k = filed.complaint
            db.execute(
                "INSERT INTO complaints (epoch, host_id, nonce, requester_id, filed_at,"
                " relays, envelope) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (k.epoch, k.host_id, k.nonce, k.requester_id, filed.filed_at, filed.relays,
                 filed.envelope))
        elif isinstance(change, Relayed):
            db.execute("UPDATE complaints SET relays = relays + 1"
                       " WHERE epoch = ? AND host_id = ? AND requester_id = ? AND nonce = ?",
                       (change.epoch, *change.key))
        else:  # pragma: no cover - the Change union is closed
            raise TypeError(f"not a change: {change!r}")

    # -- reading -----------------------------------------------------------------------

    def snapshot(self, coordinator_key: str) -> Snapshot:
        """What :meth:`coordinator.epoch.EpochCore.restore` needs, every signature re-checked."""
        db = self._db
        me = frozenset({coordinator_key})
        nodes = []
        for (raw,) in db.execute("SELECT envelope FROM nodes ORDER BY node_id"):
            _, reg = open_envelope(bytes(raw), Registration, trusted=None)
            nodes.append(NodeRecord(registration=reg, envelope=bytes(raw)))
        row = db.execute(
            "SELECT epoch, phase, deadline, opened_at, announcement, status FROM epochs"
            " ORDER BY epoch DESC LIMIT 1").fetchone()
        # Both bounded: offences are pruned after history_epochs, standings once decayed.
        sanctions = tuple(
            Sanction(offence=Exclusion(node_id=n, excluded_epoch=e, detected_epoch=d,
                                       reason=r, detail=t), last_epoch=int(last))
            for n, e, d, r, t, last in db.execute(
                "SELECT node_id, excluded_epoch, detected_epoch, reason, detail,"
                " COALESCE(last_epoch, excluded_epoch)"
                " FROM exclusions ORDER BY excluded_epoch, node_id, reason"))
        standings = tuple(
            Standing(node_id=n, score=float(s), detected_epoch=d, first_epoch=f, last_epoch=la,
                     offences=o, debt=int(debt))
            for n, s, d, f, la, o, debt in db.execute(
                "SELECT node_id, score, detected_epoch, first_epoch, last_epoch, offences,"
                " debt FROM standings ORDER BY node_id"))
        deliveries = tuple(
            Delivery(node_id=n, delivered=int(k), last_epoch=int(e))
            for n, k, e in db.execute(
                "SELECT node_id, delivered, last_epoch FROM deliveries ORDER BY node_id"))
        if row is None:
            return Snapshot(nodes=tuple(nodes), sanctions=sanctions, standings=standings,
                            deliveries=deliveries)
        epoch, phase, deadline, opened_at, raw_ann, status = row
        _, ann = open_envelope(bytes(raw_ann), EpochAnnouncement, trusted=me)
        current = EpochRecord(epoch=epoch, deadline=deadline, opened_at=opened_at,
                              announcement=ann, envelope=bytes(raw_ann))
        decls = []
        for raw, received_at in db.execute(
            "SELECT envelope, received_at FROM declarations WHERE epoch = ? ORDER BY node_id",
            (epoch,),
        ):
            _, d = open_envelope(bytes(raw), Declaration, trusted=None)
            decls.append(DeclarationRecord(declaration=d, envelope=bytes(raw),
                                           received_at=received_at))
        previous = tuple(n for (n,) in db.execute(
            "SELECT nonce FROM declarations WHERE epoch = ? ORDER BY nonce", (epoch - 1,)))
        closed = phase == "closed"
        audit_epoch = epoch if closed else epoch - 1
        raw_alloc = self.allocation(audit_epoch)
        alloc = None
        creds: list[Credential] = []
        commits: list[Commitment] = []
        evidence: list[GrantReceipt | Refusal] = []
        received: list[int | None] = []
        complaints: list[ComplaintRecord] = []
        if raw_alloc is not None:
            _, alloc = open_envelope(raw_alloc, Allocation, trusted=me)
            for (raw,) in db.execute(
                "SELECT envelope FROM credentials WHERE epoch = ?", (audit_epoch,)
            ):
                creds.append(open_envelope(bytes(raw), Credential, trusted=me)[1])
            for (raw,) in db.execute(
                "SELECT envelope FROM commitments WHERE epoch = ?", (audit_epoch,)
            ):
                commits.append(open_envelope(bytes(raw), Commitment, trusted=None)[1])
            for kind, raw, at in db.execute(
                "SELECT kind, envelope, received_at FROM evidence WHERE epoch = ?"
                " ORDER BY rowid", (audit_epoch,)
            ):
                item: GrantReceipt | Refusal
                if kind == "grant_receipt":
                    item = open_envelope(bytes(raw), GrantReceipt, trusted=None)[1]
                else:
                    item = open_envelope(bytes(raw), Refusal, trusted=None)[1]
                evidence.append(item)
                received.append(None if at is None else int(at))
            for raw, filed_at, relays in db.execute(
                "SELECT envelope, filed_at, relays FROM complaints WHERE epoch = ?"
                " ORDER BY rowid", (audit_epoch,)
            ):
                _, complaint = open_envelope(bytes(raw), Complaint, trusted=None)
                complaints.append(ComplaintRecord(complaint=complaint, envelope=bytes(raw),
                                                  filed_at=int(filed_at), relays=int(relays)))
        return Snapshot(
            nodes=tuple(nodes), current=current, closed=closed, declarations=tuple(decls),
            previous_nonces=previous, audit_allocation=alloc, audit_credentials=tuple(creds),
            commitments=tuple(commits), evidence=tuple(evidence),
            evidence_received=tuple(received), complaints=tuple(complaints),
            sanctions=sanctions,
            standings=standings, deliveries=deliveries, last_status=str(status))

    def answer(self, epoch: int, host_id: str, requester_id: str, nonce: str) -> bytes | None:
        """The host's signed answer (receipt, else refusal) to the request of
        ``requester_id`` with ``nonce`` in ``epoch``, if stored: what a complaint about it
        is answered with (never an answer to another requester's request reusing the
        nonce)."""
        row = self._db.execute(
            "SELECT envelope FROM evidence WHERE epoch = ? AND host_id = ?"
            " AND requester_id = ? AND challenge = ? ORDER BY kind LIMIT 1",
            (epoch, host_id, requester_id, nonce)).fetchone()
        return None if row is None else bytes(row[0])

    def allocation(self, epoch: int) -> bytes | None:
        row = self._db.execute(
            "SELECT envelope FROM allocations WHERE epoch = ?", (epoch,)).fetchone()
        return None if row is None else bytes(row[0])

    def closed_at(self, epoch: int) -> int | None:
        row = self._db.execute(
            "SELECT closed_at FROM epochs WHERE epoch = ?", (epoch,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def credential(self, epoch: int, node_id: str) -> bytes | None:
        row = self._db.execute(
            "SELECT envelope FROM credentials WHERE epoch = ? AND node_id = ?",
            (epoch, node_id)).fetchone()
        return None if row is None else bytes(row[0])

    def on_probation(self, epoch: int, node_id: str) -> bool:
        """Whether ``node_id`` was included in ``epoch`` without a credential."""
        return self._db.execute(
            "SELECT 1 FROM probation WHERE epoch = ? AND node_id = ?",
            (epoch, node_id)).fetchone() is not None

    def directory(self, epoch: int) -> list[dict[str, Any]]:
        """Included hosts of a closed epoch (credentialled or on probation: both owe
        their contribution): where they listen and what each owes."""
        rows = self._db.execute(
            "SELECT m.node_id, n.public_key, m.location, n.endpoint, n.kind, m.contribution"
            " FROM (SELECT node_id, location, contribution FROM credentials WHERE epoch = ?"
            " UNION ALL SELECT node_id, location, contribution FROM probation"
            " WHERE epoch = ?) m JOIN nodes n ON n.node_id = m.node_id"
            " ORDER BY m.node_id", (epoch, epoch))
        keys = ("node_id", "public_key", "location", "endpoint", "kind", "contribution")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def declarations(self, epoch: int) -> list[tuple[str, int, str]]:
        """(node id, θ micro-units, nonce) of every stored declaration of ``epoch``."""
        return [(str(n), int(t), str(c)) for n, t, c in self._db.execute(
            "SELECT node_id, theta, nonce FROM declarations WHERE epoch = ? ORDER BY node_id",
            (epoch,))]

    # -- coordinator probes (coordinator/probe.py) ----------------------------------------

    def record_probes(self, results: Iterable[ProbeResult]) -> None:
        """Append probe results in one durable transaction."""
        rows = [(r.epoch, r.node_id, r.time, int(r.answered)) for r in results]
        if not rows:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO probes (epoch, node_id, time, answered) VALUES (?, ?, ?, ?)", rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def probes(self, epoch: int) -> list[ProbeResult]:
        """Every recorded probe of ``epoch``, in the order they were recorded."""
        return [ProbeResult(epoch=e, node_id=n, time=t, answered=bool(a))
                for e, n, t, a in self._db.execute(
                    "SELECT epoch, node_id, time, answered FROM probes WHERE epoch = ?"
                    " ORDER BY rowid", (epoch,))]

    def count(self, table: str, epoch: int | None = None) -> int:
        if table not in {"nodes", "epochs", "declarations", "allocations", "credentials",
                         "commitments", "evidence", "exclusions", "standings",
                         "deliveries", "probation"}:
            raise ValueError(f"no table {table!r}")
        if epoch is None:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        column = {"exclusions": "excluded_epoch", "standings": "first_epoch",
                  "deliveries": "last_epoch"}.get(table, "epoch")
        return int(self._db.execute(
            f"SELECT COUNT(*) FROM {table} WHERE {column} = ?", (epoch,)).fetchone()[0])

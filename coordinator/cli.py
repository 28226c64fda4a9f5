"""``inkind-coordinator``: run the coordinator service (also ``python -m coordinator``).

Prints one JSON line on stdout once the socket is bound, so a launcher can read where the
coordinator listens and which key it signs with::

    {"coordinator": "http://127.0.0.1:PORT", "public_key": HEX, "node_id": HEX, "epoch": E}

and stops cleanly on SIGINT or SIGTERM. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import platformdirs

from coordinator.config import CoordinatorConfig
from coordinator.connections import MAX_CONNECTIONS_PER_CLIENT, LimitedSite
from coordinator.enforcement import REBUTTAL_SECONDS
from coordinator.penalty import PenaltyPolicy
from coordinator.service import COORDINATOR, make_app, make_runner, new_event_loop
from coordinator.shoppers import SHOPPERS_PER_HOST
from coordinator.store import Store, StoreError
from protocol import Identity
from protocol.errors import KeyFileError

log = logging.getLogger("coordinator")

DESCRIPTION = """\
Run the inkind coordinator: nodes register, the coordinator announces epochs, collects
signed declarations until each deadline, runs the mechanism on them, and publishes a
signed allocation and per-node credentials; commitments and audit reports decide who is
excluded from the next epoch. State lives in an SQLite database (WAL, synchronous=FULL):
restarting on the same --db resumes the same epoch with the same declarations.
"""

EPILOG = """\
On start-up one JSON line is printed on stdout:
  {"coordinator": "http://HOST:PORT", "public_key": ..., "node_id": ..., "epoch": ...}
Files: the database (and its lock, <db>.lock) and the key live in --data-dir (default
~/.local/share/inkind/coordinator on Linux) unless --db / --key are absolute paths;
nothing is written to the current directory.
Endpoints: protocol/HTTP.md. Example:
  inkind-coordinator --spec scripts/specs/slides.toml --mechanism posted_fee \\
      --port 0 --epoch-seconds 30 --rebuttal-seconds 10
"""


def default_data_dir() -> Path:
    """The user's data directory for the coordinator (``~/.local/share/inkind/coordinator``
    on Linux): its private key and database never land where the command was typed."""
    return platformdirs.user_data_path("inkind") / "coordinator"


def in_data_dir(path: Path, data_dir: Path) -> Path:
    """``path`` if absolute, else inside ``data_dir`` (created with mode 0700)."""
    if path.is_absolute():
        return path
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return data_dir / path


def _cap(text: str) -> int:
    """A connection cap from the command line: an integer >= 0 (0: no cap)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0 (0: no cap)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inkind-coordinator", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", required=True, type=Path,
                   help="market spec file (.toml or .json; README 'Market spec format')")
    p.add_argument("--mechanism", choices=("posted_fee", "optimal", "second_best"),
                   default="posted_fee",
                   help="mechanism to run at each close (default: %(default)s; "
                        "second_best is the former name of optimal); money or in kind "
                        "comes from the spec")
    p.add_argument("--data-dir", type=Path, default=default_data_dir(), metavar="DIR",
                   help="where the database and the key live (created, mode 0700; default "
                        "%(default)s, outside any source tree)")
    p.add_argument("--db", type=Path, default=Path("coordinator.db"),
                   help="SQLite database file, created if missing; a relative path is inside "
                        "--data-dir (default: %(default)s)")
    p.add_argument("--key", type=Path, default=Path("coordinator.pem"),
                   help="coordinator's Ed25519 key, PKCS#8 PEM with mode 0600, created if "
                        "missing; a relative path is inside --data-dir (default: "
                        "%(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=0,
                   help="TCP port; 0 picks a free one (default: %(default)s)")
    p.add_argument("--epoch-seconds", type=int, default=60, metavar="S",
                   help="declarations are accepted S seconds after an epoch opens "
                        "(default: %(default)s)")
    p.add_argument("--pause-seconds", type=int, default=5, metavar="S",
                   help="pause between a close and the next open (default: %(default)s)")
    p.add_argument("--grace-seconds", type=int, default=300, metavar="S",
                   help="credentials stay valid S seconds after the next epoch's deadline "
                        "(default: %(default)s)")
    p.add_argument("--manual", action="store_true",
                   help="no automatic schedule: epochs open and close only through "
                        "POST /v1/admin/open and /v1/admin/close")
    p.add_argument("--probe-attempts", type=int, default=3, metavar="N",
                   help="coordinator probes (signed GET /v1/probe) of each owing host per "
                        "closed epoch; 0 disables them (default: %(default)s)")
    p.add_argument("--probe-timeout", type=float, default=2.0, metavar="S",
                   help="seconds one probe may take (default: %(default)s)")
    p.add_argument("--rebuttal-seconds", type=int, default=REBUTTAL_SECONDS, metavar="S",
                   help="a refusal filed less than S seconds before an audit cut-off is "
                        "not judged at it: the accused host's window to file its ledger; "
                        "with the schedule, epoch + pause seconds must exceed it "
                        "(default: %(default)s)")
    p.add_argument("--probation-epochs", type=int, default=1, metavar="N",
                   help="after the founding epoch a key gets credentials only once the "
                        "audits of N epochs in which it owed a positive contribution found "
                        "it delivering (README 'Probation': newcomers pay dues, so a fresh "
                        "key cannot escape exclusion); 0 disables it (default: %(default)s)")
    p.add_argument("--max-connections-per-client", type=_cap,
                   default=MAX_CONNECTIONS_PER_CLIENT, metavar="N",
                   help="connections one client address may hold at once; beyond it the "
                        "address's oldest idle connection is closed (0: no cap; default: "
                        "%(default)s)")
    p.add_argument("--max-connections", type=_cap, default=None, metavar="N",
                   help="connections held in all; beyond it the oldest idle connection of "
                        "the busiest address is closed (0: no cap; default: the descriptor "
                        "limit less room for probes and the database)")
    p.add_argument("--shoppers", type=int, default=SHOPPERS_PER_HOST, metavar="K",
                   help="mystery shoppers assigned secretly to each owing host per epoch: "
                        "included nodes that ask it like roamers (0: none; default: "
                        "%(default)s)")
    g = p.add_argument_group(
        "graded exclusion", "how long a free rider stays out (README 'Graded exclusion'): "
        "min(MAX, ceil(BASE * GROWTH^(s-1))) epochs, s = offences, each halved every "
        "HALF_LIFE epochs spent readmitted")
    d = PenaltyPolicy()
    g.add_argument("--penalty-base", type=int, default=d.base_epochs, metavar="BASE",
                   help="epochs out after a first offence (default: %(default)s)")
    g.add_argument("--penalty-growth", type=float, default=d.growth, metavar="GROWTH",
                   help="factor per repeat offence (default: %(default)s)")
    g.add_argument("--penalty-half-life", type=float, default=d.half_life, metavar="HALF_LIFE",
                   help="readmitted epochs for the offence score to halve "
                        "(default: %(default)s)")
    g.add_argument("--penalty-max", type=int, default=d.max_epochs, metavar="MAX",
                   help="longest exclusion in epochs (default: %(default)s)")
    g.add_argument("--penalty-history", type=int, default=d.history_epochs, metavar="E",
                   help="epochs an ended exclusion stays listed in /v1/status "
                        "(default: %(default)s)")
    p.add_argument("--admin-token", metavar="T",
                   help="bearer token for /v1/admin/* (or set INKIND_ADMIN_TOKEN; without "
                        "one the admin endpoints refuse everything)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="stderr log level")
    return p


def load_or_create_key(path: Path) -> Identity:
    if path.exists():
        return Identity.load(path)
    identity = Identity.generate()
    identity.save(path)
    log.info("created coordinator key %s", path)
    return identity


async def serve(config: CoordinatorConfig, store: Store, identity: Identity, host: str,
                port: int, *, per_client: int = MAX_CONNECTIONS_PER_CLIENT,
                total: int | None = None) -> None:
    app = make_app(config, store=store, identity=identity)
    runner = make_runner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = LimitedSite(runner, host, port, per_client=per_client, total=total)
        await site.start()
        addresses = runner.addresses
        bound = int(addresses[0][1]) if addresses else port
        shown = f"[{host}]" if ":" in host else host
        core = app[COORDINATOR].core
        print(json.dumps({"coordinator": f"http://{shown}:{bound}",
                          "public_key": identity.public_key, "node_id": identity.node_id,
                          "epoch": core.epoch, "phase": core.phase.value}), flush=True)
        await stop.wait()
        log.info("shutting down")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = args.admin_token or os.environ.get("INKIND_ADMIN_TOKEN") or None
    try:
        penalty = PenaltyPolicy(
            base_epochs=args.penalty_base, growth=args.penalty_growth,
            half_life=args.penalty_half_life, max_epochs=args.penalty_max,
            history_epochs=args.penalty_history)
        config = CoordinatorConfig.from_spec_file(
            args.spec, mechanism=args.mechanism, epoch_seconds=args.epoch_seconds,
            pause_seconds=args.pause_seconds, credential_grace=args.grace_seconds,
            auto_schedule=not args.manual, admin_token=token,
            probe_attempts=args.probe_attempts, probe_timeout=args.probe_timeout,
            rebuttal_seconds=args.rebuttal_seconds, shoppers_per_host=args.shoppers,
            probation_epochs=args.probation_epochs, penalty=penalty)
        # The store's lock first: of two coordinators started at once on one data
        # directory, the one that loses it exits before it can create a key as well.
        store = Store(in_data_dir(args.db, args.data_dir))
    except (OSError, ValueError, StoreError) as exc:
        print(f"inkind-coordinator: {exc}", file=sys.stderr)
        return 2
    try:
        identity = load_or_create_key(in_data_dir(args.key, args.data_dir))
    except (OSError, ValueError, KeyFileError) as exc:
        store.close()
        print(f"inkind-coordinator: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as loop_runner:
            loop_runner.run(serve(config, store, identity, args.host, args.port,
                                  per_client=args.max_connections_per_client,
                                  total=args.max_connections))
    except (StoreError, OSError) as exc:
        print(f"inkind-coordinator: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

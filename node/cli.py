"""``inkind-node`` (also ``python -m node``): run one node against a coordinator.

The node binds its host service, prints ONE JSON line on stdout once it listens::

    {"node_id": ..., "public_key": ..., "url": "http://127.0.0.1:PORT",
     "endpoint": "127.0.0.1:PORT", "location": L, "kind": KIND, "strategy": S}

and then runs its epoch loop (:class:`node.agent.Agent`) until SIGINT or SIGTERM, on
which it stops the loop, closes its listener and exits 0. Logs go to stderr. Exit code 2
for bad arguments or an unusable key file.

This module only parses arguments and wires the parts; the logic lives in
:mod:`node.agent`, :mod:`node.host` and :mod:`node.service`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import platformdirs

from node.agent import DEFAULT_ROAM_AMOUNT, NodeSpec, PermanentError
from node.launch import start_node
from node.resources import Tariff, parse_micro
from node.strategy import Strategy, parse_strategy
from protocol import Identity, InkindError
from protocol.errors import KeyFileError
from protocol.identity import check_strong_public_key
from protocol.kinds import KINDS

log = logging.getLogger("inkind.node")

_UNITS = "".join(f"\n  {k.name}: {k.unit}" for k in KINDS.values())
EPILOG = f"""\
units: --capacity and --roam-amount are in units of the node's resource kind; one unit is{_UNITS}
  --theta is the type θ in [0, 1]; --theta-per-epoch T0,T1,... gives the true type of
  epochs 0, 1, ... (the coordinator's numbering) when types change from epoch to epoch,
  and --theta then holds for every later epoch.
  All are sent as integer micro-units (1 unit = 1000000).

strategies: truthful (default) | misreport:F (declare F·θ) | misreport:=V (declare V)
  | free-ride (declare truthfully, open and commit nothing)
  | free-ride:commit (commit what is owed but open nothing).

logging: at --log-level INFO one line per epoch step (registered, declared, provided,
  roamed, reported) and per access decision (granted or refused, with the reason).

files: the key lives in --data-dir (default ~/.local/share/inkind/node on Linux) unless
  --key is an absolute path; nothing is written to the current directory.

exit status: 0 stopped (SIGINT/SIGTERM), 1 the epoch loop crashed, 2 bad arguments or
  key file, 4 the coordinator refuses this node's registration for good (a location its
  market does not have, a malformed field): fix the configuration, retrying cannot help.

example:
  inkind-node --coordinator http://127.0.0.1:8080 --key n1.pem --location 0 \\
      --kind wlan_coverage --capacity 2 --theta 0.6
"""


def _location(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 1023:
        raise argparse.ArgumentTypeError("a location is an integer in 0..1023")
    return value


def _units(text: str) -> int:
    try:
        return parse_micro(text)
    except InkindError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _theta(text: str) -> int:
    try:
        return parse_micro(text, high=1_000_000)
    except InkindError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: At most this many per-epoch types on one command line.
MAX_THETAS = 100_000


def _thetas(text: str) -> dict[int, int]:
    items = text.split(",")
    if len(items) > MAX_THETAS:
        raise argparse.ArgumentTypeError(f"at most {MAX_THETAS} per-epoch types")
    if any(len(t) > 32 for t in items):  # a type is a short decimal in [0, 1]
        raise argparse.ArgumentTypeError("a per-epoch type is a decimal in [0, 1]")
    try:
        return {e: parse_micro(t.strip(), high=1_000_000) for e, t in enumerate(items)}
    except InkindError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _strategy(text: str) -> Strategy:
    try:
        return parse_strategy(text)
    except InkindError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _tariff(text: str) -> Tariff:
    try:
        return Tariff.parse(text)
    except InkindError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _key(text: str) -> str:
    try:
        return check_strong_public_key("coordinator key", text)
    except InkindError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def default_data_dir() -> Path:
    """The user's data directory for inkind nodes (``~/.local/share/inkind/node`` on Linux):
    private keys never land in the directory the command was typed in."""
    return platformdirs.user_data_path("inkind") / "node"


def key_path(args: argparse.Namespace) -> Path:
    """Where the key file is: ``--key`` as given if absolute, else inside ``--data-dir``
    (created with mode 0700)."""
    key: Path = args.key
    if key.is_absolute():
        return key
    data_dir: Path = args.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return data_dir / key


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="inkind-node",
        description="Run one inkind node: register with the coordinator, declare its\n"
        "type each epoch, open its contribution in kind behind an access gate,\n"
        "roam to other locations and report the signed receipts and refusals.\n"
        "Prints one JSON line (node_id, public_key, url, endpoint, location, kind,\n"
        "strategy) once it listens; stops cleanly on SIGINT or SIGTERM.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--coordinator", required=True, metavar="URL", help="coordinator base URL")
    p.add_argument(
        "--coordinator-key",
        type=_key,
        metavar="HEX",
        help="trusted coordinator public key (64 hex); without it the signer of the first "
        "announcement is trusted (testbeds only)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        metavar="DIR",
        help="where the node keeps its key (created, mode 0700; default %(default)s, "
        "outside any source tree)",
    )
    p.add_argument(
        "--key",
        default=Path("node.pem"),
        type=Path,
        metavar="PATH",
        help="the node's Ed25519 key file (PKCS#8 PEM, mode 0600); created if missing; a "
        "relative path is inside --data-dir (default %(default)s: one key per data "
        "directory, so two nodes need two names or two directories)",
    )
    p.add_argument("--location", required=True, type=_location, help="home location 0..1023")
    p.add_argument("--kind", required=True, choices=list(KINDS), help="resource kind shared")
    p.add_argument(
        "--capacity", required=True, type=_units, metavar="X", help="capacity offered, units"
    )
    p.add_argument("--theta", required=True, type=_theta, metavar="T", help="true type θ in [0, 1]")
    p.add_argument(
        "--theta-per-epoch",
        type=_thetas,
        metavar="T0,T1,...",
        help="true type θ of epoch 0, 1, ... (types redrawn every epoch); later epochs "
        "use --theta",
    )
    p.add_argument(
        "--strategy",
        type=_strategy,
        default=parse_strategy("truthful"),
        metavar="S",
        help="truthful | misreport:F | misreport:=V | free-ride | free-ride:commit",
    )
    p.add_argument("--files-dir", metavar="DIR", help="directory of files to share (--kind files)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=0, help="port to listen on; 0 = any free port")
    p.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="endpoint registered with the coordinator (default: the bound address)",
    )
    p.add_argument(
        "--session-seconds",
        type=int,
        default=60,
        help="wlan_channels: how long a granted channel is held (default %(default)s)",
    )
    p.add_argument(
        "--tariff",
        type=_tariff,
        metavar="P:Y,...",
        help="compute: tariff menu points (contribution p buys share y, units); default y = p",
    )
    p.add_argument("--roam-moves", type=int, default=1, help="random moves per epoch")
    p.add_argument("--no-shopping", dest="shops", action="store_false",
                   help="leave this node's mystery-shopper duties to the device that "
                        "roams for it (the testbed's launcher); default: the agent shops")
    p.add_argument(
        "--roam-amount",
        type=_units,
        default=DEFAULT_ROAM_AMOUNT,
        metavar="X",
        help="units asked per access (coverage, compute; channels: always 1; default 0.1)",
    )
    p.add_argument("--max-skew", type=int, default=60, help="clock tolerance, seconds")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between idle polls")
    p.add_argument("--seed", type=int, help="seed of the roaming moves (default: random)")
    p.add_argument(
        "--log-level",
        default="WARNING",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="stderr log level (default %(default)s)",
    )
    return p


def load_or_create_key(path: Path) -> Identity:
    if path.exists():
        return Identity.load(path)
    identity = Identity.generate()
    identity.save(path)
    log.warning("created a new key %s (node %s...)", path, identity.node_id[:16])
    return identity


def spec_from_args(args: argparse.Namespace) -> NodeSpec:
    return NodeSpec(
        coordinator=args.coordinator,
        location=args.location,
        kind=args.kind,
        capacity=args.capacity,
        theta=args.theta,
        thetas=args.theta_per_epoch,
        strategy=args.strategy,
        coordinator_key=args.coordinator_key,
        files_dir=args.files_dir,
        host=args.host,
        port=args.port,
        advertise=args.advertise,
        session_seconds=args.session_seconds,
        tariff=args.tariff,
        roam_moves=args.roam_moves,
        shops=args.shops,
        roam_amount=args.roam_amount,
        max_skew=args.max_skew,
        seed=args.seed,
    )


#: Exit status of a node whose configuration the coordinator refuses for good.
EXIT_PERMANENT = 4


async def serve(spec: NodeSpec, identity: Identity, *, poll_seconds: float) -> int:
    """Run one node until SIGINT/SIGTERM; 0 on a clean stop, 1 if the loop crashed,
    :data:`EXIT_PERMANENT` if the coordinator refuses its registration for good."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        node = await start_node(spec, identity, session)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            print(json.dumps(node.info()), flush=True)
            task = asyncio.create_task(node.agent.run(stop.is_set, poll_seconds=poll_seconds))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
            crashed = task.done() and not task.cancelled() and task.exception() is not None
            for t in (task, stopped):
                t.cancel()
            await asyncio.gather(task, stopped, return_exceptions=True)
            if crashed and isinstance(task.exception(), PermanentError):
                print(f"inkind-node: {task.exception()}", file=sys.stderr)
                return EXIT_PERMANENT
            if crashed:
                log.error("the epoch loop stopped: %r", task.exception())
                return 1
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await node.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        identity = load_or_create_key(key_path(args))
    except OSError as exc:
        print(f"inkind-node: the data directory: {exc}", file=sys.stderr)
        return 2
    except KeyFileError as exc:
        print(f"inkind-node: {exc}", file=sys.stderr)
        return 2
    if KINDS[args.kind].itemised and not args.files_dir:
        # an itemised kind serves items (files) from a directory
        print(f"inkind-node: --kind {args.kind} needs --files-dir", file=sys.stderr)
        return 2
    return asyncio.run(serve(spec_from_args(args), identity, poll_seconds=args.poll))


if __name__ == "__main__":
    sys.exit(main())

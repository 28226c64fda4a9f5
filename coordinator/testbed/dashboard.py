"""A live page on 127.0.0.1 that follows a testbed run, or shows a finished one.

``scripts/testbed.py --dashboard`` serves it while the run plays (the driver hands every
played epoch to :meth:`Board.epoch`, and its progress line to :meth:`Board.phase`);
``scripts/dashboard.py report.json`` serves a finished run from its report. Both show
the same page, rendered here on the server from the report's own records (so what the
page says is what report.json says): the scenario, the current phase, per epoch the
inclusion, Q per location and welfare against its expectation (sd over type profiles,
z), grants and refusals by reason (the colours of the plots), the free riders caught
and their penalties, and, once the run is over, every check with what it checked.

The page reloads its body every second while the run plays (``GET /body``, only when
``GET /state.json``'s ``version`` changed); a finished run's page is static. The server
runs in a thread of its own with its own event loop, so the launcher's loop never waits
on a browser.
"""

from __future__ import annotations

import asyncio
import html
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from .checks import verdict_text
from .report import _fmt, reason_colour

REFRESH_MS = 1000


def _e(x: Any) -> str:
    return html.escape(str(x))


def _n(x: Any, nd: int = 2) -> str:
    return _e(_fmt(x, nd))


def render_body(state: Mapping[str, Any]) -> str:
    """The page's body for ``state`` (:meth:`Board.state`): plain HTML, every figure
    marked with a ``data-*`` attribute naming what it is."""
    sc = state.get("scenario", {})
    epochs: Sequence[Mapping[str, Any]] = state.get("epochs", [])
    summary: Mapping[str, Any] | None = state.get("summary")
    names = [loc["name"] for loc in sc.get("locations", [])]
    out = [f'<h1 id="scenario">{_e(sc.get("name", "testbed"))}</h1>',
           f'<p class="desc">{_e(sc.get("description", ""))}</p>']
    status = state.get("status", "running")
    if summary is not None:
        cls = "ok" if summary.get("ok") else "failed"
        out.append(f'<p id="status" data-status="{_e(status)}">run {_e(status)}; checks: '
                   f'<b id="verdict" class="{cls}">{_e(summary.get("verdict", ""))}</b></p>')
    else:
        out.append(f'<p id="status" data-status="{_e(status)}">{_e(status)}: '
                   f'<span id="phase">{_e(state.get("phase", ""))}</span></p>')
    # Epochs: inclusion, Q per location, welfare against its expectation.
    out.append('<h2>Epochs</h2><table id="epochs"><tr><th>mechanism</th><th>epoch</th>'
               '<th>included / declared</th>'
               + "".join(f"<th>Q {_e(n)}</th>" for n in names)
               + "<th>welfare expected</th><th>sd over type profiles</th><th>realised</th>"
                 "<th>z</th><th>free riders caught</th></tr>")
    for e in epochs:
        key = f'{e["mechanism"]}-{e["epoch"]}'
        out.append(
            f'<tr data-epoch="{_e(key)}"><td>{_e(e["mechanism"])}</td><td>{_e(e["epoch"])}</td>'
            f'<td data-included="{_e(key)}">{_e(e["included"])} / {_e(e["declarations"])}</td>'
            + "".join(f'<td data-q="{_e(key)}-{_e(loc["name"])}">{_n(loc["Q_planned"], 3)}</td>'
                      for loc in e["locations"])
            + f'<td data-welfare-expected="{_e(key)}">{_n(e["welfare_expected"])}</td>'
              f'<td>{_n(e.get("welfare_sd"))}</td>'
              f'<td data-welfare-realised="{_e(key)}">{_n(e["welfare_realised"])}</td>'
              f'<td>{_n(e.get("welfare_z"))}</td>'
              f'<td>{_e(", ".join(e["free_riders_detected"]) or "–")}</td></tr>')
    out.append("</table>")
    # Access outcomes by reason, over every played epoch.
    outcomes: dict[str, Counter[str]] = {"included": Counter(), "excluded": Counter()}
    for e in epochs:
        for loc in e["locations"]:
            for who in outcomes:
                outcomes[who]["granted"] += loc[f"grants_{who}"]
                outcomes[who].update(loc[f"refusals_{who}"])
    reasons = sorted({r for c in outcomes.values() for r, v in c.items() if v},
                     key=lambda r: (r != "granted", r))
    out.append('<h2>Access attempts by outcome</h2><table id="outcomes"><tr><th>outcome</th>'
               "<th>included roamers</th><th>excluded roamers</th></tr>")
    for r in reasons:
        out.append(f'<tr><td><span class="swatch" style="background:{reason_colour(r)}">'
                   f'</span>{_e(r)}</td>'
                   f'<td data-outcome-included="{_e(r)}">{outcomes["included"][r]}</td>'
                   f'<td data-outcome-excluded="{_e(r)}">{outcomes["excluded"][r]}</td></tr>')
    out.append("</table>")
    # Free riders and their penalties.
    detections = (summary or {}).get("free_riders_detected", state.get("detections", []))
    out.append(f'<h2>Free riders caught (<span id="offences">{len(detections)}</span> '
               'offences)</h2><table id="free-riders"><tr><th>node</th><th>mechanism</th>'
               "<th>detected in epoch</th><th>excluded from epoch</th><th>reason</th></tr>")
    for d in detections:
        out.append(f'<tr data-rider="{_e(d["node"])}"><td>{_e(d["node"])}</td>'
                   f'<td>{_e(d["mechanism"])}</td><td>{_e(d["epoch"])}</td>'
                   f'<td>{_e(d["excluded_epoch"])}</td><td>{_e(d["reason"])}</td></tr>')
    out.append("</table>")
    if summary is not None:
        out.append('<h2>Checks</h2><table id="checks"><tr><th>check</th><th>status</th>'
                   "<th>what it checked</th></tr>")
        about = set(summary.get("checks_about", []))
        for c in summary["checks"]:
            star = " *" if c["name"] in about else ""
            out.append(f'<tr><td>{_e(c["name"])}{star}</td>'
                       f'<td data-check="{_e(c["name"])}" class="{_e(c["status"])}">'
                       f'{_e(c["status"])}</td><td>{_e(verdict_text(c))}</td></tr>')
        out.append("</table><p>* what the scenario is about</p>")
        for m, b in summary.get("by_mechanism", {}).items():
            out.append(f'<p data-welfare-mean="{_e(m)}">{_e(m)}: welfare expected '
                       f'{_n(b["welfare_expected_mean"])} (sd {_n(b["welfare_sd"])} per '
                       f'epoch over type profiles; mean of {_e(b.get("type_profiles"))} '
                       f'profile(s): sd {_n(b.get("welfare_sd_of_mean"))}), realised '
                       f'{_n(b["welfare_realised_mean"])}, z = {_n(b["welfare_z"])}; epoch '
                       f'{_e(b["cutoff_epoch"])} is the audit cut-off</p>')
    return "\n".join(out)


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>inkind testbed: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #bbb; padding: 2px 8px; text-align: right; }}
th {{ background: #eee; }} td:first-child {{ text-align: left; }}
.ok {{ color: #1a7f37; font-weight: bold; }} .failed {{ color: #c62828; font-weight: bold; }}
.not_checked {{ color: #8a6d00; }}
.swatch {{ display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.4em; }}
</style></head>
<body><div id="board">{body}</div>
<script>
let version = {version};
const live = {live};
async function poll() {{
  try {{
    const s = await (await fetch("/state.json")).json();
    if (s.version !== version) {{
      version = s.version;
      document.getElementById("board").innerHTML = await (await fetch("/body")).text();
    }}
    if (!s.finished) setTimeout(poll, {refresh});
  }} catch (e) {{ setTimeout(poll, {refresh}); }}
}}
if (live) setTimeout(poll, {refresh});
</script></body></html>
"""


class Board:
    """The state the page shows; the driver's thread writes, the server's thread reads
    (each write replaces the whole state under a lock)."""

    def __init__(self, scenario: Mapping[str, Any], *, live: bool) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"scenario": dict(scenario), "epochs": [],
                                       "status": "running" if live else "finished",
                                       "phase": "starting", "version": 0,
                                       "finished": not live, "detections": []}
        self.url = ""
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def state(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._state = {**self._state, **changes, "version": self._state["version"] + 1}

    def phase(self, text: str) -> None:
        self._update(phase=text)

    def epoch(self, epoch: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> None:
        """A played epoch (a report.json ``epochs`` record) and the detections so far."""
        with self._lock:
            epochs = [*self._state["epochs"], dict(epoch)]
        self._update(epochs=epochs, detections=list(detections))

    def finish(self, report: Mapping[str, Any]) -> None:
        """The run is over: show its report."""
        self._update(epochs=list(report["epochs"]), summary=report["summary"],
                     status="interrupted" if report.get("interrupted") else "finished",
                     finished=True)

    # --- serving ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        async def page(_: web.Request) -> web.Response:
            s = self.state()
            return web.Response(content_type="text/html", text=PAGE.format(
                title=_e(s["scenario"].get("name", "")), body=render_body(s),
                version=s["version"], live="false" if s["finished"] else "true",
                refresh=REFRESH_MS))

        async def body(_: web.Request) -> web.Response:
            return web.Response(content_type="text/html", text=render_body(self.state()))

        async def state(_: web.Request) -> web.Response:
            return web.json_response(self.state())

        app = web.Application()
        app.router.add_get("/", page)
        app.router.add_get("/body", body)
        app.router.add_get("/state.json", state)
        return app

    def serve(self, port: int = 0) -> str:
        """Serve on 127.0.0.1:``port`` (0: any free port) in a thread; returns the URL."""
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            runner = web.AppRunner(self.app(), access_log=None)
            await runner.setup()
            try:
                site = web.TCPSite(runner, "127.0.0.1", port)
                await site.start()
                server = site._server
                sockets = getattr(server, "sockets", None) or []
                self.url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}/"
                self._stop = asyncio.Event()
                self._loop = asyncio.get_running_loop()
                ready.set()
                await self._stop.wait()
            finally:
                await runner.cleanup()

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported to the caller of serve()
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="dashboard", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure or not self.url:
            raise OSError(f"the dashboard could not listen on 127.0.0.1:{port}: "
                          f"{failure[0] if failure else 'timeout'}")
        return self.url

    def serve_until_interrupted(self) -> None:
        """Keep serving until SIGINT or SIGTERM, then stop (the main thread waits)."""
        import signal

        got: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, _f: got.append(s))
        while not got:
            signal.pause()
        self.close()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

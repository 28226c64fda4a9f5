"""The dashboard, opened in headless Chromium, shows what report.json says.

A small scenario with free riders is played (nodes in one runner process); then
``scripts/dashboard.py report.json`` serves it and Chromium renders the page: every
check's status, the verdict, the offences, each epoch's inclusion and welfare must match
the report, and a screenshot must not be blank. ``scripts/testbed.py --dashboard`` is
opened while it plays (the page follows the run) and after it (the finished run).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run "
                                                           "installs it)")]

SCENARIO = """
[scenario]
name = "dash"
epochs = {epochs}
seed = 3
checks = ["free_riders_caught"]

[[locations]]
name = "a"
nodes = 6
area = 4.0

[[locations]]
name = "b"
nodes = 6
area = 4.0

[mobility]
trips = 2.0
attempts = 3

[[strategies]]
nodes = "a"
count = 1
min_theta = 0.5
strategy = "free-ride"
"""


def chromium(url: str, *args: str) -> str:
    """Run headless Chromium on ``url`` with a fresh profile; its stdout."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        out = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args, url],
            capture_output=True, text=True, timeout=120, check=False)
    return out.stdout


class Marks(HTMLParser):
    """Text of every element carrying a data-* attribute or an id, keyed by it."""

    def __init__(self) -> None:
        super().__init__()
        self.marks: dict[str, str] = {}
        self.open: list[tuple[str, str]] = []  # (tag, key)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        keys = [f"{k}={v}" for k, v in attrs if k.startswith("data-") or k == "id"]
        self.open.append((tag, keys[0] if keys else ""))
        for key in keys:
            self.marks.setdefault(key, "")

    def handle_endtag(self, tag: str) -> None:
        while self.open:
            t, _ = self.open.pop()
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, key in self.open:
            if key:
                self.marks[key] = self.marks.get(key, "") + data


def marks(dom: str) -> dict[str, str]:
    p = Marks()
    p.feed(dom)
    return {k: v.strip() for k, v in p.marks.items()}


def assert_page_matches(m: dict[str, str], report: dict[str, Any]) -> None:
    s = report["summary"]
    assert m["id=scenario"] == report["scenario"]["name"]
    assert m["id=verdict"] == s["verdict"]
    for c in s["checks"]:
        assert m[f"data-check={c['name']}"] == c["status"], c["name"]
    assert m["id=offences"] == str(len(s["free_riders_detected"]))
    for d in s["free_riders_detected"]:
        assert f"data-rider={d['node']}" in m
    for e in report["epochs"]:
        key = f"{e['mechanism']}-{e['epoch']}"
        assert m[f"data-included={key}"] == f"{e['included']} / {e['declarations']}"
        assert float(m[f"data-welfare-expected={key}"]) == pytest.approx(
            e["welfare_expected"], abs=0.006)
        assert float(m[f"data-welfare-realised={key}"]) == pytest.approx(
            e["welfare_realised"], abs=0.006)
        for loc in e["locations"]:
            assert float(m[f"data-q={key}-{loc['name']}"]) == pytest.approx(
                loc["Q_planned"], abs=0.0006)


def not_blank(png: Path) -> None:
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    assert img.shape[0] > 100 and img.shape[1] > 100
    assert float(img[..., :3].std()) > 0.05  # text and tables, not one flat colour


def test_finished_run_page_shows_the_report(tmp_path: Path) -> None:
    path = tmp_path / "dash.toml"
    path.write_text(SCENARIO.format(epochs=2))
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "testbed.py"), "--scenario",
                          str(path), "--out", str(out), "--data-dir", str(tmp_path / "state"),
                          "--nodes", "inproc", "--no-plots",
                          "--quiet"], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["free_riders_detected"]
    server = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "dashboard.py"),
                               str(out / "report.json"), "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        assert_page_matches(marks(chromium(url, "--dump-dom")), report)
        shot = tmp_path / "page.png"
        chromium(url, f"--screenshot={shot}", "--window-size=1200,1400")
        not_blank(shot)
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0
        server.stdout.close()  # type: ignore[union-attr]


def test_live_page_follows_the_run(tmp_path: Path) -> None:
    path = tmp_path / "dash.toml"
    path.write_text(SCENARIO.format(epochs=3))
    out = tmp_path / "out"
    launcher = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "testbed.py"), "--scenario", str(path),
         "--out", str(out), "--data-dir", str(tmp_path / "state"), "--nodes", "inproc",
         "--no-plots", "--quiet", "--dashboard"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert launcher.stdout is not None
        url = launcher.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        live = marks(chromium(url, "--dump-dom"))
        assert live["id=scenario"] == "dash"
        assert "data-status=running" in live or "id=verdict" in live
        for line in launcher.stdout:  # the run is over when it says where the page is
            if line.startswith("dashboard:"):
                break
        report = json.loads((out / "report.json").read_text())
        assert_page_matches(marks(chromium(url, "--dump-dom")), report)
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=60) == (0 if report["summary"]["ok"] else 1)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        launcher.stdout.close()  # type: ignore[union-attr]

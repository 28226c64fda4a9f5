"""One writer, more instances (issue 11 item 8): a second coordinator on the same
database is refused however it names it (a symlink to the file, a symlinked data
directory, a relative path, a hard link) and however close in time it starts; the first
keeps its lock and its data."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from helpers.coordinator import ADMIN_TOKEN, SPEC_TOML

from coordinator.store import Store, StoreLockedError


def other_names(tmp_path: Path) -> list[Path]:
    """Names of ``tmp_path / "real" / "c.db"`` other than that one."""
    real = tmp_path / "real"
    (tmp_path / "file-link.db").symlink_to(real / "c.db")
    (tmp_path / "dir-link").symlink_to(real, target_is_directory=True)
    (tmp_path / "chain.db").symlink_to(tmp_path / "file-link.db")
    os.link(real / "c.db", tmp_path / "hard.db")
    return [tmp_path / "file-link.db", tmp_path / "dir-link" / "c.db", tmp_path / "chain.db",
            tmp_path / "real" / ".." / "real" / "c.db", tmp_path / "hard.db"]


def test_every_name_of_a_locked_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    first = Store(tmp_path / "real" / "c.db")
    try:
        for name in other_names(tmp_path):
            with pytest.raises(StoreLockedError, match="another coordinator"):
                Store(name)
        assert first.pragma("journal_mode") == "wal"  # the first still works
    finally:
        first.close()
    Store(tmp_path / "dir-link" / "c.db").close()  # free again once the first closed


def test_a_relative_path_names_the_same_database(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    first = Store(tmp_path / "c.db")
    try:
        monkeypatch.chdir(tmp_path / ".")
        with pytest.raises(StoreLockedError):
            Store("c.db")
        (tmp_path / "sub").mkdir()
        monkeypatch.chdir(tmp_path / "sub")
        with pytest.raises(StoreLockedError):
            Store("../c.db")
    finally:
        first.close()


def test_of_many_started_at_the_same_instant_exactly_one_runs(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    names = [tmp_path / "real" / "c.db", *other_names_after_create(tmp_path)]
    barrier = threading.Barrier(len(names))
    won: list[Store] = []
    lost: list[BaseException] = []
    guard = threading.Lock()

    def start(name: Path) -> None:
        barrier.wait()
        try:
            store = Store(name)
        except StoreLockedError as exc:
            with guard:
                lost.append(exc)
        else:
            with guard:
                won.append(store)

    threads = [threading.Thread(target=start, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert len(won) == 1 and len(lost) == len(names) - 1
    finally:
        for s in won:
            s.close()


def other_names_after_create(tmp_path: Path) -> list[Path]:
    Store(tmp_path / "real" / "c.db").close()  # the file exists, so it can be hard-linked
    return other_names(tmp_path)


@pytest.mark.slow  # real processes
def test_two_coordinators_started_at_once_on_one_data_dir_one_runs(tmp_path: Path) -> None:
    """Through a symlinked data directory, at the same instant, with no key yet: exactly
    one announces itself; the other exits non-zero with a clear message, no traceback;
    the one running answers."""
    (tmp_path / "spec.toml").write_text(SPEC_TOML)
    (tmp_path / "data").mkdir(mode=0o700)
    (tmp_path / "alias").symlink_to(tmp_path / "data", target_is_directory=True)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "coordinator", "--spec", str(tmp_path / "spec.toml"),
         "--mechanism", "posted_fee", "--data-dir", str(tmp_path / d), "--port", "0",
         "--host", "127.0.0.1", "--manual", "--admin-token", ADMIN_TOKEN,
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
        for d in ("data", "alias")]
    try:
        lines = []
        for p in procs:
            assert p.stdout is not None
            ready, _, _ = select.select([p.stdout], [], [], 60)
            lines.append(p.stdout.readline() if ready else b"")
        running = [(p, json.loads(line)) for p, line in zip(procs, lines, strict=True)
                   if line]
        exited = [p for p, line in zip(procs, lines, strict=True) if not line]
        assert len(running) == 1 and len(exited) == 1
        loser = exited[0]
        assert loser.wait(30) != 0 and loser.stderr is not None
        err = loser.stderr.read()
        assert b"another coordinator is running on this database" in err
        assert b"Traceback" not in err
        url = running[0][1]["coordinator"] + "/v1/status"
        with urllib.request.urlopen(url, timeout=10) as r:
            assert r.status == 200 and json.loads(r.read())["phase"] == "idle"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()

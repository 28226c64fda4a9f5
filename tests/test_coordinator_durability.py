"""kill -9 after acknowledged declarations: a restarted coordinator has them all, in the
same epoch. Runs the real command (``python -m coordinator``) as a subprocess."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers.coordinator import ADMIN_TOKEN, SPEC_TOML, declaration, node, raw, registration

from protocol import Allocation, open_envelope

STARTUP_SECONDS = 60


def start(tmp: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    cmd = [sys.executable, "-m", "coordinator", "--spec", str(tmp / "spec.toml"),
           "--mechanism", "posted_fee", "--db", str(tmp / "coord.db"),
           "--key", str(tmp / "coord.pem"), "--host", "127.0.0.1", "--port", "0",
           "--epoch-seconds", "600", "--manual", "--admin-token", ADMIN_TOKEN,
           "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], STARTUP_SECONDS)
    if not ready:
        proc.kill()
        pytest.fail("coordinator did not print its address")
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        err = proc.stderr.read().decode() if proc.stderr else ""
        pytest.fail(f"coordinator exited: {err}")
    return proc, json.loads(line)


def call(base: str, path: str, body: bytes | None = None, *,
         admin: bool = False) -> tuple[int, bytes]:
    req = urllib.request.Request(base + path, data=body,
                                 method="GET" if body is None else "POST")
    req.add_header("Content-Type", "application/json")
    if admin:
        req.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.mark.slow  # real processes, killed and restarted
def test_acknowledged_declarations_survive_kill_9(tmp_path: Path) -> None:
    (tmp_path / "spec.toml").write_text(SPEC_TOML)
    people = [node(i) for i in range(3)]
    proc, hello = start(tmp_path)
    try:
        base = hello["coordinator"]
        assert hello["epoch"] is None and hello["phase"] == "idle"
        assert base.startswith("http://127.0.0.1:")
        for p in people:
            assert call(base, "/v1/register", raw(p, registration(p)))[0] == 200
        assert call(base, "/v1/admin/open", b"", admin=True)[0] == 200
        bodies = [raw(p, declaration(p, theta=950_000)) for p in people]
        for body in bodies:
            status, answer = call(base, "/v1/declarations", body)
            assert status == 200 and json.loads(answer)["accepted"] == 1
    finally:
        proc.kill()  # SIGKILL: no chance to flush anything
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

    proc, again = start(tmp_path)
    try:
        base = again["coordinator"]
        assert again["public_key"] == hello["public_key"]
        assert (again["epoch"], again["phase"]) == (0, "open")
        status = json.loads(call(base, "/v1/status")[1])
        assert status["counts"]["declarations"] == len(people)
        for body in bodies:  # each one is still there: resending it is a replay
            code, answer = call(base, "/v1/declarations", body)
            assert (code, json.loads(answer)["code"]) == (409, "replay")
        assert call(base, "/v1/admin/close", b"", admin=True)[0] == 200
        code, body = call(base, "/v1/allocation/0")
        assert code == 200
        _, alloc = open_envelope(body, Allocation, trusted={hello["public_key"]})
        assert set(alloc.included) == {p.node_id for p in people}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_help_describes_the_command() -> None:
    out = subprocess.run([sys.executable, "-m", "coordinator", "--help"], capture_output=True,
                         timeout=60, check=True, env={**os.environ, "COLUMNS": "100"})
    text = out.stdout.decode()
    for flag in ("--spec", "--mechanism", "--db", "--key", "--host", "--port",
                 "--epoch-seconds", "--admin-token", "--manual"):
        assert flag in text
    assert "JSON line" in text


@pytest.mark.slow  # real processes
def test_a_second_coordinator_on_the_same_database_exits_with_a_clear_message(
        tmp_path: Path) -> None:
    (tmp_path / "spec.toml").write_text(SPEC_TOML)
    people = [node(i) for i in range(2)]
    proc, hello = start(tmp_path)
    try:
        base = hello["coordinator"]
        for p in people:
            assert call(base, "/v1/register", raw(p, registration(p)))[0] == 200
        assert call(base, "/v1/admin/open", b"", admin=True)[0] == 200
        body = raw(people[0], declaration(people[0], theta=950_000))
        assert call(base, "/v1/declarations", body)[0] == 200
        second = subprocess.run(
            [sys.executable, "-m", "coordinator", "--spec", str(tmp_path / "spec.toml"),
             "--mechanism", "posted_fee", "--db", str(tmp_path / "coord.db"),
             "--key", str(tmp_path / "coord.pem"), "--port", "0", "--manual",
             "--admin-token", ADMIN_TOKEN],
            capture_output=True, timeout=STARTUP_SECONDS, cwd=tmp_path)
        assert second.returncode != 0 and second.stdout == b""  # never announced itself
        assert b"another coordinator is running on this database" in second.stderr
        assert b"Traceback" not in second.stderr
        # The first one is unharmed and still has the declaration it acknowledged.
        status = json.loads(call(base, "/v1/status")[1])
        assert status["counts"]["declarations"] == 1
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    # Once the first is gone (even by SIGKILL), the database opens again.
    proc, again = start(tmp_path)
    try:
        assert (again["epoch"], again["phase"]) == (0, "open")
    finally:
        proc.kill()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()

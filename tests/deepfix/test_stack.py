"""``deepfix up/status/down`` for real: etcd + a token-authenticated Ray head on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from config_store.server import free_port

CLI = [sys.executable, "-m", "deepfix.cli"]


@pytest.fixture(scope="module")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("stack-home")
    env = {
        **os.environ,
        "DEEPFIX_HOME": str(home),
        "DEEPFIX_ETCD_PORT": str(free_port()),
        "DEEPFIX_ETCD_PEER_PORT": str(free_port()),
        "DEEPFIX_RAY_PORT": str(free_port()),
        "DEEPFIX_RAY_DASHBOARD_PORT": str(free_port()),
        "DEEPFIX_RAY_CLIENT_PORT": str(free_port()),
        "DEEPFIX_RAY_METRICS_PORT": str(free_port()),
        "DEEPFIX_RAY_AGENT_PORT": str(free_port()),
        "DEEPFIX_RAY_NUM_CPUS": "1",
        "COLUMNS": "200",
    }
    env.pop("DEEPFIX_ETCD", None)  # clients must find etcd through up's record
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


def records(env: dict[str, str]) -> tuple[dict[str, object], dict[str, object]]:
    run = Path(env["DEEPFIX_HOME"]) / "run"
    return json.loads((run / "etcd.json").read_text()), json.loads((run / "ray.json").read_text())


def test_up_status_submit_down(stack_env: dict[str, str]) -> None:
    try:
        first = cli(stack_env, "up")
        assert first.returncode == 0, first.stderr
        etcd_rec, ray_rec = records(stack_env)
        assert str(etcd_rec["endpoint"]).startswith("http://127.0.0.1:")
        assert str(ray_rec["dashboard"]).startswith("http://127.0.0.1:")

        # idempotent: a second `up` reuses the same processes
        again = cli(stack_env, "up")
        assert again.returncode == 0
        assert records(stack_env) == (etcd_rec, ray_rec)

        status = cli(stack_env, "status")
        assert status.returncode == 0 and str(etcd_rec["endpoint"]) in status.stdout

        # clients find etcd through the record when DEEPFIX_ETCD is unset
        created = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from config_store.cli import main; sys.exit(main())",
                "create",
                "stack-test",
                "--set",
                "source=/d",
            ],
            env=stack_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr

        # token auth: the jobs API refuses a request without the token ...
        jobs = f"{ray_rec['dashboard']}/api/jobs/"
        assert requests.get(jobs, timeout=10).status_code == 401
        # ... and `ray job submit` as this user (token in ~/.ray/auth_token) works
        user_env = {**stack_env, "RAY_AUTH_MODE": "token"}
        submit = subprocess.run(
            [
                str(Path(sys.executable).parent / "ray"),
                "job",
                "submit",
                "--address",
                str(ray_rec["dashboard"]),
                "--",
                "python",
                "-c",
                "import deepfix; print('ok-from-job')",
            ],
            env=user_env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert submit.returncode == 0, submit.stderr[-2000:]
        assert "ok-from-job" in submit.stdout
        token = Path.home() / ".ray" / "auth_token"
        assert token.stat().st_mode & 0o077 == 0
    finally:
        down = cli(stack_env, "down")
    assert down.returncode == 0
    assert "stopped ray" in down.stdout and "stopped etcd" in down.stdout
    assert cli(stack_env, "status").returncode == 1
    for rec in records_after_down(stack_env):
        assert rec is None


def records_after_down(env: dict[str, str]) -> list[object]:
    run = Path(env["DEEPFIX_HOME"]) / "run"
    return [
        json.loads(p.read_text()) if p.exists() else None
        for p in (run / "etcd.json", run / "ray.json")
    ]


def test_down_with_nothing_recorded_stops_nothing(stack_env: dict[str, str]) -> None:
    r = cli(stack_env, "down")
    assert r.returncode == 0 and "nothing to stop" in r.stdout

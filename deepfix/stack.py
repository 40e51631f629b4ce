"""The local stack, deepfix's embedded default: one etcd and one Ray head, on loopback.

(Ray 2.60 binds a few of the head's ports beyond loopback whatever the flags say — GCS,
client server, agent, metrics export; see the README. Its gRPC ones still require the token.)

``up`` is idempotent: it starts what is not already running and records each service's
address and process in ``$DEEPFIX_HOME/run/<service>.json``; ``down`` stops only the processes
recorded there (each started in its own session, so its process group is exactly what it
spawned); ``status`` reports both.

Ray runs with token authentication (``RAY_AUTH_MODE=token``): the token is Ray's default file
``~/.ray/auth_token``, generated once and kept mode 600, so ``ray job submit`` works for this
user and the jobs API answers 401 to anyone without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel

from config_store.errors import StoreUnavailable
from config_store.server import LocalEtcd, free_port
from config_store.settings import deepfix_home, etcd_record_path
from deepfix.errors import StackError

__all__ = [
    "RayRecord",
    "ServiceStatus",
    "StackSettings",
    "down",
    "ensure_ray_token",
    "ray_token_path",
    "status",
    "up",
]

log = logging.getLogger(__name__)


class StackSettings(BaseModel):
    """Ports and sizes of the local stack (env: ``DEEPFIX_ETCD_PORT``, ``DEEPFIX_RAY_*``)."""

    etcd_port: int = 2379
    etcd_peer_port: int = 2380
    ray_port: int = 6380
    dashboard_port: int = 8265
    client_port: int = 10001
    metrics_port: int = 8080
    # The dashboard agent (it runs submitted jobs) listens here; two heads on one machine
    # need two ports, or the second head's jobs fail with "No available agent".
    agent_port: int = 52365
    num_cpus: int | None = None

    @classmethod
    def from_env(cls) -> StackSettings:
        env = os.environ
        return cls(
            etcd_port=int(env.get("DEEPFIX_ETCD_PORT", 2379)),
            etcd_peer_port=int(env.get("DEEPFIX_ETCD_PEER_PORT", 2380)),
            ray_port=int(env.get("DEEPFIX_RAY_PORT", 6380)),
            dashboard_port=int(env.get("DEEPFIX_RAY_DASHBOARD_PORT", 8265)),
            client_port=int(env.get("DEEPFIX_RAY_CLIENT_PORT", 10001)),
            metrics_port=int(env.get("DEEPFIX_RAY_METRICS_PORT", 8080)),
            agent_port=int(env.get("DEEPFIX_RAY_AGENT_PORT", 52365)),
            num_cpus=int(env["DEEPFIX_RAY_NUM_CPUS"]) if env.get("DEEPFIX_RAY_NUM_CPUS") else None,
        )


class ServiceStatus(BaseModel):
    name: str
    running: bool
    address: str | None = None
    pid: int | None = None
    detail: str = ""


class RayRecord(BaseModel):
    pid: int
    address: str  # GCS address for `ray.init(address=...)`
    dashboard: str  # for `ray job submit --address`
    metrics_port: int


def _run_dir() -> Path:
    path = deepfix_home() / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ray_record_path() -> Path:
    return _run_dir() / "ray.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); read its state so a dead child does not count.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return None


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def _bin(name: str) -> str:
    """A console script of this environment: next to the interpreter first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise StackError(f"`{name}` not found next to {sys.executable} or on PATH")
    return found


# -- ray token ----------------------------------------------------------------------------------


def ray_token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def ensure_ray_token() -> Path:
    """Generate Ray's auth token once; keep it readable by this user only."""
    path = ray_token_path()
    if not path.is_file() or not path.read_text().strip():
        subprocess.run(
            [_bin("ray"), "get-auth-token", "--generate"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        if not path.is_file():
            raise StackError(f"`ray get-auth-token --generate` did not write {path}")
    path.parent.chmod(0o700)
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    return path


# -- etcd ---------------------------------------------------------------------------------------


def _etcd_status() -> ServiceStatus:
    rec = _read(etcd_record_path())
    if not rec:
        return ServiceStatus(name="etcd", running=False, detail="not started by deepfix up")
    pid, endpoint = int(rec["pid"]), str(rec["endpoint"])
    if not _alive(pid):
        return ServiceStatus(
            name="etcd", running=False, address=endpoint, pid=pid, detail="recorded process is gone"
        )
    try:
        ok = requests.get(f"{endpoint}/health", timeout=2).json().get("health") == "true"
    except (requests.RequestException, ValueError):
        ok = False
    return ServiceStatus(
        name="etcd",
        running=ok,
        address=endpoint,
        pid=pid,
        detail="healthy" if ok else "process up, /health not answering",
    )


def _start_etcd(settings: StackSettings) -> ServiceStatus:
    current = _etcd_status()
    if current.running:
        return current
    etcd = LocalEtcd(deepfix_home(), settings.etcd_port, settings.etcd_peer_port)
    try:
        pid = etcd.start(log_file=_run_dir() / "etcd.log")
    except StoreUnavailable as exc:
        raise StackError(str(exc)) from exc
    _write(etcd_record_path(), {"pid": pid, "endpoint": etcd.endpoint})
    return _etcd_status()


# -- ray ----------------------------------------------------------------------------------------


def _ray_status() -> ServiceStatus:
    rec = _read(_ray_record_path())
    if not rec:
        return ServiceStatus(name="ray", running=False, detail="not started by deepfix up")
    r = RayRecord.model_validate(rec)
    if not _alive(r.pid):
        return ServiceStatus(
            name="ray",
            running=False,
            address=r.dashboard,
            pid=r.pid,
            detail="recorded process is gone",
        )
    try:
        code = requests.get(f"{r.dashboard}/api/version", timeout=2).status_code
        # 401 without the token is the expected answer: the head is up and auth is on.
        ok, detail = code in (200, 401), f"GCS {r.address}, dashboard answers {code}"
    except requests.RequestException:
        ok, detail = False, "process up, dashboard not answering"
    return ServiceStatus(name="ray", running=ok, address=r.dashboard, pid=r.pid, detail=detail)


def _start_ray(settings: StackSettings, timeout: float = 90.0) -> ServiceStatus:
    current = _ray_status()
    if current.running:
        return current
    ensure_ray_token()
    host = "127.0.0.1"
    if _port_open(host, settings.agent_port):
        # Another Ray on this machine (a test session, a second stack) holds the agent's
        # default port; ours would never come up and jobs would fail with "No available
        # agent". Nobody addresses the agent directly, so any free port will do.
        settings = settings.model_copy(update={"agent_port": free_port(host)})
    cmd = [
        _bin("ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        host,
        "--port",
        str(settings.ray_port),
        "--dashboard-host",
        host,
        "--dashboard-port",
        str(settings.dashboard_port),
        "--ray-client-server-port",
        str(settings.client_port),
        "--metrics-export-port",
        str(settings.metrics_port),
        "--dashboard-agent-listen-port",
        str(settings.agent_port),
        "--disable-usage-stats",
    ]
    if settings.num_cpus is not None:
        cmd += ["--num-cpus", str(settings.num_cpus)]
    # Job entrypoints run `python ...` from the head's PATH: put this environment's bin first
    # so submitted jobs get the interpreter that has deepfix installed, activated or not.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path}
    log_path = _run_dir() / "ray.log"
    with open(log_path, "ab") as out:
        # --block keeps `ray start` as the parent of the head's processes; a new session makes
        # its process group exactly the head, so `down` can stop it and nothing else.
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    dashboard = f"http://{host}:{settings.dashboard_port}"
    record = RayRecord(
        pid=proc.pid,
        address=f"{host}:{settings.ray_port}",
        dashboard=dashboard,
        metrics_port=settings.metrics_port,
    )
    _write(_ray_record_path(), record.model_dump())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"ray start exited with {proc.returncode}; see {log_path}")
        st = _ray_status()
        if st.running and _port_open(host, settings.agent_port):
            return st
        time.sleep(0.5)
    _stop_group(proc.pid)
    raise StackError(f"Ray head not up after {timeout:.0f}s; see {log_path}")


# -- stop -------------------------------------------------------------------------------------


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _stop_group(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the recorded process's group, then SIGKILL what is left after ``timeout``."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != pid:  # not a group leader we started (PID reused?): touch only that process
        os.kill(pid, signal.SIGTERM)
        return
    # Every process of the group gets SIGTERM at once; waiting on `ray start`'s own drain
    # (which asks a GCS that is shutting down too) would cost 30 s for nothing.
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.25)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


# -- public -------------------------------------------------------------------------------------


def up(settings: StackSettings | None = None, *, ray: bool = True) -> list[ServiceStatus]:
    """Start etcd and the Ray head unless they already run; returns their status."""
    settings = settings or StackSettings.from_env()
    result = [_start_etcd(settings)]
    if ray:
        result.append(_start_ray(settings))
    return result


def status() -> list[ServiceStatus]:
    return [_etcd_status(), _ray_status()]


def down() -> list[ServiceStatus]:
    """Stop the processes ``up`` recorded (and only those); returns what was stopped."""
    stopped = []
    for name, path in (("ray", _ray_record_path()), ("etcd", etcd_record_path())):
        rec = _read(path)
        if not rec:
            continue
        pid = int(rec["pid"])
        if _alive(pid):
            _stop_group(pid)
            stopped.append(ServiceStatus(name=name, running=False, pid=pid, detail="stopped"))
        path.unlink(missing_ok=True)
    return stopped


def ray_address() -> str | None:
    """The dashboard address of the local head, for ``ray job submit --address``."""
    rec = _read(_ray_record_path())
    return str(rec["dashboard"]) if rec else None

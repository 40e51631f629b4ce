"""``deepfix-config`` end to end, as a subprocess, with its documented exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config_store.server import LocalEtcd, free_port

CLI = [sys.executable, "-c", "import sys; from config_store.cli import main; sys.exit(main())"]


def run(*args: str, endpoint: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEEPFIX_ETCD": endpoint, "COLUMNS": "200"}
    return subprocess.run(
        [*CLI, *args], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


@pytest.fixture()
def ep(etcd_server: LocalEtcd) -> str:
    return etcd_server.endpoint


@pytest.fixture()
def name() -> str:
    return f"cli-{time.monotonic_ns() % 10**10}"


def test_create_show_get_list(ep: str, name: str) -> None:
    r = run(
        "create",
        name,
        "--set",
        "source=/data",
        "--set",
        "crop.mode=256x256",
        "--set",
        "details=hello world",
        endpoint=ep,
    )
    assert r.returncode == 0, r.stderr
    shown = json.loads(run("show", name, endpoint=ep).stdout)
    assert shown["crop"] == {"mode": "256x256", "width": 256, "height": 256}
    assert json.loads(run("get", name, "crop.mode", endpoint=ep).stdout) == "256x256"
    listing = run("list", endpoint=ep)
    assert listing.returncode == 0 and name in listing.stdout and "hello world" in listing.stdout


def test_create_from_file_and_stdin(ep: str, name: str, tmp_path: Path) -> None:
    f = tmp_path / "spec.json"
    f.write_text(json.dumps({"source": "/faces", "seed": 3}))
    assert run("create", name, "--from-file", str(f), endpoint=ep).returncode == 0
    assert json.loads(run("get", name, "seed", endpoint=ep).stdout) == 3
    r = run("create", name + "-b", "-f", "-", endpoint=ep, stdin='{"source": "/x"}')
    assert r.returncode == 0, r.stderr


def test_edit_sets_dotted_json_values(ep: str, name: str) -> None:
    run("create", name, "--set", "source=/data", endpoint=ep)
    r = run(
        "edit",
        name,
        "--set",
        "height=128",
        "--set",
        "degradations.0.p=0.9",
        "--set",
        "face_detection.enabled=false",
        endpoint=ep,
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(run("show", name, endpoint=ep).stdout)
    assert doc["height"] == 128 and doc["degradations"][0]["p"] == 0.9
    assert doc["face_detection"]["enabled"] is False


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("show", "does-not-exist"), 1),
        (("get", "does-not-exist"), 1),
        (("delete", "does-not-exist"), 1),
        (("create", "Bad Name", "--set", "source=/x"), 1),
        (("create", "valid-name-but-no-source"), 1),
        (("edit", "x", "--set", "nokeyvalue"), 2),
        (("--no-such-option",), 2),
        (("create", "x", "--from-file", "/no/such/file.json"), 2),
    ],
)
def test_error_exit_codes_are_one_line_without_traceback(
    ep: str, args: tuple[str, ...], code: int
) -> None:
    r = run(*args, endpoint=ep)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    if code == 1:
        assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1


def test_duplicate_create_and_invalid_value_exit_1(ep: str, name: str) -> None:
    assert run("create", name, "--set", "source=/d", endpoint=ep).returncode == 0
    dup = run("create", name, "--set", "source=/d", endpoint=ep)
    assert dup.returncode == 1 and "already exists" in dup.stderr
    bad = run("edit", name, "--set", "split.train=0.9", endpoint=ep)
    assert bad.returncode == 1 and "split" in bad.stderr


def test_delete_with_stale_revision_is_a_conflict(ep: str, name: str) -> None:
    run("create", name, "--set", "source=/d", endpoint=ep)
    run("edit", name, "--set", "seed=1", endpoint=ep)
    r = run("delete", name, "--revision", "1", endpoint=ep)
    assert r.returncode == 1 and "changed since revision" in r.stderr
    assert run("delete", name, endpoint=ep).returncode == 0
    assert run("show", name, endpoint=ep).returncode == 1


def test_history_shows_earlier_values(ep: str, name: str) -> None:
    run("create", name, "--set", "source=/d", "--set", "details=v-one", endpoint=ep)
    run("edit", name, "--set", "details=v-two", endpoint=ep)
    r = run("history", name, endpoint=ep)
    assert r.returncode == 0
    assert 'details: "v-one" -> "v-two"' in r.stdout
    assert r.stdout.index("v-two") < r.stdout.index("created")  # newest first


def test_watch_prints_changes(ep: str, name: str) -> None:
    env = {**os.environ, "DEEPFIX_ETCD": ep}
    proc = subprocess.Popen(
        [*CLI, "watch", name, "--count", "2"], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(2.0)  # interpreter start + watch registration
        run("create", name, "--set", "source=/d", endpoint=ep)
        run("delete", name, endpoint=ep)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in events] == ["put", "delete"]


def test_export_import_round_trip(ep: str, name: str, tmp_path: Path) -> None:
    run("-c", "exportcli", "create", name, "--set", "a=1", endpoint=ep)
    f = tmp_path / "export.json"
    assert run("-c", "exportcli", "export", str(f), endpoint=ep).returncode == 0
    assert json.loads(f.read_text())["documents"][name] == {"a": 1}
    run("-c", "exportcli", "delete", name, endpoint=ep)
    assert run("-c", "exportcli", "import", str(f), endpoint=ep).returncode == 0
    assert json.loads(run("-c", "exportcli", "get", name, "a", endpoint=ep).stdout) == 1


def test_schema_prints_json_schema(ep: str) -> None:
    schema = json.loads(run("schema", endpoint=ep).stdout)
    assert schema["title"] == "DatasetSpec" and "source" in schema["required"]


def test_store_stopped_gives_exit_3_quickly(tmp_path: Path) -> None:
    server = LocalEtcd(tmp_path, free_port(), free_port())
    server.start()
    assert run("create", "up", "--set", "source=/d", endpoint=server.endpoint).returncode == 0
    server.stop()
    start = time.monotonic()
    r = run("--timeout", "2", "show", "up", endpoint=server.endpoint)
    assert r.returncode == 3
    assert time.monotonic() - start < 15
    assert server.endpoint in r.stderr and "deepfix up" in r.stderr

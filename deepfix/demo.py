"""``make demo``: the main flow on the local stack, step by step, failing loudly at a step.

Steps: start the local stack; make (or reuse) the smoke sample folder and its dataset
parameter set in etcd (through ``deepfix-config``); submit ``jobs.prepare``, ``jobs.train``
and ``jobs.evaluate`` to the local head with ``ray job submit``; promote the model; start the
Serve app; send one image to ``/v1/enhance``; print where everything is. Each step reuses
what an earlier run made (idempotent). ``EPOCHS=`` sets the (short, CPU) training run.
``SOURCE=/path/to/faces make demo`` uses the user's folder/archive/URL instead of the sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from deepfix.model_store import ModelVersion

from config_store import ConfigStore, NotFound
from config_store.settings import deepfix_home

console = Console()
DATASET = os.environ.get("DATASET", "demo")


class StepFailed(Exception):
    pass


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent
    proc = subprocess.run([str(exe / args[0]), *args[1:]], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise StepFailed(f"`{' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def smoke_sample(target: Path) -> Path:
    """A few photographs that ship inside scikit-image (offline), as a SMOKE sample only."""
    import cv2
    from skimage import data

    target.mkdir(parents=True, exist_ok=True)
    images = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}
    faces = data.lfw_subset()[:40]  # 25x25 grey LFW crops bundled with scikit-image
    for i, face in enumerate(faces):
        img = (face * 255).astype("uint8")
        images[f"lfw_{i:03d}"] = cv2.cvtColor(cv2.resize(img, (100, 100)), cv2.COLOR_GRAY2RGB)
    for name, img in images.items():
        path = target / f"{name}.png"
        if not path.exists():
            cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    (target / "README.txt").write_text(
        "Smoke sample made from images bundled with scikit-image: it shows the pipeline runs, "
        "it is not a benchmark.\n"
    )
    return target


def step_stack() -> None:
    console.print(_cli("deepfix", "up").stdout)


def step_dataset() -> None:
    source = os.environ.get("SOURCE")
    if not source:
        source = str(smoke_sample(deepfix_home() / "samples" / "smoke"))
        console.print(f"no SOURCE given: using the smoke sample in {source} (not a benchmark)")
    shown = _cli("deepfix-config", "show", DATASET, check=False)
    if shown.returncode == 0 and json.loads(shown.stdout)["source"] == source:
        console.print(f"dataset config {DATASET!r} exists: reusing it")
    else:
        if shown.returncode == 0:
            _cli("deepfix-config", "edit", DATASET, "--set", f"source={source}")
        else:
            _cli(
                "deepfix-config",
                "create",
                DATASET,
                "--set",
                f"source={source}",
                "--set",
                "details=make demo: smoke sample (not a benchmark)",
                "--set",
                "height=128",
                "--set",
                "width=128",
                "--set",
                "face_detection.on_missing=whole",
            )
    console.print(f"$ deepfix-config show {DATASET}")
    console.print_json(_cli("deepfix-config", "show", DATASET).stdout)


def _ray_env() -> dict[str, str]:
    from deepfix import stack

    address = stack.ray_address()
    if not address:
        raise StepFailed("the local Ray head is not recorded; run `deepfix up`")
    exe = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_ADDRESS": address,
        "PATH": f"{exe}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def _submit(module: str, *args: str) -> None:
    """``ray job submit`` to the local head, following the job's logs to this terminal."""
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        "--working-dir",
        ".",
        "--",
        "python",
        "-m",
        module,
        *args,
    ]
    console.print(f"$ ray job submit --working-dir . -- python -m {module} {' '.join(args)}")
    proc = subprocess.run(cmd, env=_ray_env())
    if proc.returncode != 0:
        raise StepFailed(f"job {module} failed (exit {proc.returncode}); its logs are above")


def _store() -> ConfigStore:
    return ConfigStore()


def step_prepare() -> None:
    store = _store()
    spec_revision = store.get("datasets", DATASET).revision
    try:
        prepared = store.get("prepared", DATASET).value
    except NotFound:
        prepared = None
    if prepared and prepared.get("spec_revision") == spec_revision:
        console.print(f"prepared {DATASET} {prepared['version']} matches the spec: reusing it")
        return
    _submit("jobs.prepare", "--dataset", DATASET)


def _model_for(version: str) -> ModelVersion | None:
    """The newest version of MODEL trained on the prepared ``version``, if any."""
    from deepfix.model_store import ModelNotFound, ModelStore

    try:
        versions = ModelStore().list(MODEL)
    except ModelNotFound:
        return None
    found = [v for v in versions if v.dataset_version == version]
    return max(found, key=lambda v: v.version) if found else None


def step_train() -> None:
    prepared = _store().get("prepared", DATASET).value
    if _model_for(prepared["version"]) is not None:
        console.print(f"{MODEL} already trained on {prepared['version']}: reusing it")
        return
    _submit(
        "jobs.train",
        "--dataset",
        DATASET,
        "--model-name",
        MODEL,
        "--workers",
        "2",
        "--epochs",
        EPOCHS,
        "--batch-size",
        "8",
    )


def step_evaluate() -> None:
    version = _model_for(_store().get("prepared", DATASET).value["version"])
    if version is None:
        raise StepFailed("no trained model to evaluate")
    if "test_psnr" in version.metrics:  # evaluate merges test_* headline metrics
        console.print(f"{MODEL}:{version.version} already evaluated: reusing the report")
        return
    _submit("jobs.evaluate", "--model", f"{MODEL}:{version.version}", "--dataset", DATASET)


def step_serve() -> None:
    version = _model_for(_store().get("prepared", DATASET).value["version"])
    if version is None:
        raise StepFailed("no trained model to serve")
    _cli("deepfix", "models", "promote", f"{MODEL}:{version.version}", "--alias", "production")
    console.print(f"promoted {MODEL}:{version.version} to production")
    if _ready():
        # The running app follows the production alias in etcd (no redeploy needed); wait
        # until it serves the version just promoted.
        console.print("the Serve app is already running: reusing it (it follows the alias)")
        _wait_version(version.version)
        return
    env = _ray_env()
    env["RAY_ADDRESS"] = "auto"  # serve run connects to the local head through its GCS
    cmd = [str(Path(sys.executable).parent / "serve"), "run", "--non-blocking", "serve/config.yaml"]
    console.print("$ serve run --non-blocking serve/config.yaml")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StepFailed(f"serve run failed: {proc.stderr.strip()[-2000:]}")
    _wait_ready()


def _ready() -> bool:
    import requests

    try:
        return requests.get(f"{SERVE_URL}/readyz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def _wait_ready(timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _ready():
            return
        time.sleep(2)
    raise StepFailed(f"{SERVE_URL}/readyz not ready after {timeout:.0f}s")


def _wait_version(version: int, timeout: float = 120.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            served = requests.get(f"{SERVE_URL}/v1/models", timeout=5).json()
            if int(served.get("version", -1)) == version:
                return
        except (requests.RequestException, ValueError, TypeError):
            pass
        time.sleep(2)
    raise StepFailed(f"the Serve app did not switch to version {version} in {timeout:.0f}s")


def step_enhance() -> None:
    import requests

    from config_store.config import config

    source = Path(config.get(DATASET, "source"))
    images = sorted(p for p in source.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not images:
        raise StepFailed(f"no image in {source} to send")
    out_dir = deepfix_home() / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"enhanced-{images[0].stem}.png"
    resp = requests.post(
        f"{SERVE_URL}/v1/enhance",
        data=images[0].read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
        timeout=120,
    )
    if resp.status_code != 200:
        raise StepFailed(f"/v1/enhance answered {resp.status_code}: {resp.text[:500]}")
    out.write_bytes(resp.content)
    info = {k: v for k, v in resp.headers.items() if k.lower().startswith("x-")}
    console.print(f"POST /v1/enhance {images[0].name} -> {out} {info}")


def step_summary() -> None:
    from deepfix import stack

    version = _model_for(_store().get("prepared", DATASET).value["version"])
    report = ""
    if version is not None:
        report = f"{version.artifact_uri}/evaluation/{DATASET}/test/report.md"
    rec = stack.status()
    dashboard = stack.ray_address() or ""
    metrics_port = os.environ.get("DEEPFIX_RAY_METRICS_PORT", "8080")
    rows = [
        ("web page (datasets)", f"{SERVE_URL}/"),
        ("OpenAPI", f"{SERVE_URL}/docs"),
        ("Ray dashboard (token)", dashboard),
        ("Prometheus metrics", f"http://127.0.0.1:{metrics_port}/metrics"),
        ("evaluation report", report),
        ("etcd", next((r.address or "" for r in rec if r.name == "etcd"), "")),
        ("stop everything", ".venv/bin/deepfix down"),
    ]
    for what, where in rows:
        console.print(f"  {what:24s} {where}")


MODEL = os.environ.get("MODEL", "deepfix-demo")
EPOCHS = os.environ.get("EPOCHS", "4")
SERVE_URL = os.environ.get("SERVE_URL", "http://127.0.0.1:8000")

STEPS: list[tuple[str, Callable[[], None]]] = [
    ("start the local stack (etcd + Ray head)", step_stack),
    ("create the dataset parameter set in etcd", step_dataset),
    ("prepare clean/degraded pairs (jobs.prepare, Ray Data)", step_prepare),
    ("train the U-Net (jobs.train, Ray Train, 2 CPU workers)", step_train),
    ("evaluate against classical baselines (jobs.evaluate)", step_evaluate),
    ("promote the model and start Ray Serve", step_serve),
    ("enhance one image over HTTP", step_enhance),
    ("where everything is", step_summary),
]


def main() -> int:
    for i, (title, step) in enumerate(STEPS, 1):
        console.rule(f"[bold]step {i}/{len(STEPS)}: {title}")
        try:
            step()
        except (StepFailed, OSError) as exc:
            console.print(f"[red]demo failed at step {i} ({title}):[/red] {exc}")
            return 1
    console.rule("[bold green]done")
    return 0


if __name__ == "__main__":
    sys.exit(main())

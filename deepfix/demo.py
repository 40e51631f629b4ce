"""``make demo``: the main flow on the local stack, step by step, failing loudly at a step.

Steps so far: start the local stack, make (or reuse) the smoke sample folder, create (or
reuse) its dataset parameter set in etcd through ``deepfix-config``, and show it.
``SOURCE=/path/to/faces make demo`` uses the user's folder/archive/URL instead of the sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

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


STEPS: list[tuple[str, Callable[[], None]]] = [
    ("start the local stack (etcd + Ray head)", step_stack),
    ("create the dataset parameter set in etcd", step_dataset),
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
    console.print("stop the stack with: .venv/bin/deepfix down")
    return 0


if __name__ == "__main__":
    sys.exit(main())

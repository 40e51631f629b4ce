"""jobs.evaluate (in-process) and jobs.enhance (Ray Data actor pool) on tiny data.

The model is registered straight into the store (untrained), so these tests do not wait for a
training run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from config_store import ConfigStore
from deepfix.baselines import available_baselines
from deepfix.evaluation import BEST_CLASSICAL, DEGRADED, MODEL
from deepfix.model_store import ModelStore, ModelVersion
from deepfix.models import ArchitectureConfig, build_model

TINY = ArchitectureConfig(name="unet_r2", kwargs={"base_channels": 4, "depth": 1, "t": 1})
TYPES = ("gaussian_noise", "salt_pepper", "shadow")


@pytest.fixture(scope="module")
def registered(
    store: ConfigStore, deepfix_home: Path, write_prepared_dataset: Callable[..., str]
) -> ModelVersion:
    # 10 test rows and 2 val rows, three degradation types
    write_prepared_dataset(
        store,
        deepfix_home / "prepared",
        "tiny-eval",
        n=12,
        version="7",
        split_of=lambda i, n: "test" if i < n - 2 else "val",
    )
    torch.manual_seed(0)
    history = [
        {
            "epoch": e,
            "train_loss": 0.3 / e,
            "val_loss": 0.35 / e,
            "val_psnr": 20 + e,
            "val_ssim": 0.6 + 0.05 * e,
            "val_accuracy": 0.3 + 0.1 * e,
        }
        for e in range(1, 4)
    ]
    model = build_model(TINY)
    # A fresh U-Net is the identity (zero-initialised head); give it a visible correction so
    # the tests can tell where the model was applied.
    torch.nn.init.normal_(model.head.weight, std=0.05)
    return ModelStore(store).register(
        "eval-model",
        model,
        TINY,
        metrics={"val_psnr": 23.0},
        training={"history": history},
        dataset="tiny-eval",
        dataset_version="7",
    )


def test_evaluate_report_has_every_section(registered: ModelVersion, store: ConfigStore) -> None:
    from jobs.evaluate import EvaluateArgs, run

    report, folder = run(EvaluateArgs(model="eval-model:1", dataset="tiny-eval"), store=store)
    assert report.n_samples == 10 and report.split == "test"
    assert set(report.methods) == {DEGRADED, BEST_CLASSICAL, MODEL, *available_baselines()}
    assert set(report.overall) == set(report.methods)
    assert set(report.per_type) == set(TYPES)
    assert sum(s.n for s in report.per_type.values()) == 10
    for section in report.per_type.values():
        assert set(section.methods) == set(report.methods)
    out = Path(folder)
    assert out == Path(registered.artifact_uri) / "evaluation" / "tiny-eval" / "test"
    saved = json.loads((out / "report.json").read_text())
    assert saved["overall"]["model"]["n"] == 10
    md = (out / "report.md").read_text()
    assert "## Overall" in md and "## Per degradation type" in md and "samples.png" in md
    for png in ("training_curves.png", "samples.png"):
        image = cv2.imread(str(out / png))
        assert image is not None and image.shape[0] > 100
    metrics = ModelStore(store).resolve("eval-model").metrics
    assert metrics["val_psnr"] == 23.0  # merged, not replaced
    assert metrics["test_psnr"] == pytest.approx(report.overall[MODEL].psnr)
    assert "test_psnr_gain_vs_best_classical" in metrics


def _folder(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, (h, w) in {"a.png": (40, 50), "sub/b.jpg": (150, 90), "c.png": (20, 20)}.items():
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(src / name), image)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return src


@pytest.mark.ray
def test_enhance_folder_writes_good_outputs_and_lists_the_bad_one(
    ray_session: None, registered: ModelVersion, store: ConfigStore, tmp_path: Path
) -> None:
    from jobs.enhance import EnhanceArgs, run

    src, out = _folder(tmp_path), tmp_path / "out"
    manifest = run(
        EnhanceArgs(model="eval-model", input=str(src), output=str(out), tile_size=32, overlap=8),
        store=store,
    )
    assert manifest.counts == {"ok": 3, "error": 1, "rejected": 0}
    by_input = {e.input: e for e in manifest.items}
    assert by_input["broken.png"].status == "error"
    assert by_input["broken.png"].reason == "corrupt"
    for name, expected in {"a.png": "a.png", "sub/b.jpg": "sub/b.png", "c.png": "c.png"}.items():
        assert by_input[name].status == "ok" and by_input[name].output == expected
        original = cv2.imread(str(src / name))
        enhanced = cv2.imread(str(out / expected))
        assert enhanced is not None and enhanced.shape == original.shape
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["counts"] == manifest.counts and saved["model"] == "eval-model:1"


def test_faces_only_enhancer_pastes_faces_back(registered: ModelVersion, tmp_path: Path) -> None:
    """The actor class itself, without Ray: one face photo, only its face region changes."""
    skdata = pytest.importorskip("skimage.data")
    from jobs.enhance import EnhanceArgs, ImageEnhancer

    src, out = tmp_path / "faces", tmp_path / "faces-out"
    src.mkdir()
    photo = np.ascontiguousarray(skdata.astronaut())
    cv2.imwrite(str(src / "astronaut.png"), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    args = EnhanceArgs(model="eval-model", input=str(src), output=str(out), faces_only=True)
    enhancer = ImageEnhancer(registered.model_dump(mode="json"), args.model_dump(mode="json"))
    rows = enhancer({"path": np.array(["astronaut.png"])})
    assert rows["status"] == ["ok"] and rows["faces"][0] >= 1
    result = cv2.cvtColor(cv2.imread(str(out / "astronaut.png")), cv2.COLOR_BGR2RGB)
    changed = np.any(result != photo, axis=2)
    assert 0 < changed.mean() < 0.5  # the face region, not the whole picture


def test_evaluate_cli_unknown_model_exits_1(
    store: ConfigStore, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.evaluate import main

    assert main(["--model", "no-such-model", "--dataset", "tiny-eval"]) == 1
    assert "no model named" in capsys.readouterr().err

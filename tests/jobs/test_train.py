"""jobs.train: a 2-worker CPU TorchTrainer run on a tiny prepared dataset.

One run (Ray Train costs ~45 s here) covers both behaviours: a worker raises once at the start
of epoch 2, the group restarts from the epoch-1 checkpoint, and the finished run registers the
model with its history.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from config_store import ConfigStore
from deepfix.model_store import ModelStore

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def trained(
    ray_session: None,
    store: ConfigStore,
    deepfix_home: Path,
    write_prepared_dataset: Callable[..., str],
):
    from jobs.train import TrainArgs, run

    write_prepared_dataset(store, deepfix_home / "prepared", "tiny-train")
    args = TrainArgs(
        dataset="tiny-train",
        model_name="tiny-train",
        workers=2,
        epochs=2,
        batch_size=4,
        max_failures=1,
        fail_once_at_epoch=2,
        storage=str(deepfix_home / "ray_results"),
    )
    return args, run(args, store=store)


def test_worker_failure_resumes_from_checkpoint_and_registers_model(
    trained, store: ConfigStore, deepfix_home: Path
) -> None:
    _, version = trained
    assert version.ref == "tiny-train:1"
    assert (version.dataset, version.dataset_version) == ("tiny-train", "v1")
    history = version.training["history"]
    assert [row["epoch"] for row in history] == [1, 2]
    # Epoch 2 raised once; the restarted group loaded the epoch-1 checkpoint.
    assert version.training["resumes"] == [2]
    run_dir = deepfix_home / "ray_results" / version.training["run_name"]
    assert (run_dir / "fail-once-at-epoch-2").is_file()
    assert {"val_psnr", "val_ssim", "val_accuracy", "val_loss"} <= set(version.metrics)
    best = max(history, key=lambda r: r["val_psnr"])
    assert version.training["best_epoch"] == best["epoch"]
    assert version.metrics["val_psnr"] == pytest.approx(best["val_psnr"])
    model, loaded = ModelStore(store).load("tiny-train")
    assert loaded == version
    import torch

    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


def test_resume_continues_the_latest_run(trained, store: ConfigStore) -> None:
    from jobs.train import run

    args, first = trained
    version = run(
        args.model_copy(update={"epochs": 3, "resume": True, "fail_once_at_epoch": None}),
        store=store,
    )
    assert version.version == first.version + 1
    assert version.training["run_name"] == first.training["run_name"]
    assert [row["epoch"] for row in version.training["history"]] == [1, 2, 3]
    assert version.training["resumes"] == [2, 3]

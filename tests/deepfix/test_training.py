"""deepfix.training (Ray-free pieces) and deepfix.evaluation (report building, figures)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deepfix.evaluation import (
    BEST_CLASSICAL,
    DEGRADED,
    MODEL,
    ReportBuilder,
    classical_methods,
    evaluate_sample,
    line_plot,
    render_markdown,
    sample_grid,
    training_curves,
)
from deepfix.io import encode
from deepfix.metrics import ImageMetrics
from deepfix.models import ArchitectureConfig, build_model
from deepfix.training import (
    PSNR_CAP,
    MetricSums,
    TrainConfig,
    decode_pairs,
    from_uint8,
    make_optimizer,
    make_scheduler,
    restoration_loss,
    to_uint8,
    train_epoch,
    validate,
)

TINY = ArchitectureConfig(name="unet_r2", kwargs={"base_channels": 4, "depth": 1, "t": 1})


def _pairs(n: int = 8, size: int = 16, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    clean = [rng.integers(60, 200, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    noisy = [np.clip(c + rng.normal(0, 20, c.shape), 0, 255).astype(np.uint8) for c in clean]
    return clean, noisy


def test_uint8_tensor_round_trip_is_exact() -> None:
    images = np.random.default_rng(1).integers(0, 256, (3, 9, 7, 3), dtype=np.uint8)
    t = from_uint8(images)
    assert t.shape == (3, 3, 9, 7) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    np.testing.assert_array_equal(to_uint8(t), images)


def test_decode_pairs_decodes_png_columns() -> None:
    clean, noisy = _pairs(3)
    degraded, target = decode_pairs(
        {"clean": [encode(c) for c in clean], "degraded": np.array([encode(d) for d in noisy])}
    )
    assert degraded.shape == target.shape == (3, 3, 16, 16)
    np.testing.assert_array_equal(to_uint8(target), np.stack(clean))


def test_decode_pairs_crops_mixed_sizes_to_the_smallest() -> None:
    a = np.zeros((20, 24, 3), np.uint8)
    b = np.zeros((16, 16, 3), np.uint8)
    x, y = decode_pairs({"clean": [encode(a), encode(b)], "degraded": [encode(a), encode(b)]})
    assert x.shape == y.shape == (2, 3, 16, 16)


def test_loss_is_zero_for_a_perfect_restoration_and_ssim_term_adds() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert float(restoration_loss(x, x)) == 0.0
    assert float(restoration_loss(x, x, ssim_weight=1.0)) == pytest.approx(0.0, abs=1e-5)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    plain = float(restoration_loss(y, x))
    assert float(restoration_loss(y, x, ssim_weight=0.5)) > plain > 0


def test_pixel_loss_is_mse_by_default_or_l1() -> None:
    x = torch.rand(2, 3, 16, 16)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert float(restoration_loss(y, x)) == pytest.approx(float(((y - x) ** 2).mean()))
    l1 = float(restoration_loss(y, x, pixel_loss="l1"))
    assert l1 == pytest.approx(float((y - x).abs().mean()))


def test_ssim_term_has_gradients() -> None:
    x = torch.rand(1, 3, 16, 16)
    y = torch.rand(1, 3, 16, 16, requires_grad=True)
    restoration_loss(y, x, ssim_weight=1.0).backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0


def test_training_epochs_reduce_the_loss() -> None:
    torch.manual_seed(0)
    clean, noisy = _pairs(8)
    batch = (from_uint8(noisy), from_uint8(clean))
    model = build_model(TINY)
    config = TrainConfig(arch=TINY, epochs=20, lr=3e-3)
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    first = train_epoch(model, [batch], optimizer)
    for _ in range(15):
        last = train_epoch(model, [batch], optimizer)
        scheduler.step()
    assert first.samples == 8 and first.steps == 1
    assert last.loss < first.loss
    assert optimizer.param_groups[0]["lr"] < config.lr  # the cosine moved


def test_train_epoch_stops_at_max_steps() -> None:
    clean, noisy = _pairs(4)
    batch = (from_uint8(noisy), from_uint8(clean))
    model = build_model(TINY)
    stats = train_epoch(
        model, [batch] * 5, make_optimizer(model, TrainConfig(arch=TINY)), max_steps=2
    )
    assert (stats.steps, stats.samples) == (2, 8)


def test_validate_metrics_of_an_identity_model() -> None:
    clean, noisy = _pairs(4)
    sums = validate(torch.nn.Identity(), [(from_uint8(clean), from_uint8(clean))])
    means = sums.means()
    assert sums.count == 4
    assert means["val_psnr"] == PSNR_CAP  # identical images: capped, not infinite
    assert means["val_ssim"] == pytest.approx(1.0)
    assert means["val_accuracy"] == 1.0
    noisy_means = validate(torch.nn.Identity(), [(from_uint8(noisy), from_uint8(clean))]).means()
    assert 10 < noisy_means["val_psnr"] < 40


def test_metric_sums_without_samples_have_no_means() -> None:
    assert MetricSums().means() == {}


# ----------------------------------------------------------------------------- evaluation


def test_evaluate_sample_covers_every_method() -> None:
    clean, noisy = _pairs(1, size=24)
    results, best = evaluate_sample(clean[0], noisy[0], clean[0], ["gaussian_noise"])
    assert set(results) == {DEGRADED, BEST_CLASSICAL, MODEL, *classical_methods()}
    assert math.isinf(results[MODEL].psnr)
    assert best.shape == clean[0].shape


def test_report_builder_sections_and_counts() -> None:
    builder = ReportBuilder()
    m = ImageMetrics(psnr=20.0, ssim=0.5, accuracy=0.25)
    perfect = ImageMetrics(psnr=math.inf, ssim=1.0, accuracy=1.0)
    builder.add(["shadow"], {DEGRADED: m, BEST_CLASSICAL: m, MODEL: perfect})
    builder.add(["shadow", "jpeg"], {DEGRADED: m, BEST_CLASSICAL: m, MODEL: m})
    report = builder.build(model="m:1", dataset="d", split="test")
    assert report.n_samples == 2
    assert report.per_type["shadow"].n == 2 and report.per_type["jpeg"].n == 1
    assert report.per_type["shadow"].best_classical == "gamma"
    assert report.overall[MODEL].identical == 1
    assert report.overall[MODEL].psnr == pytest.approx((PSNR_CAP + 20.0) / 2)
    headline = report.headline()
    assert headline["test_psnr_gain_vs_degraded"] == pytest.approx((PSNR_CAP - 20.0) / 2)
    md = render_markdown(report)
    assert "## Overall" in md and "### shadow — 2 samples" in md and "### jpeg" in md


def test_figures_are_rgb_images() -> None:
    history = [
        {"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_psnr": 20 + e}
        for e in range(1, 6)
    ]
    curves = training_curves(history)
    assert curves.dtype == np.uint8 and curves.ndim == 3 and curves.shape[2] == 3
    assert (curves < 250).any()  # something was drawn
    assert line_plot({}, title="empty").shape == (320, 480, 3)
    grid = sample_grid([[np.zeros((16, 16, 3), np.uint8)] * 4] * 2, ["a", "b", "c", "d"])
    assert grid.shape == (24 + 2 * 128, 4 * 128, 3)

"""Evaluation reports: degraded input vs classical baselines vs the model, and figures.

A report compares, on one split of a prepared dataset, the PSNR / SSIM / accuracy
(:mod:`deepfix.metrics`) of

* ``degraded`` — the degraded input itself (what doing nothing scores),
* every classical baseline of :mod:`deepfix.baselines` applied to every sample,
* ``best_classical`` — :func:`deepfix.baselines.restore_classical`, the per-type best
  classical restoration chained for the sample's recorded degradation types,
* ``model`` — the trained network,

overall and per degradation type (a sample with several types counts in each of them), with
sample counts. An identical restoration has infinite PSNR; it counts as
:data:`deepfix.training.PSNR_CAP` dB in means and is counted in ``identical``.

Figures are drawn with OpenCV (no plotting library): training curves of loss and validation
metrics per epoch (the deepfix paper's figures 7-8 show such curves) and a grid of clean /
degraded / best classical / model for a few samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deepfix.baselines import BEST_FOR, available_baselines, get_baseline, restore_classical
from deepfix.metrics import ImageMetrics, compute_metrics
from deepfix.training import PSNR_CAP

__all__ = [
    "BEST_CLASSICAL",
    "DEGRADED",
    "MODEL",
    "EvaluationReport",
    "MetricSummary",
    "ReportBuilder",
    "TypeSection",
    "classical_methods",
    "evaluate_sample",
    "line_plot",
    "render_markdown",
    "sample_grid",
    "training_curves",
]

DEGRADED = "degraded"
BEST_CLASSICAL = "best_classical"
MODEL = "model"


def classical_methods() -> list[str]:
    """The registered baselines, in registry order (sorted)."""
    return list(available_baselines())


class MetricSummary(BaseModel):
    """Means over ``n`` samples; ``identical``: samples restored exactly (infinite PSNR)."""

    model_config = ConfigDict(frozen=True)

    n: int
    psnr: float
    ssim: float
    accuracy: float
    identical: int = 0


class TypeSection(BaseModel):
    """Results on the samples that carry one degradation type."""

    n: int
    best_classical: str | None = Field(None, description="baseline BEST_FOR picks for the type")
    methods: dict[str, MetricSummary]


class EvaluationReport(BaseModel):
    """Everything ``report.json`` holds."""

    model: str
    architecture: str | None = None
    dataset: str
    dataset_version: str | None = None
    split: str
    n_samples: int
    methods: list[str]
    overall: dict[str, MetricSummary]
    per_type: dict[str, TypeSection]
    history_epochs: int = 0
    figures: dict[str, str] = Field(default_factory=dict)
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def headline(self, prefix: str | None = None) -> dict[str, float]:
        """Model metrics and their gains over the input and the best classical restoration,
        as flat finite numbers for the model store (keys prefixed with the split)."""
        p = f"{prefix or self.split}_"
        model = self.overall[MODEL]
        out = {
            f"{p}psnr": model.psnr,
            f"{p}ssim": model.ssim,
            f"{p}accuracy": model.accuracy,
            f"{p}samples": float(self.n_samples),
        }
        for ref in (DEGRADED, BEST_CLASSICAL):
            if ref in self.overall:
                out[f"{p}psnr_gain_vs_{ref}"] = model.psnr - self.overall[ref].psnr
                out[f"{p}ssim_gain_vs_{ref}"] = model.ssim - self.overall[ref].ssim
        return {k: v for k, v in out.items() if math.isfinite(v)}


# ---------------------------------------------------------------------------- computation


def evaluate_sample(
    clean: np.ndarray,
    degraded: np.ndarray,
    restored: np.ndarray,
    degradation_types: Sequence[str],
    *,
    baselines: Sequence[str] | None = None,
) -> tuple[dict[str, ImageMetrics], np.ndarray]:
    """Metrics of every method on one sample, and the best classical restoration (for grids).

    Args:
        restored: the model's output (uint8, same shape as ``clean``).
        baselines: which classical baselines to run (default: all registered).
    """
    best = restore_classical(degraded, [t for t in degradation_types if t in BEST_FOR])
    results = {DEGRADED: compute_metrics(clean, degraded)}
    for name in baselines if baselines is not None else classical_methods():
        results[name] = compute_metrics(clean, get_baseline(name)(degraded))
    results[BEST_CLASSICAL] = compute_metrics(clean, best)
    results[MODEL] = compute_metrics(clean, restored)
    return results, best


class _Acc:
    def __init__(self) -> None:
        self.n = 0
        self.psnr = 0.0
        self.ssim = 0.0
        self.accuracy = 0.0
        self.identical = 0

    def add(self, m: ImageMetrics) -> None:
        self.n += 1
        if math.isinf(m.psnr):
            self.identical += 1
        self.psnr += min(m.psnr, PSNR_CAP)
        self.ssim += m.ssim
        self.accuracy += m.accuracy

    def summary(self) -> MetricSummary:
        n = max(self.n, 1)
        return MetricSummary(
            n=self.n,
            psnr=self.psnr / n,
            ssim=self.ssim / n,
            accuracy=self.accuracy / n,
            identical=self.identical,
        )


class ReportBuilder:
    """Accumulates per-sample results; ``build`` turns them into an :class:`EvaluationReport`."""

    def __init__(self) -> None:
        self._overall: dict[str, _Acc] = {}
        self._per_type: dict[str, dict[str, _Acc]] = {}
        self._type_counts: dict[str, int] = {}
        self._methods: list[str] = []
        self.n = 0

    def add(self, degradation_types: Sequence[str], results: Mapping[str, ImageMetrics]) -> None:
        self.n += 1
        for method in results:
            if method not in self._methods:
                self._methods.append(method)
        for method, m in results.items():
            self._overall.setdefault(method, _Acc()).add(m)
        types = sorted(set(degradation_types)) or ["none"]
        for t in types:
            self._type_counts[t] = self._type_counts.get(t, 0) + 1
            section = self._per_type.setdefault(t, {})
            for method, m in results.items():
                section.setdefault(method, _Acc()).add(m)

    def build(
        self,
        *,
        model: str,
        dataset: str,
        split: str,
        dataset_version: str | None = None,
        architecture: str | None = None,
        history_epochs: int = 0,
    ) -> EvaluationReport:
        return EvaluationReport(
            model=model,
            architecture=architecture,
            dataset=dataset,
            dataset_version=dataset_version,
            split=split,
            n_samples=self.n,
            methods=list(self._methods),
            overall={k: a.summary() for k, a in self._overall.items()},
            per_type={
                t: TypeSection(
                    n=self._type_counts[t],
                    best_classical=BEST_FOR.get(t),
                    methods={k: a.summary() for k, a in accs.items()},
                )
                for t, accs in sorted(self._per_type.items())
            },
            history_epochs=history_epochs,
        )


# ------------------------------------------------------------------------------- markdown


def _table(methods: Sequence[str], summaries: Mapping[str, MetricSummary]) -> list[str]:
    lines = ["| method | n | PSNR (dB) | SSIM | accuracy |", "|---|---:|---:|---:|---:|"]
    for method in methods:
        s = summaries.get(method)
        if s is None:
            continue
        name = f"**{method}**" if method == MODEL else method
        lines.append(f"| {name} | {s.n} | {s.psnr:.2f} | {s.ssim:.4f} | {s.accuracy:.4f} |")
    return lines


def render_markdown(report: EvaluationReport) -> str:
    """``report.md``: headline, overall table, one table per degradation type, figures."""
    out = [
        f"# Evaluation of `{report.model}`",
        "",
        f"Dataset `{report.dataset}` (version {report.dataset_version or 'unknown'}), "
        f"split `{report.split}`, {report.n_samples} samples; architecture "
        f"`{report.architecture or 'unknown'}`; {report.created_at}.",
        "",
        "PSNR counts an exact restoration as "
        f"{PSNR_CAP:g} dB; accuracy is the share of pixel values within 8 levels of the clean "
        "image. `degraded` is the input itself; `best_classical` chains the per-type best "
        "classical restoration for each sample's degradation types.",
        "",
        "## Headline",
        "",
    ]
    out += [f"- {k}: {v:.4f}" for k, v in report.headline().items()]
    out += ["", "## Overall", "", *_table(report.methods, report.overall), ""]
    out += ["## Per degradation type", ""]
    for t, section in report.per_type.items():
        pick = f" (best classical: `{section.best_classical}`)" if section.best_classical else ""
        out += [f"### {t} — {section.n} samples{pick}", ""]
        out += [*_table(report.methods, section.methods), ""]
    if report.figures:
        out += ["## Figures", ""]
        out += [f"![{name}]({path})" for name, path in report.figures.items()]
        out.append("")
    return "\n".join(out)


# -------------------------------------------------------------------------------- figures

_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BLACK = (0, 0, 0)
_GREY = (190, 190, 190)


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def line_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xlabel: str = "epoch",
    size: tuple[int, int] = (480, 320),
) -> np.ndarray:
    """A line plot of named ``(x, y)`` series as an RGB ``uint8`` image of ``size`` (w, h)."""
    w, h = size
    img = np.full((h, w, 3), 255, dtype=np.uint8)
    left, right, top, bottom = 60, 15, 30, 40
    pw, ph = w - left - right, h - top - bottom
    cv2.putText(img, title, (left, 20), _FONT, 0.5, _BLACK, 1, cv2.LINE_AA)
    points = [
        (x, y) for s in series.values() for x, y in s if math.isfinite(x) and math.isfinite(y)
    ]
    cv2.rectangle(img, (left, top), (left + pw, top + ph), _BLACK, 1)
    if not points:
        cv2.putText(img, "no data", (left + 10, top + ph // 2), _FONT, 0.5, _BLACK, 1)
        return img
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        pad = abs(y0) * 0.05 or 0.5
        y0, y1 = y0 - pad, y1 + pad
    margin = (y1 - y0) * 0.05
    y0, y1 = y0 - margin, y1 + margin

    def to_px(x: float, y: float) -> tuple[int, int]:
        return (
            round(left + (x - x0) / (x1 - x0) * pw),
            round(top + ph - (y - y0) / (y1 - y0) * ph),
        )

    for ty in _nice_ticks(y0, y1):
        _, py = to_px(x0, ty)
        cv2.line(img, (left, py), (left + pw, py), _GREY, 1)
        cv2.putText(img, _fmt(ty), (4, py + 4), _FONT, 0.4, _BLACK, 1, cv2.LINE_AA)
    for tx in _nice_ticks(x0, x1, 6):
        px, _ = to_px(tx, y0)
        cv2.line(img, (px, top + ph), (px, top + ph + 4), _BLACK, 1)
        cv2.putText(img, _fmt(tx), (px - 8, top + ph + 18), _FONT, 0.4, _BLACK, 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (left + pw // 2 - 20, h - 6), _FONT, 0.45, _BLACK, 1, cv2.LINE_AA)
    for i, (name, s) in enumerate(series.items()):
        color = _PALETTE[i % len(_PALETTE)]
        pts = [to_px(x, y) for x, y in s if math.isfinite(x) and math.isfinite(y)]
        if len(pts) > 1:
            cv2.polylines(img, [np.array(pts, dtype=np.int32)], False, color, 2, cv2.LINE_AA)
        for p in pts:
            cv2.circle(img, p, 3, color, -1, cv2.LINE_AA)
        ly = top + 14 + 16 * i
        cv2.line(img, (left + pw - 120, ly - 4), (left + pw - 100, ly - 4), color, 2)
        cv2.putText(img, name, (left + pw - 95, ly), _FONT, 0.4, _BLACK, 1, cv2.LINE_AA)
    return img


def training_curves(history: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """2 x 2 panels: train/val loss, val PSNR, val SSIM and val accuracy per epoch."""

    def series(key: str) -> list[tuple[float, float]]:
        return [
            (float(r["epoch"]), float(r[key]))
            for r in history
            if key in r and isinstance(r[key], int | float)
        ]

    panels = [
        line_plot({"train": series("train_loss"), "val": series("val_loss")}, title="loss"),
        line_plot({"val": series("val_psnr")}, title="PSNR (dB)"),
        line_plot({"val": series("val_ssim")}, title="SSIM"),
        line_plot({"val": series("val_accuracy")}, title="accuracy"),
    ]
    return np.vstack([np.hstack(panels[:2]), np.hstack(panels[2:])])


def sample_grid(
    rows: Sequence[Sequence[np.ndarray]],
    labels: Sequence[str],
    *,
    cell: int = 128,
) -> np.ndarray:
    """Images side by side, one sample per row, with column labels; each cell ``cell`` px."""
    header = 24
    width = cell * len(labels)
    canvas = np.full((header + cell * max(1, len(rows)), width, 3), 255, dtype=np.uint8)
    for j, label in enumerate(labels):
        cv2.putText(canvas, label, (j * cell + 4, 16), _FONT, 0.45, _BLACK, 1, cv2.LINE_AA)
    for i, images in enumerate(rows):
        for j, image in enumerate(images):
            h, w = image.shape[:2]
            scale = cell / max(h, w)
            # Nearest when enlarging, so small samples show their pixels rather than a blur.
            interp = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
            resized = cv2.resize(
                image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=interp
            )
            y, x = header + i * cell, j * cell
            canvas[y : y + resized.shape[0], x : x + resized.shape[1]] = resized
    return canvas

"""The ``Enhancer`` deployment: holds the model and the face detector, batches forward passes.

Batching: the library's ``deepfix.enhance.enhance_whole``/``enhance_faces`` run unchanged, one
worker thread per request, with a stand-in network (:class:`_BatchingModel`) whose ``forward``
queues its tile tensor to the ``@serve.batch`` method :meth:`Enhancer._forward` on the
replica's event loop and waits. Tensors of the same size that arrive within
``batch_wait_timeout_s`` from concurrent requests are concatenated into one forward pass, so
the tiling, stitching and feathered paste-back are exactly the library's.

Alias following: with a ref such as ``deepfix-demo@production`` a thread watches the model's
record in etcd (``ModelStore.watch``) and a slower poll backs the watch up. When the alias
points elsewhere, the new version is loaded beside the old one and ``self._current`` is
replaced by one assignment. Each request takes the model it will use when it starts, and each
queued tensor carries it, so requests in flight finish on the version they started with.

Face detection runs here too (see docs/decisions/0002-face-detection-placement.md).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from torch import Tensor, nn

from deepfix.enhance import EnhanceOptions, enhance_faces, enhance_whole
from deepfix.faces import FaceBox, create_detector
from deepfix.model_store import ModelStore, ModelVersion, load_model_version, parse_ref
from deepfix.spec import FaceDetectionSpec
from serve.errors import ModelNotReady
from serve.metrics import EnhancerMetrics

__all__ = ["BatchConfig", "Enhancer", "EnhancerSettings", "TilingOptions"]

log = logging.getLogger(__name__)

# How long a request's thread waits for one batched forward before giving up; far above any
# sane batch time, it only keeps a wedged replica from pinning threads forever.
_FORWARD_TIMEOUT_S = 300.0


class BatchConfig(BaseModel):
    """The enhancer's ``user_config``: applied live by ``reconfigure``, no restart."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(8, ge=1, le=256, description="forward calls merged, at most")
    batch_wait_timeout_s: float = Field(
        0.05, ge=0.0, le=5.0, description="how long a first call waits for company"
    )


class TilingOptions(BaseModel):
    """``deepfix.enhance.EnhanceOptions`` as a typed, validated argument."""

    model_config = ConfigDict(extra="forbid")

    tile_size: int = Field(256, ge=8, le=4096)
    overlap: int = Field(32, ge=0)
    tiles_per_call: int = Field(8, ge=1, le=256, description="tiles one request sends at once")
    margin: float = Field(0.25, ge=0.0, le=2.0)
    feather: float = Field(0.15, gt=0.0, le=0.5)

    def options(self) -> EnhanceOptions:
        return EnhanceOptions(
            tile_size=self.tile_size,
            overlap=self.overlap,
            batch_size=self.tiles_per_call,
            margin=self.margin,
            feather=self.feather,
        )


class EnhancerSettings(BaseModel):
    """What an ``Enhancer`` replica is built from (the app builder fills it from ``AppArgs``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("deepfix-demo@production", description="NAME, NAME:VERSION or NAME@ALIAS")
    device: str = "cpu"
    face_detection: FaceDetectionSpec = Field(default_factory=FaceDetectionSpec)
    tiling: TilingOptions = Field(default_factory=TilingOptions)
    poll_s: float = Field(30.0, gt=0.0, description="re-resolve the ref this often as well")
    retry_s: float = Field(2.0, gt=0.0, description="retry a failed first load this often")
    # Threads start only when needed; Serve's max_ongoing_requests is the real bound, so this
    # only has to stay above it, whatever the config file sets it to.
    workers: int = Field(256, ge=1, le=4096, description="threads for requests in flight")
    warmup: bool = Field(True, description="run one small forward after each load")


@dataclass(frozen=True)
class _Loaded:
    """A loaded network and its version; replaced as a whole, never mutated."""

    module: nn.Module
    version: ModelVersion
    loaded_at: str


@dataclass(frozen=True)
class _Item:
    """One forward call queued for batching: the model its request pinned, and the input."""

    loaded: _Loaded
    x: Tensor


@dataclass
class _Stats:
    model_ms: float = 0.0  # forward time of the batches this request rode in
    wait_ms: float = 0.0  # time blocked on those batches: queueing + their forward
    batch_sizes: list[int] = field(default_factory=list)


class _BatchingModel(nn.Module):
    """Stands in for the network inside ``deepfix.enhance``: ``forward`` waits for a batch."""

    def __init__(self, submit: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self._submit = submit

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self._submit(x)
        return out


def _run_groups(items: list[_Item]) -> tuple[list[Tensor], float]:
    """Forward every item, one pass per (model, tensor size) group; outputs in item order."""
    start = time.perf_counter()
    groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault((id(item.loaded), tuple(item.x.shape[1:])), []).append(i)
    outputs: list[Tensor | None] = [None] * len(items)
    with torch.inference_mode():
        for indices in groups.values():
            module = items[indices[0]].loaded.module
            device = next(module.parameters()).device
            x = torch.cat([items[i].x for i in indices]).to(device)
            y = module(x).cpu()
            for i, part in zip(
                indices, y.split([items[i].x.shape[0] for i in indices]), strict=True
            ):
                outputs[i] = part
    return [o for o in outputs if o is not None], (time.perf_counter() - start) * 1000.0


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@serve.deployment(
    name="Enhancer",
    ray_actor_options={"num_cpus": 0.5},
    max_ongoing_requests=32,
)
class Enhancer:
    """Restores images with the model ``settings.model`` names and detects faces.

    Args:
        settings: model ref, device, detector and tiling; see :class:`EnhancerSettings`.
    """

    def __init__(self, settings: EnhancerSettings | dict[str, Any]) -> None:
        self.settings = EnhancerSettings.model_validate(settings)
        self._options = self.settings.tiling.options()
        self._name, self._pinned, _alias = parse_ref(self.settings.model)
        self._metrics = EnhancerMetrics()
        self._detector = create_detector(self.settings.face_detection)
        # OpenCV's cascade object is not documented as thread-safe; detection is a few per cent
        # of the model's time on the same image, so serialising it costs little.
        self._detector_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.settings.workers, thread_name_prefix="enhance")
        self._model_pool = ThreadPoolExecutor(1, thread_name_prefix="forward")
        self._batch = BatchConfig()
        self._observed: collections.deque[int] = collections.deque(maxlen=256)
        self._batches = 0  # since start, with _batched_calls: the mean batch size over a window
        self._batched_calls = 0
        self._in_flight = 0  # enhance requests inside this replica now (event-loop owned)
        self._current: _Loaded | None = None
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: Any = None
        self._store = ModelStore()
        self._last_error: str | None = None
        try:
            self._replica: str | None = serve.get_replica_context().replica_tag
        except Exception:  # built outside a replica (a unit test): no tag
            self._replica = None
        try:
            self._refresh()
        except Exception as exc:  # keep the replica up: /readyz says 503 until a load works
            self._last_error = str(exc)
            log.error("cannot load %s yet: %s", self.settings.model, exc)
        self._threads = [
            threading.Thread(target=self._poll_loop, name="model-poll", daemon=True),
        ]
        if self._pinned is None:
            self._threads.append(
                threading.Thread(target=self._watch_loop, name="model-watch", daemon=True)
            )
        for thread in self._threads:
            thread.start()

    # -- configuration ---------------------------------------------------------------------

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new :class:`BatchConfig` (Serve calls this on ``user_config`` changes)."""
        self._batch = BatchConfig.model_validate(user_config or {})
        # @serve.batch hangs these setters on the wrapper; its type stubs do not show them.
        self._forward.set_max_batch_size(self._batch.max_batch_size)  # type: ignore[attr-defined]
        self._forward.set_batch_wait_timeout_s(  # type: ignore[attr-defined]
            self._batch.batch_wait_timeout_s
        )
        log.info("batching: %s", self._batch)

    # -- following the alias ---------------------------------------------------------------

    def _refresh(self) -> bool:
        """Load the version the ref names now, if it is not the one served; True if swapped."""
        with self._refresh_lock:
            wanted = self._store.resolve(self.settings.model)
            current = self._current
            if current is not None and (
                current.version.ref == wanted.ref and current.version.sha256 == wanted.sha256
            ):
                return False
            module = load_model_version(wanted, self.settings.device)
            if self.settings.warmup:
                with torch.inference_mode():
                    module(torch.zeros(1, 3, 32, 32, device=self.settings.device))
            # One reference assignment: requests that already took the old model keep it.
            self._current = _Loaded(module, wanted, _now())
            self._last_error = None
            previous = current.version.version if current is not None else None
            self._metrics.serving(wanted.name, wanted.version, previous)
            log.info(
                "serving %s (was %s)", wanted.ref, current.version.ref if current else "nothing"
            )
            return True

    def _try_refresh(self) -> None:
        try:
            self._refresh()
        except Exception as exc:
            self._last_error = str(exc)
            log.warning("model refresh for %s failed: %s", self.settings.model, exc)

    def _watch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._watcher = self._store.watch(self._name)
                # Re-resolve once the watch is open: a move between the load and the watch's
                # start would otherwise be missed until the next poll.
                self._try_refresh()
                for _event in self._watcher:
                    if self._stop.is_set():
                        break
                    self._try_refresh()
            except Exception as exc:
                log.warning("watch on model %s broke: %s; reconnecting", self._name, exc)
            finally:
                if self._watcher is not None:
                    self._watcher.cancel()
            self._stop.wait(self.settings.retry_s)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            wait = self.settings.retry_s if self._current is None else self.settings.poll_s
            if self._stop.wait(wait):
                return
            if self._pinned is None or self._current is None:
                self._try_refresh()

    def __del__(self) -> None:
        self._stop.set()
        if getattr(self, "_watcher", None) is not None:
            self._watcher.cancel()
        for pool in (getattr(self, "_pool", None), getattr(self, "_model_pool", None)):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    # -- batching --------------------------------------------------------------------------

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _forward(self, items: list[_Item]) -> list[tuple[Tensor, float, int]]:
        loop = asyncio.get_running_loop()
        # The forward runs off the event loop so that the next batch can gather meanwhile.
        outputs, model_ms = await loop.run_in_executor(self._model_pool, _run_groups, items)
        self._observed.append(len(items))
        self._batches += 1
        self._batched_calls += len(items)
        self._metrics.batch(len(items), model_ms)
        return [(out, model_ms, len(items)) for out in outputs]

    def _model(self) -> _Loaded:
        loaded = self._current
        if loaded is None:
            reason = f": {self._last_error}" if self._last_error else ""
            raise ModelNotReady(f"model {self.settings.model} is not loaded yet{reason}")
        return loaded

    # -- requests --------------------------------------------------------------------------

    def _detect_sync(self, image: np.ndarray) -> list[FaceBox]:
        with self._detector_lock:
            return self._detector.detect(image)

    def _enhance_sync(
        self,
        loop: asyncio.AbstractEventLoop,
        loaded: _Loaded,
        image: np.ndarray,
        faces_only: bool,
    ) -> tuple[np.ndarray, dict[str, Any]]:
        stats = _Stats()

        def submit(x: Tensor) -> Tensor:
            waited = time.perf_counter()
            future = asyncio.run_coroutine_threadsafe(self._forward(_Item(loaded, x)), loop)
            out, model_ms, size = future.result(timeout=_FORWARD_TIMEOUT_S)
            stats.wait_ms += (time.perf_counter() - waited) * 1000.0
            stats.model_ms += model_ms
            stats.batch_sizes.append(size)
            return out

        model = _BatchingModel(submit)
        timings: dict[str, float] = {}
        faces: list[dict[str, Any]] = []
        start = time.perf_counter()
        if faces_only:
            boxes = self._detect_sync(image)
            timings["detect_ms"] = (time.perf_counter() - start) * 1000.0
            result = enhance_faces(model, image, boxes, self._options)
            out = result.image
            faces = [_box_dict(b) for b in boxes]
            self._metrics.faces_found("enhance", len(boxes))
        else:
            out = enhance_whole(model, image, self._options)
        timings["model_ms"] = stats.model_ms
        timings["queue_ms"] = max(0.0, stats.wait_ms - stats.model_ms)
        timings["enhance_ms"] = (time.perf_counter() - start) * 1000.0
        version = loaded.version
        info = {
            "model": self.settings.model,
            "name": version.name,
            "version": version.version,
            "ref": version.ref,
            "timings": timings,
            "faces": faces,
            "batch_sizes": stats.batch_sizes,
        }
        return out, info

    async def enhance(
        self, image: np.ndarray, faces_only: bool = False
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The restored image and ``{model, name, version, ref, timings, faces, batch_sizes}``.

        Raises:
            ModelNotReady: no model is loaded yet.
        """
        loaded = self._model()  # pinned for the whole request, whatever the alias does next
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        try:
            return await loop.run_in_executor(
                self._pool, partial(self._enhance_sync, loop, loaded, image, faces_only)
            )
        finally:
            self._in_flight -= 1

    async def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Faces in ``image``, best first, in full-resolution pixels."""
        loop = asyncio.get_running_loop()
        boxes = await loop.run_in_executor(self._pool, self._detect_sync, image)
        self._metrics.faces_found("detect", len(boxes))
        return boxes

    async def ready(self) -> bool:
        return self._current is not None

    async def info(self) -> dict[str, Any]:
        """The served model, its metrics and the batching state (recent batch sizes)."""
        loaded = self._current
        out: dict[str, Any] = {
            "ref": self.settings.model,
            "loaded": loaded is not None,
            "error": self._last_error,
            "replica": self._replica,
            "batching": {
                **self._batch.model_dump(),
                "recent_batch_sizes": list(self._observed),
                "batches": self._batches,
                "batched_calls": self._batched_calls,
                "in_flight": self._in_flight,
            },
            "face_detector": self.settings.face_detection.detector,
        }
        if loaded is not None:
            v = loaded.version
            out.update(
                name=v.name,
                version=v.version,
                metrics=v.metrics,
                architecture=v.architecture,
                dataset=v.dataset,
                created_at=v.created_at,
                loaded_at=loaded.loaded_at,
                sha256=v.sha256,
            )
        return out


def _box_dict(box: FaceBox) -> dict[str, Any]:
    return {"x": box.x, "y": box.y, "w": box.w, "h": box.h, "score": box.score}

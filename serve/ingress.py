"""The ``Ingress`` deployment: the FastAPI app of :mod:`serve.api` over the ``Enhancer``.

The app is built on the replica (``__serve_build_asgi_app__``) around a
:class:`ServePipeline`, which is also ``app.state.pipeline`` for the dataset web page:

- ``detect`` and ``enhance`` call the ``Enhancer`` deployment through its handle;
- ``degrade`` runs here, in a worker thread (degradations are cheap, pure NumPy/OpenCV);
- ``dataset`` reads a dataset spec from etcd through a watch-invalidated cache.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.concurrency import run_in_threadpool

from config_store.config import CachedConfig, Config
from deepfix.degradations import DegradationPipeline, sample_rng
from deepfix.faces import FaceBox
from deepfix.spec import DatasetSpec, DegradationSpec
from serve.api import Limits, build_api
from serve.errors import unwrap_remote
from serve.metrics import IngressMetrics

__all__ = ["PREVIEW_SAMPLE_ID", "Ingress", "ServePipeline"]

log = logging.getLogger(__name__)

# The sample id that seeds a preview's generator (``sample_rng(seed, id)``): one fixed id, so
# the same image, degradations and seed always give the same bytes.
PREVIEW_SAMPLE_ID = "serve-preview"


def _degrade(
    image: np.ndarray, specs: list[DegradationSpec], seed: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    result = DegradationPipeline.from_specs(specs)(image, sample_rng(seed, PREVIEW_SAMPLE_ID))
    return result.image, [dict(a) for a in result.applied]


class ServePipeline:
    """Detect, degrade and enhance for the routes and the web page's preview.

    Args:
        enhancer: handle of the ``Enhancer`` deployment.
        ready_timeout_s: how long ``ready`` waits for the enhancer to answer.
    """

    def __init__(self, enhancer: DeploymentHandle, *, ready_timeout_s: float = 2.0) -> None:
        self._enhancer = enhancer
        self._ready_timeout_s = ready_timeout_s
        self._datasets: CachedConfig | None = None

    async def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Face boxes in ``image``, best first."""
        boxes: list[FaceBox] = await unwrap_remote(self._enhancer.detect.remote(image))
        return boxes

    async def degrade(
        self, image: np.ndarray, specs: list[DegradationSpec], seed: int
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """``image`` degraded by ``specs`` (fired by their ``p``), and the applied params."""
        return await run_in_threadpool(_degrade, image, specs, seed)

    async def enhance(
        self, image: np.ndarray, faces_only: bool
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """The restored image and ``{model, name, version, ref, timings, faces, batch_sizes}``."""
        result: tuple[np.ndarray, dict[str, Any]] = await unwrap_remote(
            self._enhancer.enhance.remote(image, faces_only)
        )
        return result

    async def dataset(self, name: str) -> DatasetSpec:
        """The dataset spec ``name`` from etcd (``NotFound`` -> 404 in the handler)."""
        if self._datasets is None:
            self._datasets = Config().cached()
        doc = await run_in_threadpool(self._datasets.get, name)
        return DatasetSpec.model_validate(doc)

    async def model_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await unwrap_remote(self._enhancer.info.remote())
        return info

    async def ready(self) -> bool:
        try:
            ok: bool = await asyncio.wait_for(
                unwrap_remote(self._enhancer.ready.remote()), self._ready_timeout_s
            )
        except Exception as exc:  # starting, overloaded or gone: not ready either way
            log.info("enhancer not ready: %r", exc)
            return False
        return ok

    def close(self) -> None:
        if self._datasets is not None:
            self._datasets.close()


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
)
@serve.ingress()
class Ingress:
    """HTTP entry of the application; see :func:`serve.api.build_api` for the routes.

    Args:
        enhancer: handle of the ``Enhancer`` deployment (bound by the app builder).
        limits: upload and pixel caps.
    """

    def __init__(self, enhancer: DeploymentHandle, limits: Limits | dict[str, Any]) -> None:
        self.limits = Limits.model_validate(limits)
        self.pipeline = ServePipeline(enhancer)
        self.metrics = IngressMetrics()

    def __serve_build_asgi_app__(self) -> FastAPI:
        # Built on the replica after __init__, so the routes close over this replica's pipeline
        # and app.state.pipeline is the object the web page calls.
        return build_api(self.pipeline, self.limits, metrics=self.metrics)

    def __del__(self) -> None:
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            pipeline.close()

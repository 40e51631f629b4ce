"""The typed application builder: ``serve run serve/config.yaml`` (``serve.app:build_app``).

``AppArgs`` is validated by Ray from the ``args`` of the config file (or passed in Python:
``serve.run(build_app(AppArgs(...)))``). Deployment options written in the config file's
``deployments`` section override the ones set here, as usual in Serve.
"""

# No ``from __future__ import annotations`` here: Ray reads the builder's parameter annotation
# at run time to validate ``args`` into ``AppArgs``, and a string annotation would defeat that.

from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.serve import Application, Deployment

from deepfix.spec import FaceDetectionSpec
from serve.api import Limits
from serve.enhancer import BatchConfig, Enhancer, EnhancerSettings, TilingOptions
from serve.ingress import Ingress

__all__ = ["AppArgs", "Scaling", "build_app"]


class Scaling(BaseModel):
    """Replicas, concurrency and CPU share of one deployment."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0.0, description="autoscaling target")
    max_ongoing_requests: int = Field(32, ge=1, description="requests one replica takes at once")
    max_queued_requests: int = Field(
        -1, ge=-1, description="callers queued beyond that before 503 (-1: no limit)"
    )
    num_cpus: float = Field(0.5, gt=0.0)

    @model_validator(mode="after")
    def _bounds(self) -> "Scaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self

    def options(self) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options``."""
        return {
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "initial_replicas": max(1, self.min_replicas),
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
            },
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "ray_actor_options": {"num_cpus": self.num_cpus},
        }


class AppArgs(BaseModel):
    """Arguments of :func:`build_app` (the ``args`` of ``serve/config.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "deepfix-demo@production",
        description="model to serve: NAME (latest), NAME:VERSION (pinned) or NAME@ALIAS (followed)",
    )
    device: str = Field("cpu", description="torch device of the enhancer, e.g. cuda")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per enhancer replica")
    limits: Limits = Field(default_factory=Limits)
    batching: BatchConfig = Field(default_factory=BatchConfig)
    tiling: TilingOptions = Field(default_factory=TilingOptions)
    face_detection: FaceDetectionSpec = Field(default_factory=FaceDetectionSpec)
    model_poll_s: float = Field(30.0, gt=0.0, description="re-resolve the ref this often too")
    enhancer: Scaling = Field(
        default_factory=lambda: Scaling(
            min_replicas=1,
            max_replicas=2,
            target_ongoing_requests=8,
            max_ongoing_requests=32,
            max_queued_requests=64,
            num_cpus=0.5,
        )
    )
    ingress: Scaling = Field(
        default_factory=lambda: Scaling(
            min_replicas=1,
            max_replicas=1,
            target_ongoing_requests=32,
            max_ongoing_requests=128,
            max_queued_requests=256,
            num_cpus=0.25,
        )
    )


def build_app(args: AppArgs) -> Application:
    """The ``Ingress`` -> ``Enhancer`` application described by ``args``."""
    args = AppArgs.model_validate(args)  # a plain dict when called from Python
    settings = EnhancerSettings(
        model=args.model,
        device=args.device,
        face_detection=args.face_detection,
        tiling=args.tiling,
        poll_s=args.model_poll_s,
        workers=max(256, args.enhancer.max_ongoing_requests),
    )
    enhancer_options = args.enhancer.options()
    enhancer_options["ray_actor_options"]["num_gpus"] = args.num_gpus
    # @serve.deployment returns a Deployment; its stubs keep the class type for mypy.
    enhancer = (
        cast(Deployment, Enhancer)
        .options(**enhancer_options, user_config=args.batching.model_dump())
        .bind(settings.model_dump(mode="json"))
    )
    ingress = cast(Deployment, Ingress).options(**args.ingress.options())
    return ingress.bind(enhancer, args.limits.model_dump())

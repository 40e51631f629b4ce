"""Enhance a folder (or any source) of images with a registered model, using Ray Data.

    python -m jobs.enhance --model REF --input URI --output URI [--faces-only]
        [--tile-size 256] [--overlap 32] [--batch-size 4] [--concurrency 1] [--format png]

Recipe: list the input with :func:`deepfix.sources.list_images`, resolve the model in the
store once, then ``map_batches`` an actor pool of :class:`ImageEnhancer` (a callable class:
the model is loaded once per actor, from the resolved version's artifacts with its SHA-256
checked; GPU when the cluster has one, a fraction of a CPU otherwise). Each actor reads,
decodes, enhances and writes its images and returns one manifest row per image; a file that
cannot be read or decoded becomes a row with ``status="error"`` and a reason, and the job goes
on. ``manifest.json`` (input, output, faces, status, reason per image, and the counts) is
written next to the outputs.

Whole images are enhanced tile-wise with overlap and stitched seamlessly; ``--faces-only``
enhances only detected faces and pastes them back through a feathered mask
(:mod:`deepfix.enhance`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import PurePosixPath
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from config_store import ConfigStore
from deepfix.enhance import EnhanceOptions, enhance_faces, enhance_many
from deepfix.errors import ImageError, ModelStoreError, SourceError
from deepfix.io import decode, encode
from deepfix.model_store import (
    ModelStore,
    ModelVersion,
    join_uri,
    load_model_version,
    write_uri,
)
from deepfix.sources import list_images, read_item
from deepfix.spec import FaceDetectionSpec
from jobs._exit import run_reporting_errors

__all__ = ["EnhanceArgs", "ImageEnhancer", "Manifest", "ManifestEntry", "main", "run"]

logger = logging.getLogger(__name__)

Status = Literal["ok", "error", "rejected"]


class EnhanceArgs(BaseModel):
    """Arguments of ``python -m jobs.enhance``."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: str
    output: str
    faces_only: bool = False
    tile_size: int = Field(256, ge=8)
    overlap: int = Field(32, ge=0)
    batch_size: int = Field(4, ge=1, description="images per actor call")
    concurrency: int = Field(1, ge=1, description="actors")
    num_cpus: float = Field(0.5, gt=0, description="CPUs per actor when there is no GPU")
    gpu: bool | None = Field(None, description="None: use a GPU per actor if the cluster has")
    format: Literal["png", "jpeg", "webp"] = "png"
    detector: str = "haar"
    min_face: int = Field(24, ge=8)
    margin: float = Field(0.25, ge=0)
    image_type: str = "any"
    allow_private: bool = False


class ManifestEntry(BaseModel):
    input: str
    output: str | None = None
    faces: int | None = Field(None, description="faces enhanced (faces-only mode)")
    status: Status
    reason: str | None = None
    detail: str = ""


class Manifest(BaseModel):
    model: str
    input: str
    output: str
    faces_only: bool
    counts: dict[str, int]
    items: list[ManifestEntry]


def _output_name(path: str, fmt: str) -> str:
    """Relative output path for a source item: same folders, new extension."""
    rel = urlparse(path).path if "://" in path else path
    parts = [p for p in PurePosixPath(rel).parts if p not in ("/", "..", ".")]
    stem = PurePosixPath(*parts) if parts else PurePosixPath("image")
    return str(stem.with_suffix("." + ("jpg" if fmt == "jpeg" else fmt)))


class ImageEnhancer:
    """Ray Data UDF: loads the model once, then enhances and writes a batch of source items.

    Args:
        version: the resolved :class:`ModelVersion` dump (actors need no etcd).
        args: the job's arguments dump.
    """

    def __init__(self, version: dict[str, Any], args: dict[str, Any]) -> None:
        import torch

        self.args = EnhanceArgs.model_validate(args)
        self.version = ModelVersion.model_validate(version)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model_version(self.version, self.device)
        self.amp = self.device == "cuda"
        self.options = EnhanceOptions(
            tile_size=self.args.tile_size,
            overlap=self.args.overlap,
            margin=self.args.margin,
        )
        self.detector = None
        if self.args.faces_only:
            from deepfix.faces import create_detector

            self.detector = create_detector(
                FaceDetectionSpec(detector=self.args.detector, min_size=self.args.min_face)
            )

    def _read(self, path: str) -> np.ndarray:
        data = read_item(
            self.args.input,
            path,
            image_type=self.args.image_type,
            allow_private=self.args.allow_private,
        )
        return decode(data)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        rows: list[ManifestEntry] = []
        images: list[tuple[int, np.ndarray]] = []
        for path in batch["path"]:
            path = str(path)
            try:
                images.append((len(rows), self._read(path)))
                rows.append(ManifestEntry(input=path, status="ok"))
            except ImageError as exc:
                rows.append(
                    ManifestEntry(input=path, status="error", reason=exc.reason, detail=str(exc))
                )
            except (SourceError, OSError) as exc:
                rows.append(
                    ManifestEntry(input=path, status="error", reason="unreadable", detail=str(exc))
                )
        if self.detector is not None:
            results = []
            for i, image in images:
                boxes = self.detector.detect(image)
                done = enhance_faces(self.model, image, boxes, self.options, amp=self.amp)
                rows[i].faces = len(done.regions)
                results.append(done.image)
        else:
            results = enhance_many(self.model, [im for _, im in images], self.options, amp=self.amp)
        for (i, _), out in zip(images, results, strict=True):
            name = _output_name(rows[i].input, self.args.format)
            try:
                write_uri(join_uri(self.args.output, name), encode(out, self.args.format))
                rows[i].output = name
            except (ModelStoreError, ValueError) as exc:
                rows[i].status, rows[i].reason, rows[i].detail = "error", "write_failed", str(exc)
        dumped = [r.model_dump() for r in rows]
        return {key: [d[key] for d in dumped] for key in ManifestEntry.model_fields}


def _use_gpu(args: EnhanceArgs) -> bool:
    if args.gpu is not None:
        return args.gpu
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) > 0


def run(args: EnhanceArgs, *, store: ConfigStore | None = None) -> Manifest:
    """Enhance every image of ``args.input`` into ``args.output``; returns the manifest."""
    import ray.data

    version = ModelStore(store).resolve(args.model)
    listing = list_images(args.input, image_type=args.image_type, allow_private=args.allow_private)
    items = [
        ManifestEntry(input=r.path, status="rejected", reason=r.reason, detail=r.detail)
        for r in listing.rejected
    ]
    if listing.items:
        gpu = _use_gpu(args)
        ds = ray.data.from_items([{"path": it.path} for it in listing.items])
        out = ds.map_batches(
            ImageEnhancer,
            fn_constructor_kwargs={
                "version": version.model_dump(mode="json"),
                "args": args.model_dump(mode="json"),
            },
            batch_size=args.batch_size,
            concurrency=args.concurrency,
            num_gpus=1 if gpu else 0,
            num_cpus=1 if gpu else args.num_cpus,
        )
        items += [ManifestEntry.model_validate(row) for row in out.take_all()]
    items.sort(key=lambda e: e.input)
    counts = {s: sum(e.status == s for e in items) for s in ("ok", "error", "rejected")}
    manifest = Manifest(
        model=version.ref,
        input=args.input,
        output=args.output,
        faces_only=args.faces_only,
        counts=counts,
        items=items,
    )
    write_uri(join_uri(args.output, "manifest.json"), manifest.model_dump_json(indent=2).encode())
    logger.info("enhanced %s with %s: %s", args.input, version.ref, counts)
    return manifest


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.enhance", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="NAME, NAME:VERSION or NAME@ALIAS")
    p.add_argument("--input", required=True, help="folder, archive, file://, http(s)://, s3://")
    p.add_argument("--output", required=True, help="folder or s3:// / gs:// prefix")
    p.add_argument("--faces-only", action="store_true", help="enhance detected faces only")
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--concurrency", type=int, default=1, help="actors")
    p.add_argument("--num-cpus", type=float, default=0.5, help="per actor without GPU")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--format", choices=["png", "jpeg", "webp"], default="png")
    p.add_argument("--detector", default="haar")
    p.add_argument("--min-face", type=int, default=24)
    p.add_argument("--margin", type=float, default=0.25)
    p.add_argument("--image-type", default="any")
    p.add_argument("--allow-private", action="store_true", help="allow private http hosts")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = EnhanceArgs.model_validate(vars(_parser().parse_args(argv)))
    import ray

    ray.init(ignore_reinit_error=True)

    def body() -> int:
        manifest = run(args)
        print(json.dumps({"output": args.output, **manifest.counts}))
        return 0

    return run_reporting_errors(body)


if __name__ == "__main__":
    sys.exit(main())

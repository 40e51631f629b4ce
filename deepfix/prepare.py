"""Dataset preparation, one image at a time: the pure logic behind ``jobs.prepare``.

This module knows nothing about Ray, so the Ray Data job and a plain serial loop (the
benchmark's baseline) run exactly the same code. For one listed image a :class:`Preparer`

1. reads the bytes (``deepfix.sources.read_item``) and decodes them with the spec's
   ``image_type`` caps (``deepfix.io.decode``);
2. applies the face policy (``deepfix.faces.face_samples``): one crop per detected face, a
   centre crop (``on_missing="whole"`` or detection off), or nothing (``skip``);
3. cuts each crop into tiles when ``spec.crop`` asks for them (``deepfix.tiles.tile``);
4. gives every sample a stable id (:func:`sample_id`), a split (:func:`assign_split`) and a
   degraded twin from ``DegradationPipeline`` driven by ``sample_rng(seed, id)``, so that any
   sample replays bit-for-bit (:func:`replay_degraded`);
5. encodes clean and degraded as PNG.

A bad file never raises out of :meth:`Preparer.prepare`: a ``deepfix`` ``ImageError`` or
``SourceError`` (or an OpenCV failure on a decodable image) becomes a *rejected* outcome with
a machine-readable reason, so a batch job can report per file and go on.

Batches travel as one Arrow table (:data:`BATCH_SCHEMA`) holding two kinds of row: ``sample``
rows (the columns of :data:`SAMPLE_SCHEMA`) and exactly one ``image`` row per input image
(policy, face count, source size, reject reason). :func:`split_batch` separates them; the
image rows are small and feed :class:`PreparedStats`, the record kept in etcd beside the spec.

Split assignment hashes (seed, source path, face index) and deliberately leaves the tile
index out: all tiles of one face land in the same split, so no face leaks from train to test.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from config_store.collections import CollectionSchema
from config_store.settings import deepfix_home
from deepfix.degradations import AppliedDegradation, DegradationPipeline, sample_rng
from deepfix.errors import DeepfixError, ImageError, SourceError, UnsafeSource
from deepfix.faces import FaceBox, FaceDetector, create_detector, face_samples
from deepfix.io import DecodeLimits, decode, encode
from deepfix.sources import REJECT_REASONS, Rejected, SourceLimits, read_item
from deepfix.spec import DatasetSpec, SplitSpec
from deepfix.tiles import tile

__all__ = [
    "BATCH_SCHEMA",
    "IMAGE_COLUMNS",
    "PREPARED_COLLECTION",
    "REJECT_SCHEMA",
    "SAMPLE_SCHEMA",
    "SPLITS",
    "STAGES",
    "BlockSummary",
    "FacesPerImage",
    "ImageOutcome",
    "OutputLayout",
    "PreparedStats",
    "Preparer",
    "Sample",
    "SizeStats",
    "UnaccountedImages",
    "assign_split",
    "check_accounted",
    "outcomes_to_table",
    "prepared_stats",
    "reject_reason",
    "rejects_table",
    "replay_degraded",
    "sample_id",
    "split_batch",
    "summarize_block",
    "version_name",
    "write_json",
    "write_table",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
ImagePolicy = Literal["faces", "whole", "skipped", "disabled", "rejected"]
STAGES = ("read", "decode", "detect", "crop", "degrade", "encode")
_DETAIL_CHARS = 500  # a reject's detail is a message for people, not a log dump

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("clean", pa.binary(), nullable=False),
        pa.field("degraded", pa.binary(), nullable=False),
        pa.field("params", pa.string(), nullable=False),
        pa.field("degradation_types", pa.list_(pa.string()), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("face_index", pa.int32(), nullable=False),
        pa.field("tile_index", pa.int32()),
        pa.field("box", pa.list_(pa.int32())),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
    ]
)
"""One row per training pair: ``clean`` and ``degraded`` are PNG bytes, ``params`` the JSON
list of applied degradations, ``box`` the detected face ``[x, y, w, h]`` in source pixels (null
for a centre crop), ``tile_index`` null when the spec does not tile."""

REJECT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)
"""One row per file that yielded nothing because it is bad (not for ``skip``ped faceless ones)."""

IMAGE_COLUMNS = (
    "source",
    "policy",
    "faces",
    "samples",
    "source_width",
    "source_height",
    "reason",
    "detail",
)
"""The columns of the per-image rows that :func:`split_batch` returns beside the samples."""
_IMAGE_FIELDS = [
    pa.field("kind", pa.string(), nullable=False),
    pa.field("policy", pa.string()),
    pa.field("faces", pa.int32()),
    pa.field("samples", pa.int32()),
    pa.field("source_width", pa.int32()),
    pa.field("source_height", pa.int32()),
    pa.field("reason", pa.string()),
    pa.field("detail", pa.string()),
]
# Sample columns become nullable here because image rows leave them empty.
BATCH_SCHEMA = pa.schema([f.with_nullable(True) for f in SAMPLE_SCHEMA] + _IMAGE_FIELDS)
"""What a batch UDF returns: ``kind="sample"`` rows and one ``kind="image"`` row per input."""


# ------------------------------------------------------------------------------ ids, splits


def sample_id(source: str, face_index: int, tile_index: int | None = None) -> str:
    """A short stable id: SHA-1 of the source path, face index and tile index (16 hex digits).

    64 bits keep the chance of any collision below 1e-7 up to ~1.9 million samples per
    dataset; the id also seeds the sample's degradation stream (``sample_rng``).
    """
    tile_part = "" if tile_index is None else str(tile_index)
    key = f"{source}\x00{face_index}\x00{tile_part}".encode()
    return hashlib.sha1(key, usedforsecurity=False).hexdigest()[:16]


def assign_split(seed: int, source: str, face_index: int, fractions: SplitSpec) -> Split:
    """``train``, ``val`` or ``test`` for a face, stable across runs, machines and workers.

    SHA-256 of (seed, source path, face index) gives a uniform number in [0, 1), compared with
    the cumulative fractions; changing the seed reshuffles. The tile index is left out on
    purpose so that the tiles of one face never straddle two splits.
    """
    digest = hashlib.sha256(f"{seed}\x00{source}\x00{face_index}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < fractions.train:
        return "train"
    if u < fractions.train + fractions.val:
        return "val"
    return "test"


def reject_reason(exc: BaseException) -> str:
    """The short tag recorded for a file that failed: the error's ``reason`` for image errors,
    the leading tag of an ``UnsafeSource`` message (``symlink_outside_root: ...``) when it is a
    known one, ``unsafe``/``unreadable`` for other source errors, ``opencv_error`` otherwise."""
    if isinstance(exc, ImageError):
        return exc.reason
    if isinstance(exc, UnsafeSource):
        tag = str(exc).split(":", 1)[0]
        return tag if tag in REJECT_REASONS else "unsafe"
    if isinstance(exc, SourceError):
        return "unreadable"
    return "opencv_error"


def replay_degraded(
    clean: np.ndarray, *, seed: int, sample_id: str, pipeline: DegradationPipeline
) -> tuple[np.ndarray, list[AppliedDegradation]]:
    """Degrade a clean sample exactly as preparation did: same pipeline, ``sample_rng(seed,
    sample_id)``. Decoding a stored ``clean`` PNG and calling this gives the stored
    ``degraded`` pixels back bit-for-bit (see ``deepfix.degradations`` for the scope)."""
    return pipeline(clean, sample_rng(seed, sample_id))


# ---------------------------------------------------------------------------- per image


@dataclass(frozen=True)
class Sample:
    """One training pair, ready to become a row of :data:`SAMPLE_SCHEMA`."""

    id: str
    split: Split
    clean: bytes
    degraded: bytes
    applied: list[AppliedDegradation]
    source: str
    face_index: int
    tile_index: int | None
    box: tuple[int, int, int, int] | None
    height: int
    width: int


@dataclass(frozen=True)
class ImageOutcome:
    """What became of one listed image: its samples, or the reason it yielded none."""

    source: str
    policy: ImagePolicy
    samples: list[Sample] = field(default_factory=list)
    faces: int = 0
    source_width: int | None = None
    source_height: int | None = None
    reason: str | None = None
    detail: str | None = None


class _TimedDetector:
    """Wraps a detector to charge its time to the ``detect`` stage of a ``Preparer``."""

    def __init__(self, inner: FaceDetector, timings: dict[str, float]) -> None:
        self.inner = inner
        self.timings = timings

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        start = time.perf_counter()
        try:
            return self.inner.detect(image)
        finally:
            self.timings["detect"] += time.perf_counter() - start


class Preparer:
    """Turns listed images of one dataset spec into samples; build once per worker process.

    The face detector and degradation pipeline are built in ``__init__`` (OpenCV objects are
    per process). ``timings`` accumulates seconds per stage (:data:`STAGES`) over every call,
    which is how the benchmark measures where the time goes.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        *,
        allow_private: bool = False,
        decode_limits: DecodeLimits | None = None,
        source_limits: SourceLimits | None = None,
    ) -> None:
        """Build the detector and the degradation pipeline.

        Args:
            spec: the dataset spec; its ``source`` is where ``prepare`` reads paths from.
            allow_private: let an http(s) source resolve to private addresses (local CLI/job).
            decode_limits: pixel and byte caps; the spec's ``image_type`` narrows the formats.
            source_limits: caps for reading the source.

        Raises:
            RegistryError, DeepfixError: the spec's detector cannot be built.
        """
        self.spec = spec
        self.allow_private = allow_private
        self.decode_limits = (decode_limits or DecodeLimits()).for_image_type(spec.image_type)
        self.source_limits = source_limits or SourceLimits()
        self.out_hw = (spec.height, spec.width)
        self.tile_hw = spec.crop.size
        self.pipeline = DegradationPipeline.from_specs(spec.degradations)
        self.timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._detector = (
            _TimedDetector(create_detector(spec.face_detection), self.timings)
            if spec.face_detection.enabled
            else None
        )

    @contextlib.contextmanager
    def _stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] += time.perf_counter() - start

    def read(self, path: str) -> bytes:
        """The bytes of one listed item of ``spec.source`` (the source is opened once per
        process). Raises ``SourceError`` or ``ImageTooLarge``."""
        return read_item(
            self.spec.source,
            path,
            image_type=self.spec.image_type,
            allow_private=self.allow_private,
            limits=self.source_limits,
        )

    def prepare(self, path: str, data: bytes | None = None) -> ImageOutcome:
        """All samples of one image, or a rejected outcome; never raises for a bad file.

        Args:
            path: the item's path in the source listing (also recorded as ``source``).
            data: its bytes when already read; None reads them with :meth:`read`.
        """
        try:
            return self._prepare(path, data)
        except (ImageError, SourceError, cv2.error) as exc:
            reason = reject_reason(exc)
            logger.debug("rejected %s: %s: %s", path, reason, exc)
            return ImageOutcome(
                source=path, policy="rejected", reason=reason, detail=str(exc)[:_DETAIL_CHARS]
            )

    def _prepare(self, path: str, data: bytes | None) -> ImageOutcome:
        with self._stage("read"):
            raw = self.read(path) if data is None else data
        with self._stage("decode"):
            image = decode(raw, limits=self.decode_limits)
        height, width = image.shape[:2]
        # face_samples detects (charged to "detect" by _TimedDetector) and then crops; the
        # crop stage gets the rest of its time below.
        detect_before = self.timings["detect"]
        start = time.perf_counter()
        result = face_samples(image, self._detector, self.spec.face_detection, self.out_hw)
        self.timings["crop"] += (
            time.perf_counter() - start - (self.timings["detect"] - detect_before)
        )
        samples: list[Sample] = []
        for face_index, crop in enumerate(result.samples):
            box = result.boxes[face_index] if result.policy_used == "faces" else None
            split = assign_split(self.spec.seed, path, face_index, self.spec.split)
            for tile_index, piece in self._pieces(crop):
                samples.append(self._sample(piece, path, face_index, tile_index, box, split))
        return ImageOutcome(
            source=path,
            policy=result.policy_used,
            samples=samples,
            faces=len(result.boxes),
            source_width=width,
            source_height=height,
        )

    def _pieces(self, crop: np.ndarray) -> list[tuple[int | None, np.ndarray]]:
        if self.tile_hw is None:
            return [(None, crop)]
        with self._stage("crop"):
            tiles, _grid = tile(crop, self.tile_hw)
        return list(enumerate(tiles))

    def _sample(
        self,
        clean: np.ndarray,
        path: str,
        face_index: int,
        tile_index: int | None,
        box: FaceBox | None,
        split: Split,
    ) -> Sample:
        sid = sample_id(path, face_index, tile_index)
        with self._stage("degrade"):
            degraded, applied = replay_degraded(
                clean, seed=self.spec.seed, sample_id=sid, pipeline=self.pipeline
            )
        with self._stage("encode"):
            clean_png, degraded_png = encode(clean), encode(degraded)
        return Sample(
            id=sid,
            split=split,
            clean=clean_png,
            degraded=degraded_png,
            applied=applied,
            source=path,
            face_index=face_index,
            tile_index=tile_index,
            box=None if box is None else (box.x, box.y, box.w, box.h),
            height=int(clean.shape[0]),
            width=int(clean.shape[1]),
        )

    def prepare_batch(self, paths: Iterable[str]) -> pa.Table:
        """:meth:`prepare` every path; one :data:`BATCH_SCHEMA` table of samples and image rows."""
        return outcomes_to_table(self.prepare(p) for p in paths)


# ------------------------------------------------------------------------ tables and shards


def outcomes_to_table(outcomes: Iterable[ImageOutcome]) -> pa.Table:
    """Sample rows then one image row per outcome, as a :data:`BATCH_SCHEMA` table.

    Columns are built as Python lists and converted once, column by column: no pandas, and the
    PNG bytes are copied exactly once into the Arrow buffers.
    """
    cols: dict[str, list[Any]] = {name: [] for name in BATCH_SCHEMA.names}
    images: list[ImageOutcome] = []
    for outcome in outcomes:
        images.append(outcome)
        for s in outcome.samples:
            cols["id"].append(s.id)
            cols["split"].append(s.split)
            cols["clean"].append(s.clean)
            cols["degraded"].append(s.degraded)
            cols["params"].append(json.dumps(s.applied, separators=(",", ":")))
            cols["degradation_types"].append([a["type"] for a in s.applied])
            cols["source"].append(s.source)
            cols["face_index"].append(s.face_index)
            cols["tile_index"].append(s.tile_index)
            cols["box"].append(None if s.box is None else list(s.box))
            cols["height"].append(s.height)
            cols["width"].append(s.width)
    n_samples = len(cols["id"])
    for name in IMAGE_COLUMNS[1:]:
        cols[name] = [None] * n_samples
    cols["kind"] = ["sample"] * n_samples
    sample_only = [n for n in SAMPLE_SCHEMA.names if n != "source"]
    for img in images:
        for name in sample_only:
            cols[name].append(None)
        cols["source"].append(img.source)
        cols["kind"].append("image")
        cols["policy"].append(img.policy)
        cols["faces"].append(img.faces)
        cols["samples"].append(len(img.samples))
        cols["source_width"].append(img.source_width)
        cols["source_height"].append(img.source_height)
        cols["reason"].append(img.reason)
        cols["detail"].append(img.detail)
    return pa.table(cols, schema=BATCH_SCHEMA)


def split_batch(batch: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(sample rows as :data:`SAMPLE_SCHEMA`, image rows with :data:`IMAGE_COLUMNS`) of a
    :data:`BATCH_SCHEMA` table."""
    is_sample = pc.equal(batch["kind"], "sample")
    samples = batch.filter(is_sample).select(SAMPLE_SCHEMA.names).cast(SAMPLE_SCHEMA)
    images = batch.filter(pc.invert(is_sample)).select(list(IMAGE_COLUMNS))
    return samples, images


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    # A bare path means the local disk; pyarrow wants it absolute. URIs (file://, s3://,
    # gs://) go to pyarrow's own filesystems, so nothing here assumes a local output.
    if "://" not in uri:
        uri = os.path.abspath(os.path.expanduser(uri))
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def write_table(table: pa.Table, directory_uri: str, name: str) -> str:
    """Write ``table`` as the Parquet file ``name`` under a local path or URI; its URI.

    PNG columns are stored uncompressed (PNG already is); the rest use Snappy.
    """
    fs, directory = _filesystem(directory_uri)
    fs.create_dir(directory, recursive=True)
    codecs = {
        col: ("NONE" if pa.types.is_binary(table.schema.field(col).type) else "SNAPPY")
        for col in table.column_names
    }
    pq.write_table(table, _join(directory, name), filesystem=fs, compression=codecs)
    return _join(directory_uri, name)


def write_json(data: dict[str, Any], uri: str) -> None:
    """Write a JSON document to a local path or URI (parents created)."""
    fs, path = _filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")


def rejects_table(images: pa.Table, listing_rejected: Sequence[Rejected]) -> pa.Table:
    """Every bad file: rejected image rows, then entries the source listing left out."""
    bad = images.filter(pc.equal(images["policy"], "rejected"))
    return pa.table(
        {
            "source": bad["source"].to_pylist() + [r.path for r in listing_rejected],
            "reason": bad["reason"].to_pylist() + [r.reason for r in listing_rejected],
            "detail": [d or "" for d in bad["detail"].to_pylist()]
            + [r.detail or REJECT_REASONS.get(r.reason, "") for r in listing_rejected],
        },
        schema=REJECT_SCHEMA,
    )


@dataclass
class BlockSummary:
    """What one written block reports back to the driver: never pixels, only counts."""

    samples: int = 0
    splits: Counter[str] = field(default_factory=Counter)
    degradations: Counter[str] = field(default_factory=Counter)
    images: pa.Table = field(
        default_factory=lambda: BATCH_SCHEMA.empty_table().select(list(IMAGE_COLUMNS))
    )
    files: list[str] = field(default_factory=list)

    @classmethod
    def merge(cls, parts: Iterable[BlockSummary]) -> BlockSummary:
        out = cls()
        tables = [out.images]
        for p in parts:
            out.samples += p.samples
            out.splits.update(p.splits)
            out.degradations.update(p.degradations)
            out.files.extend(p.files)
            tables.append(p.images)
        out.images = pa.concat_tables(tables)
        return out


def summarize_block(samples: pa.Table, images: pa.Table, files: Sequence[str]) -> BlockSummary:
    """Counts of one block's sample rows, plus its image rows and written shard files."""
    types = pc.list_flatten(samples["degradation_types"]).to_pylist()
    return BlockSummary(
        samples=samples.num_rows,
        splits=Counter(samples["split"].to_pylist()),
        degradations=Counter(types),
        images=images,
        files=list(files),
    )


# ------------------------------------------------------------------------- stats and layout


def version_name(spec_revision: int, now: datetime | None = None) -> str:
    """``v<UTC yyyymmddHHMMSS>-r<spec revision>``: sortable, and names the spec it came from."""
    now = now or datetime.now(UTC)
    return f"v{now.astimezone(UTC):%Y%m%d%H%M%S}-r{spec_revision}"


@dataclass(frozen=True)
class OutputLayout:
    """Where one prepared version lives: ``<root>/<version>/{samples/,rejects/,manifest.json}``."""

    root: str
    version: str

    @classmethod
    def default(cls, dataset: str, version: str, root: str | None = None) -> OutputLayout:
        """Under ``root``, or ``$DEEPFIX_HOME/datasets/<dataset>`` when root is None."""
        return cls(root or str(deepfix_home() / "datasets" / dataset), version)

    @property
    def version_uri(self) -> str:
        return _join(self.root, self.version)

    @property
    def samples_uri(self) -> str:
        return _join(self.version_uri, "samples")

    @property
    def rejects_uri(self) -> str:
        return _join(self.version_uri, "rejects")

    @property
    def manifest_uri(self) -> str:
        return _join(self.version_uri, "manifest.json")


class SizeStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min: int
    median: float
    max: int


class FacesPerImage(BaseModel):
    """Over the images where detection ran (decoded, detection enabled)."""

    model_config = ConfigDict(extra="forbid")

    mean: float
    histogram: dict[str, int] = Field(description="face count (as a string key) -> images")


class PreparedStats(BaseModel):
    """The measured record of one prepared version, stored in etcd as ``prepared/<dataset>``
    and as ``<version>/manifest.json``."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    version: str
    spec_revision: int = Field(description="etcd mod_revision of the spec it was made from")
    created_at: datetime
    version_uri: str = Field(description="<root>/<version>: samples/, rejects/, manifest.json")
    samples_uri: str = Field(description="folder of the sample Parquet shards (read this)")
    rejects_uri: str
    manifest_uri: str
    sample_height: int
    sample_width: int
    seed: int
    samples: int
    shards: int
    splits: dict[str, int]
    images_listed: int = Field(description="readable items + entries the listing rejected")
    images_used: int = Field(description="images that yielded at least one sample")
    faces_per_image: FacesPerImage
    policies: dict[str, int] = Field(description="faces / whole / skipped / disabled")
    rejected: dict[str, int] = Field(description="bad files by reason")
    rejected_total: int
    source_width: SizeStats | None
    source_height: SizeStats | None
    degradations: dict[str, int] = Field(description="samples per applied degradation type")
    wall_time_s: float
    images_per_s: float


PREPARED_COLLECTION = CollectionSchema(model=PreparedStats, name_field="dataset")
"""Schema of the ``prepared`` etcd collection (``config_store.collections`` entry point).
No store timestamps: ``created_at`` is the job's own and must not be overwritten."""


class UnaccountedImages(DeepfixError):
    """Some listed image ended as neither samples, a skip nor a reject: a block went missing."""


def _sizes(values: list[int]) -> SizeStats | None:
    if not values:
        return None
    return SizeStats(min=min(values), median=float(statistics.median(values)), max=max(values))


def prepared_stats(
    *,
    spec: DatasetSpec,
    spec_revision: int,
    layout: OutputLayout,
    summary: BlockSummary,
    items: int,
    listing_rejected: Sequence[Rejected],
    wall_time_s: float,
    created_at: datetime | None = None,
) -> PreparedStats:
    """Aggregate the block summaries of one run into its :class:`PreparedStats`.

    Args:
        summary: the merged :class:`BlockSummary` of every written block.
        items: readable items sent to the pipeline (the listing's items after ``--limit``).
        listing_rejected: entries the source listing left out (unsafe archive members...).
        wall_time_s: the run's wall time, for ``wall_time_s`` and ``images_per_s``.
    """
    images = summary.images
    policy = images["policy"].to_pylist()
    faces = images["faces"].to_pylist()
    samples_per_image = images["samples"].to_pylist()
    detected = [f for f, p in zip(faces, policy, strict=True) if p in ("faces", "whole", "skipped")]
    decoded = [i for i, p in enumerate(policy) if p != "rejected"]
    widths = images["source_width"].to_pylist()
    heights = images["source_height"].to_pylist()
    rejected = Counter(
        r for r, p in zip(images["reason"].to_pylist(), policy, strict=True) if p == "rejected"
    )
    rejected.update(r.reason for r in listing_rejected)
    listed = items + len(listing_rejected)
    return PreparedStats(
        dataset=spec.name,
        version=layout.version,
        spec_revision=spec_revision,
        created_at=created_at or datetime.now(UTC),
        version_uri=layout.version_uri,
        samples_uri=layout.samples_uri,
        rejects_uri=layout.rejects_uri,
        manifest_uri=layout.manifest_uri,
        sample_height=spec.crop.size[0] if spec.crop.size else spec.height,
        sample_width=spec.crop.size[1] if spec.crop.size else spec.width,
        seed=spec.seed,
        samples=summary.samples,
        shards=len(summary.files),
        splits={s: summary.splits.get(s, 0) for s in SPLITS},
        images_listed=listed,
        images_used=sum(1 for n in samples_per_image if n),
        faces_per_image=FacesPerImage(
            mean=float(np.mean(detected)) if detected else 0.0,
            histogram={str(k): v for k, v in sorted(Counter(detected).items())},
        ),
        policies={p: policy.count(p) for p in ("faces", "whole", "skipped", "disabled")},
        rejected=dict(sorted(rejected.items())),
        rejected_total=sum(rejected.values()),
        source_width=_sizes([widths[i] for i in decoded]),
        source_height=_sizes([heights[i] for i in decoded]),
        degradations=dict(sorted(summary.degradations.items())),
        wall_time_s=round(wall_time_s, 3),
        images_per_s=round(listed / wall_time_s, 2) if wall_time_s > 0 else 0.0,
    )


def check_accounted(stats: PreparedStats) -> None:
    """Count in = count out: every listed image was used, skipped or rejected, exactly once.

    Raises:
        UnaccountedImages: with the numbers, when a block was dropped or counted twice.
    """
    skipped = stats.policies["skipped"]
    accounted = stats.images_used + skipped + stats.rejected_total
    if accounted != stats.images_listed:
        raise UnaccountedImages(
            f"{stats.images_listed} images listed but {accounted} accounted for "
            f"({stats.images_used} used + {skipped} skipped + {stats.rejected_total} rejected)"
        )

"""The one error hierarchy of the deepfix library.

OpenCV, requests and filesystem failures are translated into these where they happen, so that
jobs can record a reason per file and HTTP handlers can map classes to status codes in one table.
"""

from __future__ import annotations

__all__ = [
    "CorruptImage",
    "DeepfixError",
    "ImageError",
    "ImageTooLarge",
    "ModelStoreError",
    "RegistryError",
    "SourceError",
    "StackError",
    "UnsafeSource",
    "UnsupportedImage",
]


class DeepfixError(Exception):
    """Root of every error deepfix raises."""


class ImageError(DeepfixError):
    """An input image cannot be used; ``reason`` is a short machine-readable tag."""

    reason = "image_error"


class CorruptImage(ImageError):
    """The bytes claim to be an image of an allowed format but do not decode."""

    reason = "corrupt"


class UnsupportedImage(ImageError):
    """Not one of the allowed formats (or not an image at all)."""

    reason = "unsupported"


class ImageTooLarge(ImageError):
    """Over the pixel cap or the byte cap; refused before a full decode."""

    reason = "too_large"


class SourceError(DeepfixError):
    """A dataset source cannot be listed or read (missing folder, bad archive, HTTP error)."""


class UnsafeSource(SourceError):
    """The source was refused for safety: path traversal, links, a private address, caps."""


class RegistryError(DeepfixError, KeyError):
    """Unknown or duplicate name in a registry (architectures, degradations, detectors)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ModelStoreError(DeepfixError):
    """A model version or artifact is missing, or its checksum does not match."""


class StackError(DeepfixError):
    """The local stack (etcd + Ray head) cannot be started, found or stopped."""

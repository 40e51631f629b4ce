"""Pure degradation kernels: image in, image out, every number an explicit argument.

Nothing here draws random numbers from a caller's generator or keeps state; the two noise kernels
take an integer ``seed`` and build their own ``numpy.random.default_rng(seed)``, so a recorded
seed replays the same pixel positions bit-for-bit. The registered classes in
:mod:`deepfix.degradations` sample those arguments; this module only applies them (the split of
torchvision's ``transforms/v2/functional``).

All kernels take and return ``uint8`` RGB images of shape ``(H, W, 3)``, never modify their input
and preserve the shape. Sources:

* Gaussian blur and JPEG: OpenCV (``cv2.GaussianBlur``, ``cv2.imencode``/``cv2.imdecode``).
* Motion blur: the linear-motion point spread function, a line segment of a given length and
  angle (Gonzalez & Woods, *Digital Image Processing*, 4th ed., sec. 5.6).
* Shadow: multiplicative illumination model ``I = R * L`` (Land & McCann 1971, retinex) with a
  soft-edged polygon or linear-ramp shading map ``L``, followed by a gamma curve.
* Salt-and-pepper and additive Gaussian noise: the classical impulse and AWGN models
  (Gonzalez & Woods, sec. 5.2).
* Downscale: area-average decimation then bicubic interpolation back to size, the usual
  "bicubic degradation" of super-resolution benchmarks (Dong et al. 2014, SRCNN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import cv2
import numpy as np
from numpy.typing import NDArray

from deepfix.errors import DeepfixError, ImageError

__all__ = [
    "check_rgb_uint8",
    "downscale",
    "gaussian_blur",
    "gaussian_noise",
    "jpeg",
    "motion_blur",
    "motion_kernel",
    "salt_pepper",
    "shadow",
    "shadow_mask",
]

Image = NDArray[np.uint8]

# A shadow mask is blurred at a reduced resolution whenever its blur sigma exceeds this many
# pixels: the blurred mask is smooth, so a linear upsample loses nothing visible, and the blur
# cost stops growing with the image side (a 1024 px image with softness 0.25 would otherwise need
# a 1500-tap kernel).
_MASK_MAX_SIGMA = 4.0


def check_rgb_uint8(image: NDArray[np.generic], *, what: str = "image") -> Image:
    """Return ``image`` if it is a ``uint8`` ``(H, W, 3)`` array, else raise ``ImageError``."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{what} must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"{what} must be uint8, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"{what} must have shape (H, W, 3), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"{what} is empty: {image.shape}")
    return cast(Image, image)


def _to_uint8(x: NDArray[np.floating]) -> Image:
    # Round half away from zero is irrelevant here; np.rint (half to even) is deterministic.
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _kernel_size(sigma: float) -> int:
    # +-3 sigma holds 99.7 % of the Gaussian mass; odd so the kernel has a centre tap.
    return 2 * math.ceil(3.0 * sigma) + 1


def gaussian_blur(image: Image, *, sigma: float) -> Image:
    """Isotropic Gaussian blur with standard deviation ``sigma`` pixels (reflect-101 borders)."""
    check_rgb_uint8(image)
    if sigma <= 0:
        return image.copy()
    k = _kernel_size(sigma)
    out = cv2.GaussianBlur(
        image, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101
    )
    return np.asarray(out, dtype=np.uint8)


def motion_kernel(length: int, angle: float) -> NDArray[np.float32]:
    """The normalised line PSF of a straight motion of ``length`` pixels at ``angle`` degrees.

    The kernel is square with an odd side, so the line is centred on the centre tap. An even
    length covers ``length + 1`` taps with half weights at both ends, keeping the segment centred
    and its total length exact. Angles are counter-clockwise from the +x axis.
    """
    if length < 1:
        raise ValueError(f"motion blur length must be >= 1, got {length}")
    side = length if length % 2 == 1 else length + 1
    kernel = np.zeros((side, side), dtype=np.float32)
    row = np.ones(side, dtype=np.float32)
    if length % 2 == 0:
        row[0] = row[-1] = 0.5
    kernel[side // 2, :] = row
    centre = ((side - 1) / 2.0, (side - 1) / 2.0)
    rot = cv2.getRotationMatrix2D(centre, float(angle), 1.0)
    kernel = np.asarray(
        cv2.warpAffine(kernel, rot, (side, side), flags=cv2.INTER_LINEAR), dtype=np.float32
    )
    # A centred line PSF is point-symmetric; averaging with its 180-degree turn removes the
    # sub-pixel bias bilinear resampling leaves at oblique angles, so the blur never shifts.
    kernel = 0.5 * (kernel + kernel[::-1, ::-1])
    total = float(kernel.sum())
    if total <= 0:  # cannot happen for a centred line, but never divide by zero
        kernel = np.zeros((side, side), dtype=np.float32)
        kernel[side // 2, side // 2] = 1.0
        return kernel
    return (kernel / total).astype(np.float32)


def motion_blur(image: Image, *, length: int, angle: float) -> Image:
    """Convolve with :func:`motion_kernel` (reflect-101 borders)."""
    check_rgb_uint8(image)
    kernel = motion_kernel(length, angle)
    out = cv2.filter2D(image.astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return _to_uint8(np.asarray(out, dtype=np.float32))


def shadow_mask(
    height: int,
    width: int,
    *,
    shape: str,
    vertices: Sequence[tuple[float, float]],
    direction: float,
    softness: float,
) -> NDArray[np.float32]:
    """The shading map in ``[0, 1]`` (1 = fully in shadow) of shape ``(height, width)``.

    Args:
        height: rows of the map.
        width: columns of the map.
        shape: ``"polygon"`` fills ``vertices``; ``"gradient"`` is a linear ramp from 0 on one
            side of the image to 1 on the opposite side.
        vertices: polygon corners as ``(x, y)`` fractions of the width and height (so one set of
            params applies to any image size); ignored for a gradient.
        direction: the gradient's direction of increasing shadow in degrees, measured from +x
            towards +y in image coordinates (y points down, so 90 darkens towards the bottom);
            ignored for a polygon.
        softness: the edge blur's sigma as a fraction of the shorter image side.
    """
    sigma = softness * min(height, width)
    scale = 1.0 if sigma <= _MASK_MAX_SIGMA else _MASK_MAX_SIGMA / sigma
    h = max(8, round(height * scale)) if scale < 1 else height
    w = max(8, round(width * scale)) if scale < 1 else width
    if shape == "polygon":
        if len(vertices) < 3:
            raise ValueError(f"a shadow polygon needs >= 3 vertices, got {len(vertices)}")
        # 8-bit canvas because OpenCV anti-aliases only 8-bit images; 4 bits of sub-pixel
        # precision keep the vertices' fractional positions.
        canvas = np.zeros((h, w), dtype=np.uint8)
        shift = 4
        pts = np.array([[x * w, y * h] for x, y in vertices], dtype=np.float64)
        pts_fixed = np.rint(pts * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillPoly(canvas, [pts_fixed], color=255, lineType=cv2.LINE_AA, shift=shift)
        mask = canvas.astype(np.float32) / np.float32(255.0)
    elif shape == "gradient":
        theta = math.radians(direction)
        c, s = math.cos(theta), math.sin(theta)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        u = (xs + 0.5) / w - 0.5
        v = (ys + 0.5) / h - 0.5
        # Normalise so the projection spans exactly [-1, 1] between the extreme corners.
        half_extent = 0.5 * (abs(c) + abs(s))
        t = (u * c + v * s) / half_extent
        mask = np.clip((t + 1.0) * 0.5, 0.0, 1.0).astype(np.float32)
    else:
        raise ValueError(f"shadow shape must be 'polygon' or 'gradient', got {shape!r}")
    work_sigma = sigma * (w / width) if scale < 1 else sigma
    if work_sigma > 0:
        k = _kernel_size(work_sigma)
        blurred = cv2.GaussianBlur(
            mask, (k, k), sigmaX=work_sigma, sigmaY=work_sigma, borderType=cv2.BORDER_REFLECT_101
        )
        mask = np.asarray(blurred, dtype=np.float32)
    if (h, w) != (height, width):
        resized = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
        mask = np.asarray(resized, dtype=np.float32)
    return np.clip(mask, 0.0, 1.0).astype(np.float32)


def shadow(
    image: Image,
    *,
    shape: str,
    vertices: Sequence[tuple[float, float]],
    direction: float,
    strength: float,
    softness: float,
    gamma: float,
) -> Image:
    """Darken by ``strength`` under a soft :func:`shadow_mask`, then apply ``gamma``.

    ``out = 255 * ((image / 255) * (1 - strength * mask)) ** gamma``; gamma > 1 darkens the
    mid-tones further, gamma < 1 lifts them (an over- or under-exposed camera response).
    """
    check_rgb_uint8(image)
    height, width = image.shape[:2]
    mask = shadow_mask(
        height,
        width,
        shape=shape,
        vertices=vertices,
        direction=direction,
        softness=softness,
    )
    shade = 1.0 - np.float32(strength) * mask
    x = image.astype(np.float32) / np.float32(255.0) * shade[:, :, None]
    x = np.power(x, np.float32(gamma))
    return _to_uint8(x * np.float32(255.0))


def salt_pepper(image: Image, *, density: float, salt_ratio: float, seed: int) -> Image:
    """Set ``round(density * H * W)`` whole pixels to white (share ``salt_ratio``) or black.

    Positions come from ``numpy.random.default_rng(seed)``: an exact count drawn without
    replacement, so ``density`` is the realised share, not just its expectation.
    """
    check_rgb_uint8(image)
    height, width = image.shape[:2]
    n_pixels = height * width
    n_hit = min(n_pixels, round(density * n_pixels))
    out = image.copy()
    if n_hit == 0:
        return out
    rng = np.random.default_rng(seed)
    flat = rng.choice(n_pixels, size=n_hit, replace=False)
    n_salt = round(salt_ratio * n_hit)
    rows, cols = np.divmod(flat, width)
    out[rows[:n_salt], cols[:n_salt]] = 255
    out[rows[n_salt:], cols[n_salt:]] = 0
    return out


def gaussian_noise(image: Image, *, sigma: float, seed: int) -> Image:
    """Add i.i.d. zero-mean Gaussian noise of std ``sigma`` (0..255 units) to every channel."""
    check_rgb_uint8(image)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return _to_uint8(image.astype(np.float32) + noise)


def jpeg(image: Image, *, quality: int) -> Image:
    """Encode as baseline JPEG at ``quality`` (1-100) with OpenCV's libjpeg, then decode."""
    check_rgb_uint8(image)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DeepfixError(f"OpenCV failed to JPEG-encode a {image.shape} image")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise DeepfixError("OpenCV failed to decode its own JPEG output")
    return np.asarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def downscale(image: Image, *, factor: float) -> Image:
    """Shrink by ``factor`` with area averaging, then bicubic back to the original size."""
    check_rgb_uint8(image)
    height, width = image.shape[:2]
    small = (max(1, round(width / factor)), max(1, round(height / factor)))
    if small == (width, height):
        return image.copy()
    reduced = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
    restored = cv2.resize(reduced, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.asarray(restored, dtype=np.uint8)

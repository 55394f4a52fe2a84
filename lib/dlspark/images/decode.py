"""Decode image bytes into fixed-shape uint8 tensors with Pillow. Pure code: no Spark.

``decode_image`` either returns a :class:`DecodedImage` or raises :class:`ImageRejected` whose
``reason`` is one of :data:`REJECT_REASONS`; the Spark UDF turns rejections into quarantine rows.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

REJECT_REASONS = (
    "empty_file",         # zero bytes
    "file_too_large",     # more bytes than max_file_bytes
    "not_an_image",       # Pillow recognises no image format
    "too_many_pixels",    # width*height above max_pixels (decompression-bomb guard)
    "truncated",          # the data ends before the image does
    "corrupt",            # the format was recognised but decoding failed
)


class ImageRejected(ValueError):
    """The bytes cannot become a tensor; ``reason`` is a stable code, the message has the detail."""

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in REJECT_REASONS, reason
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ImageSpec:
    """Target tensor: ``size`` is (height, width); ``color_mode`` L gives 1 channel, RGB 3."""

    size: tuple[int, int]
    color_mode: Literal["RGB", "L"] = "RGB"
    resize: Literal["center_crop", "stretch", "pad"] = "center_crop"
    max_pixels: int = 40_000_000
    max_file_bytes: int = 64 * 1024 * 1024

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size[0], self.size[1], 1 if self.color_mode == "L" else 3)


@dataclass(frozen=True)
class DecodedImage:
    """``pixels`` holds ``shape`` (H, W, C) uint8 values in row-major order; width/height are the original's."""

    pixels: bytes
    shape: tuple[int, int, int]
    width: int
    height: int
    format: str


def decode_image(data: bytes, spec: ImageSpec) -> DecodedImage:
    """Decode, orient, convert, resize and pack one image.

    Raises
    ------
    ImageRejected
        With a reason from :data:`REJECT_REASONS`.
    """
    if not data:
        raise ImageRejected("empty_file", "file has 0 bytes")
    if len(data) > spec.max_file_bytes:
        raise ImageRejected("file_too_large", f"{len(data)} bytes > max_file_bytes={spec.max_file_bytes}")
    img = _open(data, spec.max_pixels)
    original_format = img.format or "UNKNOWN"
    width, height = img.size
    try:
        img.draft(spec.color_mode, (spec.size[1], spec.size[0]))  # JPEG: decode at a reduced scale
        img.load()
        img = ImageOps.exif_transpose(img) or img
        img = _to_mode(img, spec.color_mode)
        img = _resize(img, spec)
    except ImageRejected:
        raise
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageRejected(reason, f"{type(exc).__name__}: {exc}") from exc
    except (ValueError, SyntaxError, EOFError, IndexError, TypeError, ZeroDivisionError) as exc:
        raise ImageRejected("corrupt", f"{type(exc).__name__}: {exc}") from exc
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr.reshape(spec.shape)
    return DecodedImage(arr.tobytes(), spec.shape, width, height, original_format)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Identify the format and read the header only; refuse oversize images before decoding any pixel."""
    try:
        if max_pixels <= (Image.MAX_IMAGE_PIXELS or float("inf")):
            # Our own limit below is the stricter one: skip the per-image warnings filter (it resets the
            # warnings registry, a measurable cost per served request).
            img = Image.open(io.BytesIO(data))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageRejected("not_an_image", f"Pillow cannot identify the format ({len(data)} bytes)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("too_many_pixels", str(exc)) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageRejected("corrupt", f"{type(exc).__name__}: {exc}") from exc
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} = {width * height} pixels > max_pixels={max_pixels}")
    if width == 0 or height == 0:
        raise ImageRejected("corrupt", f"image header says {width}x{height}")
    return img


def _to_mode(img: Image.Image, mode: str) -> Image.Image:
    if img.mode == mode:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of Pillow's clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() or 1.0
        img = Image.fromarray(np.clip(np.rint(arr * (255.0 / peak)), 0, 255).astype(np.uint8), mode="L")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite transparent pixels on white rather than letting them turn black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert(mode)


def _resize(img: Image.Image, spec: ImageSpec) -> Image.Image:
    height, width = spec.size
    if img.size == (width, height):
        return img
    if spec.resize == "stretch":
        return img.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=3.0)
    if spec.resize == "center_crop":
        return img.resize((width, height), Image.Resampling.BILINEAR, box=_center_box(img.size, (width, height)), reducing_gap=3.0)
    return _pad(img, width, height)


def _center_box(src: tuple[int, int], dst: tuple[int, int]) -> tuple[float, float, float, float]:
    """Largest centred box of ``src`` with the aspect ratio of ``dst``, as (left, top, right, bottom)."""
    sw, sh = src
    dw, dh = dst
    scale = min(sw / dw, sh / dh)
    cw, ch = dw * scale, dh * scale
    left, top = (sw - cw) / 2, (sh - ch) / 2
    return (left, top, left + cw, top + ch)


def _pad(img: Image.Image, width: int, height: int) -> Image.Image:
    scale = min(width / img.width, height / img.height)
    inner = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    resized = img.resize(inner, Image.Resampling.BILINEAR, reducing_gap=3.0)
    canvas = Image.new(img.mode, (width, height))
    canvas.paste(resized, ((width - inner[0]) // 2, (height - inner[1]) // 2))
    return canvas


ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is quarantined, never half-decoded

"""Builders for test image trees: good images in class folders plus every kind of bad file."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(width: int, height: int, color: int | tuple = 128, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (width, height), color).save(buf, "PNG")
    return buf.getvalue()


def jpeg_bytes(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def huge_dimension_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny file whose PNG header claims width x height pixels (a decompression-bomb shape)."""
    data = bytearray(png_bytes(1, 1, 0, "L"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def corrupt_png() -> bytes:
    """A PNG with valid headers whose compressed pixel data is scrambled."""
    data = bytearray(png_bytes(64, 64, (10, 200, 30)))
    idat = data.index(b"IDAT")
    for k in range(idat + 8, idat + 30):
        data[k] ^= 0x5A
    return bytes(data)


def bad_files() -> dict[str, tuple[bytes, str]]:
    """name -> (content, expected reject reason)."""
    good_jpeg = jpeg_bytes(64, 48, seed=7)
    return {
        "corrupt.png": (corrupt_png(), "corrupt"),
        "garbage.jpg": (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "not_an_image"),
        "truncated.jpg": (good_jpeg[: len(good_jpeg) // 2], "truncated"),
        "zero.png": (b"", "empty_file"),
        "notes.jpg": (b"this is a text file renamed to .jpg\n" * 3, "not_an_image"),
        "huge.png": (huge_dimension_png(), "too_many_pixels"),
    }


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``relative/path -> bytes`` under ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def good_tree(n_per_class: int = 3, classes: tuple[str, ...] = ("cat", "dog")) -> dict[str, bytes]:
    """Distinct small images in class folders (PNG and JPEG alternating)."""
    files = {}
    for c, name in enumerate(classes):
        for i in range(n_per_class):
            seed = 100 * c + i
            files[f"{name}/{i}.png" if i % 2 else f"{name}/{i}.jpg"] = (
                png_bytes(40 + i, 30 + c, (seed % 255, i * 20 % 255, c * 90)) if i % 2 else jpeg_bytes(50, 40 + i, seed)
            )
    return files


def separable_images(n_per_class: int = 48) -> dict[str, bytes]:
    """Dark and bright noisy 12x12 greyscale PNGs in class folders, distinct bytes each: a trivially learnable task."""
    rng = np.random.default_rng(0)
    files = {}
    for label, base in (("dark", 40), ("bright", 200)):
        for i in range(n_per_class):
            arr = np.clip(base + rng.normal(0, 25, (12, 12)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr, "L").save(buf, "PNG")
            files[f"{label}/{i}.png"] = buf.getvalue()
    return files

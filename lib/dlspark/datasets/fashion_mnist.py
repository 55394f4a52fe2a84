"""Fashion-MNIST from the Debian ``dataset-fashion-mnist`` IDX files, written out as PNG class folders. Pure code."""
from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")
PARTS = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


class DatasetMissing(FileNotFoundError):
    """The dataset files are not installed."""


def read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) IDX file into a uint8 array of the shape its header declares."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (header {data[:4]!r})")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_part(part: str, source: Path = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 28, 28) and labels (n,) of ``train`` or ``test``."""
    images_file, labels_file = (source / name for name in PARTS[part])
    if not images_file.is_file():
        raise DatasetMissing(f"{images_file} not found: install it with `sudo apt-get install dataset-fashion-mnist` (setup.sh does)")
    images, labels = read_idx(images_file), read_idx(labels_file)
    if len(images) != len(labels):
        raise ValueError(f"{part}: {len(images)} images but {len(labels)} labels")
    return images, labels


def write_png_tree(out_dir: Path, source: Path = DEBIAN_DIR) -> int:
    """Write every image as ``out_dir/<class>/<part>_<index>.png``; existing files are kept. Returns the count."""
    written = 0
    for part in PARTS:
        images, labels = load_part(part, source)
        for name in CLASSES:
            (out_dir / name).mkdir(parents=True, exist_ok=True)
        for i, (img, label) in enumerate(zip(images, labels)):
            path = out_dir / CLASSES[label] / f"{part}_{i:05d}.png"
            if not path.exists():
                Image.fromarray(img, mode="L").save(path, optimize=False, compress_level=1)
            written += 1
    log.info("fashion-mnist: %d PNG files under %s", written, out_dir)
    return written

"""decode_image on good and bad inputs (pure: no Spark)."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dlspark.images import ImageRejected, ImageSpec, decode_image
from tests.image_zoo import bad_files, jpeg_bytes, png_bytes


@pytest.mark.parametrize("name", sorted(bad_files()))
def test_bad_file_zoo_is_rejected_with_its_reason(name):
    content, reason = bad_files()[name]
    with pytest.raises(ImageRejected) as info:
        decode_image(content, ImageSpec((32, 32)))
    assert info.value.reason == reason, str(info.value)


def test_rgb_center_crop_gives_fixed_shape_and_original_size():
    out = decode_image(jpeg_bytes(100, 50), ImageSpec((32, 32)))
    assert out.shape == (32, 32, 3)
    assert len(out.pixels) == 32 * 32 * 3
    assert (out.width, out.height, out.format) == (100, 50, "JPEG")


def test_grayscale_stretch_keeps_values():
    out = decode_image(png_bytes(10, 20, 200, "L"), ImageSpec((5, 7), color_mode="L", resize="stretch"))
    arr = np.frombuffer(out.pixels, np.uint8).reshape(out.shape)
    assert out.shape == (5, 7, 1)
    assert np.all(arr == 200)


def test_pad_keeps_aspect_and_fills_black():
    out = decode_image(png_bytes(40, 10, (255, 255, 255)), ImageSpec((20, 20), resize="pad"))
    arr = np.frombuffer(out.pixels, np.uint8).reshape(out.shape)
    assert arr[10, 10].tolist() == [255, 255, 255]  # centre: image
    assert arr[0, 10].tolist() == [0, 0, 0]  # top band: padding


def test_center_crop_takes_the_middle():
    img = Image.new("L", (30, 10), 0)
    img.paste(255, (10, 0, 20, 10))  # white middle third
    buf = io.BytesIO()
    img.save(buf, "PNG")
    out = decode_image(buf.getvalue(), ImageSpec((10, 10), color_mode="L"))
    assert np.frombuffer(out.pixels, np.uint8).min() == 255


def test_transparent_png_composites_on_white():
    out = decode_image(png_bytes(4, 4, (0, 0, 0, 0), "RGBA"), ImageSpec((4, 4)))
    assert set(out.pixels) == {255}


def test_sixteen_bit_png_is_scaled_not_clipped():
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    out = decode_image(buf.getvalue(), ImageSpec((2, 2), color_mode="L", resize="stretch"))
    assert list(out.pixels) == [0, 64, 128, 255]


def test_pixel_limit_is_configurable():
    with pytest.raises(ImageRejected) as info:
        decode_image(png_bytes(100, 100), ImageSpec((8, 8), max_pixels=9_999))
    assert info.value.reason == "too_many_pixels"
    assert decode_image(png_bytes(100, 100), ImageSpec((8, 8), max_pixels=10_000)).shape == (8, 8, 3)


def test_file_byte_limit():
    with pytest.raises(ImageRejected) as info:
        decode_image(png_bytes(10, 10), ImageSpec((8, 8), max_file_bytes=10))
    assert info.value.reason == "file_too_large"

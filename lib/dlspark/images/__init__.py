"""Image decoding (pure) and its Arrow batch function used by the Spark ingest."""
from dlspark.images.decode import REJECT_REASONS, DecodedImage, ImageRejected, ImageSpec, decode_image

__all__ = ["REJECT_REASONS", "DecodedImage", "ImageRejected", "ImageSpec", "decode_image"]

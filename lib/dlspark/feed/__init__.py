"""Training data feeders: one split of an ingested table -> sharded, shuffled numpy/torch/tf batches.

Two feeders with one interface (:func:`open_batches`), chosen by ``FeedSpec.feeder`` (``train.feed.feeder``):
``arrow`` reads Parquet row groups with pyarrow (no petastorm: runs on pyarrow >= 16 / numpy 2);
``petastorm`` reads what :func:`petastorm_spec` materialised with ``make_spark_converter``.
"""
from dlspark.feed.batches import Batches, open_batches
from dlspark.feed.files import split_files
from dlspark.feed.frameworks import tf_dataset, to_torch, torch_dataloader
from dlspark.feed.normalization import image_normalization
from dlspark.feed.spec import FeedError, FeedSpec, make_spec, preprocessing_spec


def petastorm_spec(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201 - imports petastorm only when called
    """See :func:`dlspark.feed.petastorm_feeder.petastorm_spec`."""
    from dlspark.feed.petastorm_feeder import petastorm_spec as build

    return build(*args, **kwargs)


__all__ = [
    "Batches", "FeedError", "FeedSpec", "image_normalization", "make_spec", "open_batches", "petastorm_spec",
    "preprocessing_spec", "split_files", "tf_dataset", "to_torch", "torch_dataloader",
]

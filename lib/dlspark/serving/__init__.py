"""REST serving of a registered model: micro-batched predictions, hot reload on alias moves, Prometheus metrics."""
from dlspark.serving.app import create_app
from dlspark.serving.batcher import MicroBatcher, QueueFull
from dlspark.serving.service import ModelService, ServedModel, load_served_model

__all__ = ["MicroBatcher", "ModelService", "QueueFull", "ServedModel", "create_app", "load_served_model"]

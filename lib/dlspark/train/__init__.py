"""Training: ``TrainJob`` in, ``TrainResult`` out; ``run_training`` picks the backend, ``train_worker`` is
the one function every training process runs. See ``loop`` for the epoch loop and resume rules."""
from dlspark.train.job import TrainJob, TrainResult, default_model_spec
from dlspark.train.launch import TrainingFailed, require_supported_session, run_training
from dlspark.train.loop import train_worker

__all__ = ["TrainJob", "TrainResult", "TrainingFailed", "default_model_spec", "require_supported_session", "run_training", "train_worker"]

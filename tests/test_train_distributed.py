"""The same job on horovod (Gloo) and TorchDistributor (DDP, Gloo) with 2 processes on local[2]."""
from __future__ import annotations

from dataclasses import replace

import pytest

from dlspark.train import TrainingFailed, run_training
from tests.stacks import needs
from tests.test_train_loop import image_job, write_image_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return write_image_table(tmp_path_factory.mktemp("dist_images"), {"train": 256, "val": 65, "test": 63})


@pytest.mark.parametrize("backend", [pytest.param("horovod", marks=needs("horovod")),
                                     pytest.param("torch_distributor", marks=pytest.mark.connect)])
def test_two_process_backend_trains_and_splits_the_data(spark, table, tmp_path, backend):
    job = image_job(table, tmp_path, run_name=backend, epochs=1, num_workers=2)
    result = run_training(job, backend, spark=spark)
    assert result.backend == backend and result.world_size == 2
    assert [h["epoch"] for h in result.history] == [0]
    assert result.history[0]["steps"] == 8  # 256 rows / 2 ranks / batch 16: each rank reads half
    assert result.test_metrics["test_count"] == 63  # every test row once: shares 31 + 32, the repeated row not counted
    assert result.test_metrics["test_accuracy"] >= 0.8, result.test_metrics
    assert (tmp_path / backend / "best.pt").is_file()
    local = _evaluate_in_one_process(job)   # the same best model over the same split, one process
    assert result.test_metrics["test_accuracy"] == pytest.approx(local["accuracy"], abs=1e-9)
    assert result.test_metrics["test_loss"] == pytest.approx(local["loss"], rel=1e-4)


def _evaluate_in_one_process(job):  # noqa: ANN001, ANN202
    from dlspark.models import build_model
    from dlspark.train import steps
    from dlspark.train.checkpoint import CheckpointStore
    from dlspark.train.runtime import resolve_runtime
    from dlspark.train.strategy import LocalStrategy

    model = build_model(job.model_spec)
    model.load_state_dict(CheckpointStore(job.checkpoint_dir, job.run_name).load_best()["model"])
    return steps.evaluate(model, job.test, LocalStrategy(), resolve_runtime(job.config, 0, image_model=True))


@pytest.mark.parametrize("backend", [pytest.param("horovod", marks=needs("horovod")),
                                     pytest.param("torch_distributor", marks=pytest.mark.connect)])
def test_worker_failure_carries_the_worker_error(spark, table, tmp_path, backend):
    job = image_job(table, tmp_path, run_name="bad", epochs=1, num_workers=2)
    job = replace(job, model={"name": "cnn", "in_channels": 1, "num_classes": 2, "no_such_field": 1})
    with pytest.raises(TrainingFailed, match="no_such_field"):
        run_training(job, backend, spark=spark)

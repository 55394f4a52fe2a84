"""Transfer learning and the ViT image model: weights carried over, what freezes, and a run that starts from
another model."""
from __future__ import annotations

import pytest
import torch

from dlspark.config import ConfigError, TrainConfig, TransferConfig
from dlspark.models import build_model
from dlspark.train.phases import apply_trainable, plan_phases
from dlspark.train.transfer import load_transferable

CNN = {"name": "cnn", "in_channels": 1, "widths": [4, 8], "hidden": 8}
VIT = {"name": "vit", "in_channels": 1, "image_size": 8, "patch_size": 4, "hidden": 16, "layers": 2, "heads": 2, "mlp": 32}


def test_matching_weights_carry_over_and_a_new_head_stays_fresh():
    torch.manual_seed(0)
    source = build_model({**CNN, "num_classes": 5})
    torch.manual_seed(1)
    target = build_model({**CNN, "num_classes": 3})
    fresh_before = {k: v.clone() for k, v in target.state_dict().items()}
    fresh = load_transferable(target, source.state_dict())
    assert fresh == ["head.5.bias", "head.5.weight"]                     # the last Linear: 5 -> 3 classes
    got = target.state_dict()
    assert torch.equal(got["features.0.body.0.weight"], source.state_dict()["features.0.body.0.weight"])
    assert torch.equal(got["head.5.weight"], fresh_before["head.5.weight"])


def test_another_architecture_is_refused():
    with pytest.raises(ValueError, match="same architecture"):
        load_transferable(build_model({**CNN, "num_classes": 3}), build_model({**VIT, "num_classes": 3}).state_dict())


@pytest.mark.parametrize("spec", [CNN, VIT], ids=["cnn", "vit"])
def test_freeze_all_trains_the_head_only_and_top_n_adds_the_top_blocks(spec):
    model = build_model({**spec, "num_classes": 3})
    for freeze, top_n in (("all", 1), ("top_n", 1), ("none", 1)):
        cfg = TrainConfig(model=spec["name"], transfer=TransferConfig(model="m", freeze=freeze, top_n=top_n))
        (phase,) = plan_phases(cfg)
        for p in model.parameters():
            p.requires_grad_(True)
        apply_trainable(model, phase)
        trainable = {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith(("features", "encoder")) else "")
                     for n, p in model.named_parameters() if p.requires_grad}
        if freeze == "all":
            assert trainable == {"head"}, trainable
        elif freeze == "top_n":
            top = "features.1" if spec["name"] == "cnn" else "encoder.layers"
            assert "head" in trainable and any(t.startswith(top) for t in trainable)
            assert not any(t.startswith(("features.0", "encoder.embeddings")) for t in trainable)
        else:
            assert phase.unfreeze is None and all(p.requires_grad for p in model.parameters())


def test_vit_classifies_square_images_and_exports_to_onnx(tmp_path):
    from dlspark.export.onnx import export_onnx, run_onnx

    model = build_model({**VIT, "num_classes": 3}).eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    assert expected.shape == (5, 3)
    path = export_onnx(model, x[:2].numpy(), tmp_path / "vit.onnx")
    assert abs(run_onnx(path, x.numpy()) - expected).max() < 1e-4
    with pytest.raises(ValueError, match="multiple of patch_size"):
        build_model({**VIT, "image_size": 10, "num_classes": 3})


def test_transfer_config_is_checked():
    with pytest.raises(ConfigError, match="cnn and vit"):
        TrainConfig(task="sentiment", model="minilm", transfer=TransferConfig(model="m"))
    with pytest.raises(ConfigError, match="top_n"):
        TransferConfig(model="m", freeze="top_n", top_n=0)


@pytest.mark.slow
def test_pipeline_starts_from_a_registered_model_and_records_it(spark, tmp_path):
    from dlspark.config import load_config
    from dlspark.tracking import list_versions, resolve_tracking
    from pipelines.ingest_images import ingest_images
    from pipelines.train import train_model
    from tests.image_zoo import separable_images, write_tree

    write_tree(tmp_path / "landing", separable_images())
    base = [f"paths.data_dir={tmp_path}", "ingest_images.input=landing", "ingest_images.size=[12,12]",
            "ingest_images.color_mode=L", "ingest_images.resize=stretch", "ingest_images.split={train: 0.6, val: 0.2, test: 0.2, salt: ''}"]
    assert ingest_images(spark, load_config(overrides=base), "ingest").counts.written == 96
    train = [*base, "train.epochs=2", "train.lr=0.01", "train.warmup_epochs=0", "train.feed.batch_size=8", "train.report=false"]
    train_model(spark, load_config(pipeline="image_classification", overrides=[
        *train, "train.run_name=source", "mlflow.registered_model=source-cnn"]), "source")
    report = train_model(spark, load_config(pipeline="image_classification", overrides=[
        *train, "train.run_name=target", "mlflow.registered_model=target-cnn", "train.transfer.model=source-cnn",
        "train.transfer.freeze=all", "train.epochs=1"]), "target")

    assert [h["phase"] for h in report.result.history] == ["transfer"]
    from dlspark.train.checkpoint import CheckpointStore

    ckpt = str(tmp_path / "checkpoints")
    src, dst = (CheckpointStore(ckpt, name).load_best()["model"] for name in ("source", "target"))
    conv = "features.1.body.3.weight"
    assert torch.equal(src[conv], dst[conv]) and not torch.equal(src["head.5.weight"], dst["head.5.weight"])
    assert report.summary["test_metrics"]["test_accuracy"] >= 0.8       # a trained encoder, only the head trained
    target = resolve_tracking(load_config().mlflow, str(tmp_path))
    assert target.client().get_run(report.mlflow_run_id).data.tags["dlspark.transfer.model"] == "source-cnn/1"
    version = list_versions(target, "target-cnn")[0]
    assert version.tags["dlspark.transfer.freeze"] == "all"
    with pytest.raises(ConfigError, match="registered pytorch 'vit'"):
        train_model(spark, load_config(pipeline="image_classification", overrides=[
            *train, "train.run_name=bad", "train.model=vit", "train.transfer.model=source-cnn"]), "bad")

"""ONNX + TorchScript export with test-split parity, and int8 / pruned variants, on tiny registered models.

The models come from tests/inference_models.py (a seeded 8x8 CNN, the MiniLM classifier); the "ingested tables"
are a few generated rows written as ``split=test`` Parquet folders under a throwaway data_dir. No Spark.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mlflow = pytest.importorskip("mlflow")
pytest.importorskip("onnxruntime")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from dlspark.export.onnx import ONNX, export_onnx, export_registered_onnx, run_onnx  # noqa: E402
from dlspark.export.optimize import (  # noqa: E402
    file_sizes,
    prune_l1,
    quantize_onnx_int8,
    quantize_torch_int8,
    save_torch,
    sparsity,
)
from dlspark.export.parity import ParityError, SplitSource, batched_logits, read_split  # noqa: E402
from dlspark.export.registered import (  # noqa: E402
    FORMAT_TAG,
    SOURCE_TAG,
    Exporter,
    export_registered,
    torch_logits,
    trace_example,
)
from dlspark.export.torchscript import (  # noqa: E402
    export_registered_torchscript,
    export_torchscript,
    torchscript_runner,
)
from dlspark.inference.onnx_predictor import OnnxPredictor  # noqa: E402
from dlspark.inference.predictors import TorchPredictor, load_torch_module, softmax  # noqa: E402
from dlspark.tracking import using_target  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from tests.inference_models import (  # noqa: E402
    IMAGE_SHAPE,
    image_model,
    image_preprocessing,
    register_image_model,
    register_text_model,
)

IMAGE_ROWS, TEXT_ROWS, LENGTH = 37, 12, 16


def _write_split(table: Path, rows: dict) -> Path:
    folder = table / "split=test"
    folder.mkdir(parents=True)
    pq.write_table(pa.table(rows), folder / "part-00000.parquet")
    return table


def _image_rows(n: int) -> dict:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8)
    return {"pixels": [p.tobytes() for p in pixels], "label_index": pa.array(rng.integers(0, 3, n), pa.int32())}


def _text_rows(n: int) -> dict:
    rng = np.random.default_rng(4)
    lengths = rng.integers(3, LENGTH + 1, n)
    ids = [[101, *rng.integers(1000, 9000, k - 2).tolist(), 102] for k in lengths]
    return {"input_ids": pa.array(ids, pa.list_(pa.int32())),
            "attention_mask": pa.array([[1] * len(r) for r in ids], pa.list_(pa.int8())),
            "label": [("negative", "positive", "neutral")[i % 3] for i in range(n)]}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """data_dir with ``test-images`` and ``test-sentiment`` registered (champion) and a test split for each."""
    data_dir = tmp_path_factory.mktemp("data")
    target = register_image_model(data_dir)
    register_text_model(data_dir, max_length=LENGTH)
    images = _write_split(data_dir / "tables" / "images", _image_rows(IMAGE_ROWS))
    text = _write_split(data_dir / "tables" / "text", _text_rows(TEXT_ROWS))
    return target, data_dir, SplitSource(str(images)), SplitSource(str(text))


@pytest.fixture(scope="module")
def text_model(store):
    with using_target(store[0]):
        model_dir = mlflow.artifacts.download_artifacts("models:/test-sentiment@champion")
    return load_torch_module(model_dir)


def _text_batch(n: int = 5, length: int = 24) -> np.ndarray:
    """int64 [n, 2, length]: rows of different lengths, zero-padded (longer than the trace example)."""
    rng = np.random.default_rng(5)
    x = np.zeros((n, 2, length), np.int64)
    for i, k in enumerate(np.linspace(3, length, n).astype(int)):
        x[i, 0, :k], x[i, 1, :k] = rng.integers(1000, 9000, k), 1
    return x


def _flavors(target, uri: str, tmp: Path) -> dict:
    with using_target(target):
        folder = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp)))
    return mlflow.models.Model.load(str(folder)).flavors, folder


# --- parity data ----------------------------------------------------------------------------------------------

def test_read_split_prepares_rows_as_inference_does(store):
    data = read_split(store[2], image_preprocessing())
    pixels = np.frombuffer(b"".join(_image_rows(IMAGE_ROWS)["pixels"]), np.uint8).reshape(-1, *IMAGE_SHAPE)
    assert data.inputs.shape == (IMAGE_ROWS, 1, 8, 8) and data.inputs.dtype == np.float32
    np.testing.assert_allclose(data.inputs[:, 0], (pixels[..., 0] / 255 - 0.5) / 0.25, atol=1e-5)
    assert data.labels.tolist() == _image_rows(IMAGE_ROWS)["label_index"].to_pylist()


def test_read_split_maps_text_labels_and_marks_other_classes(store):
    from tests.inference_models import text_preprocessing

    data = read_split(store[3], text_preprocessing(LENGTH))
    assert data.inputs.shape == (TEXT_ROWS, 2, LENGTH) and data.inputs.dtype == np.int64
    assert data.labels.tolist()[:3] == [0, 1, -1]  # neutral is no class of the model
    assert (data.inputs[:, 1].sum(axis=1) == np.array([len(r) for r in _text_rows(TEXT_ROWS)["input_ids"].to_pylist()])).all()


def test_trace_example_adds_a_half_padded_text_row():
    x = _text_batch(3, 8)
    traced = trace_example(x)
    assert traced.shape == (4, 2, 8)
    assert traced[3, 1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0] and (traced[3, :, 4:] == 0).all()
    assert trace_example(np.zeros((6, 1, 4, 4), np.float32)).shape == (4, 1, 4, 4)


def test_batched_logits_cuts_text_batches_without_changing_results(text_model):
    x = _text_batch(7, 20)
    full = torch_logits(text_model)(x)
    np.testing.assert_allclose(batched_logits(torch_logits(text_model), x, batch_size=3), full, atol=1e-5)


# --- text exports --------------------------------------------------------------------------------------------

def test_text_onnx_and_torchscript_take_any_batch_and_length(text_model, tmp_path):
    example = trace_example(np.stack([np.full((2, LENGTH), 2000), np.ones((2, LENGTH))], axis=1).astype(np.int64))
    onnx_path = export_onnx(text_model, example, tmp_path / "m.onnx")
    ts_path = export_torchscript(text_model, example, tmp_path / "m.pt")
    x = _text_batch(5, 24)  # 5 rows of 24 tokens: neither the trace batch nor its length
    expected = torch_logits(text_model)(x)
    for got in (run_onnx(onnx_path, x), torchscript_runner(ts_path)(x)):
        assert got.shape == (5, 2)
        assert np.abs(got - expected).max() < 1e-4


def test_registered_text_exports_score_like_the_torch_model(store, text_model, tmp_path):
    target, _, _, text = store
    onnx = export_registered_onnx(target, "models:/test-sentiment@champion", "test-sentiment-onnx",
                                  parity_split=text, experiment="tests")
    ts = export_registered_torchscript(target, "models:/test-sentiment@champion", "test-sentiment-torchscript",
                                       parity_split=text, experiment="tests")
    assert (onnx.parity.rows, onnx.parity.agreement) == (TEXT_ROWS, 1.0) and onnx.parity.max_abs_diff < 1e-4
    assert (ts.parity.rows, ts.parity.agreement) == (TEXT_ROWS, 1.0) and ts.parity.max_abs_diff < 1e-4
    ids, mask = _text_batch(4, 20)[:, 0], _text_batch(4, 20)[:, 1]
    expected = softmax(torch_logits(text_model)(np.stack([ids, mask], axis=1)))
    onnx_flavors, onnx_dir = _flavors(target, onnx.model_uri, tmp_path / "onnx")
    ts_flavors, ts_dir = _flavors(target, ts.model_uri, tmp_path / "ts")
    assert "onnx" in onnx_flavors and "pytorch" in ts_flavors
    np.testing.assert_allclose(OnnxPredictor(str(onnx_dir)).predict_tokens(ids, mask), expected, atol=1e-5)
    assert isinstance(load_torch_module(str(ts_dir)), torch.jit.ScriptModule)
    np.testing.assert_allclose(TorchPredictor.load(str(ts_dir)).predict_tokens(ids, mask), expected, atol=1e-5)
    metrics = target.client().get_run(ts.run_id).data.metrics
    assert metrics["torchscript_parity_rows"] == TEXT_ROWS and "source_accuracy" in metrics
    with pytest.raises(ValueError, match="text model"):
        OnnxPredictor(str(onnx_dir)).predict_images(np.zeros((1, 8, 8, 1), np.uint8), [0.5], [0.25])


# --- registration ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_image_export_is_registered_once_with_flavor_tags_and_split_parity(store, fmt, tmp_path):
    target, _, images, _ = store
    run = export_registered_onnx if fmt == "onnx" else export_registered_torchscript
    name = f"test-images-{fmt}"
    first = run(target, "models:/test-images@champion", name, parity_split=images, experiment="tests")
    again = run(target, "models:/test-images@champion", name, parity_split=images, experiment="tests")
    client = target.client()
    assert again.version == first.version and len(client.search_model_versions(f"name='{name}'")) == 1
    tags = client.get_model_version(name, first.version).tags
    assert (tags[SOURCE_TAG], tags[FORMAT_TAG]) == ("models:/test-images/1", fmt)
    assert first.promoted and (first.parity.rows, first.parity.agreement) == (IMAGE_ROWS, 1.0)
    assert again.parity.rows == IMAGE_ROWS
    run_data = client.get_run(first.run_id).data
    assert run_data.params["parity_data"] == f"test split of {images.table_uri} ({IMAGE_ROWS} rows)"
    assert run_data.metrics["source_accuracy"] == run_data.metrics[f"{fmt}_accuracy"]
    flavors, _ = _flavors(target, first.model_uri, tmp_path)
    assert ("onnx" if fmt == "onnx" else "pytorch") in flavors


def test_export_falls_back_to_the_logged_example_without_a_table(store, caplog):
    target, data_dir = store[0], store[1]
    missing = SplitSource(str(data_dir / "tables" / "nope"))
    with caplog.at_level(logging.WARNING, logger="dlspark.export.registered"):
        result = export_registered_onnx(target, "models:/test-images@champion", "test-images-fallback",
                                        parity_split=missing, experiment="tests")
    assert "checking the logged input example instead" in caplog.text
    assert result.parity.rows == 4  # register_image_model logs 4 example rows
    assert target.client().get_run(result.run_id).data.params["parity_data"] == "the logged input example (4 rows)"


def test_a_tampered_export_is_refused_and_not_registered(store):
    target, _, images, _ = store

    def export_flipped(model, example, path):
        flipped = copy.deepcopy(model)
        with torch.no_grad():  # negated logits: every argmax becomes the argmin
            flipped.head[-1].weight.neg_()
            flipped.head[-1].bias.neg_()
        return export_onnx(flipped, example, path)

    broken = Exporter("onnx", export_flipped, ONNX.runner, ONNX.log_model, suffix=".onnx")
    with pytest.raises(ParityError, match=f"of {IMAGE_ROWS} rows"):
        export_registered(target, "models:/test-images@champion", "test-images-broken", broken,
                          parity_split=images, experiment="tests")
    client = target.client()
    assert client.search_model_versions("name='test-images-broken'") == []
    failed = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                                "attributes.status = 'FAILED'")
    assert any(r.data.tags.get(SOURCE_TAG) == "models:/test-images/1" for r in failed)


def test_models_job_exports_torchscript_with_split_parity(store, capsys):
    data_dir = store[1]
    spec = importlib.util.spec_from_file_location("job_models", REPO / "jobs" / "models.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    base = ["--set", f"paths.data_dir={data_dir}", "--name", "test-images"]
    assert job.main([*base, "export-torchscript", "--as", "test-images-cli"]) == 0
    assert f"parity ParityReport(rows={IMAGE_ROWS}, max_abs_diff=" in capsys.readouterr().out
    assert job.main([*base, "export-onnx", "--as", "test-images-cli-2", "--min-agreement", "1.5"]) == 1
    assert "need 150.0%" in capsys.readouterr().err


# --- int8 and pruning ---------------------------------------------------------------------------------------

def test_torch_int8_quantizes_every_linear_and_stays_close(text_model):
    quantized = quantize_torch_int8(text_model)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    assert sum(isinstance(m, DynamicQuantizedLinear) for m in quantized.modules()) == 6 * 6 + 2  # 6 per layer, pooler, head
    assert not any(type(m) is torch.nn.Linear for m in quantized.modules())
    assert any(type(m) is torch.nn.Linear for m in text_model.modules())  # the source is left as it was
    x = _text_batch(6, 20)
    expected, got = _sentence_vectors(text_model, x), _sentence_vectors(quantized, x)
    cosine = (expected * got).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.min() > 0.8 and not np.allclose(expected, got)  # the head is random: compare what it reads
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize_torch_int8(torch.nn.Conv2d(1, 2, 3))


def _sentence_vectors(stacked_model, x: np.ndarray) -> np.ndarray:
    from dlspark.models.sentiment import mean_pool

    ids, mask = torch.from_numpy(x[:, 0]), torch.from_numpy(x[:, 1])
    with torch.no_grad():
        hidden = stacked_model.model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return mean_pool(hidden, mask).numpy()


def test_onnx_int8_quantizes_matmuls_and_stays_close(tmp_path):
    import onnx

    model = image_model()
    x = np.random.default_rng(6).standard_normal((16, 1, 8, 8)).astype(np.float32)
    path = export_onnx(model, x[:2], tmp_path / "m.onnx")
    q = quantize_onnx_int8(path, tmp_path / "q.onnx")
    ops = {n.op_type for n in onnx.load(str(q)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops and "Conv" in ops  # convs stay float
    expected, got = run_onnx(path, x), run_onnx(q, x)
    assert 0 < np.abs(got - expected).max() < 0.1 * np.abs(expected).max() + 0.05
    conv_only = export_onnx(torch.nn.Conv2d(1, 2, 3).eval(), x[:1], tmp_path / "conv.onnx")
    with pytest.raises(ValueError, match="no MatMul/Gemm node"):
        quantize_onnx_int8(conv_only, tmp_path / "conv-q.onnx")


def test_static_int8_quantizes_the_convolutions_with_calibrated_ranges(tmp_path):
    import onnx

    from dlspark.export.onnx import export_onnx_int8, int8_method
    from dlspark.export.optimize import quantize_onnx_static

    model = image_model()
    x = np.random.default_rng(8).standard_normal((128, 1, 8, 8)).astype(np.float32)
    path = export_onnx(model, x[:2], tmp_path / "m.onnx")
    q = quantize_onnx_static(path, tmp_path / "s.onnx", x[:64])
    nodes = onnx.load(str(q)).graph.node
    convs = [n for n in nodes if n.op_type == "Conv"]
    dequantized = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    assert len(convs) == 4 and all(set(n.input[:2]) <= dequantized for n in convs)   # activations and weights int8
    expected, got = run_onnx(path, x), run_onnx(q, x)
    assert 0 < np.abs(got - expected).max() < 0.1 * np.abs(expected).max() + 0.05
    assert (expected.argmax(1) == got.argmax(1)).mean() >= 0.9
    assert not (tmp_path / "s-prepared.onnx").exists()
    with pytest.raises(ValueError, match="calibration rows"):
        quantize_onnx_static(path, tmp_path / "none.onnx", x[:0])
    assert int8_method(x) == "static" and int8_method(_text_batch()) == "dynamic"
    exported = export_onnx_int8(model, x[:2], tmp_path / "e.onnx", calibration=x[:64])
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(exported)).graph.node)


def test_l1_pruning_reaches_the_amount_and_only_compresses_better(tmp_path):
    model = image_model()
    pruned = prune_l1(model, 0.5)
    assert sparsity(model) < 0.01 and abs(sparsity(pruned) - 0.5) < 0.01
    assert not any(name.endswith("_orig") for name, _ in pruned.named_parameters())  # prune.remove baked it in
    x = np.random.default_rng(7).standard_normal((64, 1, 8, 8)).astype(np.float32)
    expected, got = torch_logits(model)(x), torch_logits(pruned)(x)
    assert (expected.argmax(1) == got.argmax(1)).mean() >= 0.9 and not np.allclose(expected, got)
    light = torch_logits(prune_l1(model, 0.1))(x)
    assert np.corrcoef(expected.ravel(), light.ravel())[0, 1] > 0.99
    dense, sparse = file_sizes(save_torch(model, tmp_path / "f.pt")), file_sizes(save_torch(pruned, tmp_path / "p.pt"))
    assert abs(dense["bytes"] - sparse["bytes"]) < 64 and sparse["gzip_bytes"] < dense["gzip_bytes"]
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        prune_l1(model, 1.0)


def test_file_sizes_counts_raw_and_gzip_bytes(tmp_path):
    path = tmp_path / "zeros.bin"
    path.write_bytes(bytes(100_000))
    sizes = file_sizes(path)
    assert sizes["bytes"] == 100_000 and 0 < sizes["gzip_bytes"] < 1_000
    assert json.loads(json.dumps(sizes)) == sizes

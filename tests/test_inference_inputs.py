"""Pure scoring code: input validation per row, prediction columns, sub-batching, the per-process model cache."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from dlspark.inference import scoring
from dlspark.inference.inputs import InputSchemaError, TextPreprocessing, image_inputs, text_inputs, token_inputs
from dlspark.inference.predictors import TorchPredictor, softmax
from dlspark.inference.scoring import PREDICTION_SCHEMA, ScoringSpec, predict, score_record_batch
from dlspark.text.tokenize import load_tokenizer
from tests.inference_models import IMAGE_LABELS, IMAGE_SHAPE, image_model, image_preprocessing, text_preprocessing

SIZE = int(np.prod(IMAGE_SHAPE))


def _image_batch(pixels: list, shapes: list | None = None) -> pa.RecordBatch:
    cols = {"id": pa.array([f"r{i}" for i in range(len(pixels))]), "pixels": pa.array(pixels, pa.binary())}
    if shapes is not None:
        cols["shape"] = pa.array(shapes, pa.list_(pa.int32()))
    return pa.RecordBatch.from_pydict(cols)


def _good(seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, SIZE, dtype=np.uint8).tobytes()


def test_image_inputs_flag_null_and_wrong_shape_rows_and_keep_the_rest():
    batch = _image_batch([_good(0), None, b"\x00" * (SIZE - 1), _good(3), _good(4)],
                         shapes=[[8, 8, 1], None, [8, 8, 1], [8, 8, 1], [4, 16, 1]])
    inputs = image_inputs(batch, IMAGE_SHAPE)
    assert inputs.valid.tolist() == [0, 3]
    assert inputs.errors[0] is None and inputs.errors[3] is None
    assert inputs.errors[1].startswith("null_image")
    assert inputs.errors[2] == f"wrong_shape: {SIZE - 1} bytes, the model takes 8x8x1 = {SIZE}"
    assert inputs.errors[4].startswith("wrong_shape: shape [4, 16, 1]")
    assert np.array_equal(inputs.arrays["pixels"][1], np.frombuffer(_good(3), np.uint8).reshape(IMAGE_SHAPE))


def test_image_inputs_all_good_is_a_view_of_arrow_memory():
    batch = _image_batch([_good(i) for i in range(4)])
    pixels = image_inputs(batch, IMAGE_SHAPE).arrays["pixels"]
    assert pixels.shape == (4, *IMAGE_SHAPE) and not pixels.flags.owndata


def test_missing_input_column_names_the_fix():
    with pytest.raises(InputSchemaError, match=r"needs column\(s\) \['pixels'\]"):
        image_inputs(pa.RecordBatch.from_pydict({"x": [1]}), IMAGE_SHAPE)


def test_token_inputs_reject_null_mismatched_and_unattended_rows():
    ids = pa.array([[101, 7, 102], None, [101, 102], [101, 5, 6, 102], [0, 0]], pa.list_(pa.int32()))
    mask = pa.array([[1, 1, 1], [1], [1, 1, 1], [1, 1, 1, 1], [0, 0]], pa.list_(pa.int8()))
    inputs = token_inputs(pa.RecordBatch.from_arrays([ids, mask], ["input_ids", "attention_mask"]))
    assert inputs.valid.tolist() == [0, 3]
    assert [e.split(":")[0] if e else None for e in inputs.errors] == [None, "null_tokens", "wrong_shape", None, "empty_text"]
    assert inputs.arrays["input_ids"].tolist() == [[101, 7, 102, 0], [101, 5, 6, 102]]   # right-padded to the longest
    assert inputs.arrays["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


def test_text_inputs_normalise_and_tokenize_like_ingest():
    pre = TextPreprocessing.from_spec(text_preprocessing(16))
    tok = load_tokenizer("minilm")
    batch = pa.RecordBatch.from_pydict({"text": ["Loving it @bob http://x.co", None, "   ", "fine"]})
    inputs = text_inputs(batch, pre, tok)
    assert inputs.valid.tolist() == [0, 3]
    assert inputs.errors[1] == "empty_text: null" and inputs.errors[2].startswith("empty_text")
    expected = tok.encoder(16).encode("Loving it @user http").ids
    assert inputs.arrays["input_ids"][0].tolist() == expected and len(expected) == 16


def test_text_preprocessing_needs_a_tokenizer_from_the_model_or_the_ingest_config():
    pre = {"kind": "text", "max_length": 8}
    with pytest.raises(InputSchemaError, match="names no tokenizer"):
        TextPreprocessing.from_spec(pre)
    got = TextPreprocessing.from_spec(pre, {"tokenizer": "minilm", "max_length": 64, "lowercase": True})
    assert (got.tokenizer, got.max_length, got.normalize.lowercase) == ("minilm", 8, True)


def _image_spec(tmp_path, **kw) -> ScoringSpec:
    return ScoringSpec(cache_key="test:image", flavor="pytorch", labels=IMAGE_LABELS, preprocessing=image_preprocessing(),
                       model_dir=str(tmp_path), passthrough=("id",), **kw)


def test_score_record_batch_matches_the_model_and_nulls_bad_rows(tmp_path):
    model = image_model()
    batch = _image_batch([_good(0), None, _good(2)])
    out = score_record_batch(batch, _image_spec(tmp_path, top_k=2, batch_size=1), TorchPredictor(model))
    assert out.schema.names == ["id", *PREDICTION_SCHEMA.names]
    rows = out.to_pylist()
    pixels = np.stack([np.frombuffer(_good(i), np.uint8).reshape(IMAGE_SHAPE) for i in (0, 2)])
    x = torch.from_numpy((pixels.astype(np.float32) / 255 - 0.5) / 0.25).permute(0, 3, 1, 2)
    with torch.no_grad():
        want = softmax(model(x).numpy())
    for row, probs in zip((rows[0], rows[2]), want):
        assert row["error"] is None and np.allclose(row["probabilities"], probs, atol=1e-5)
        assert row["prediction_index"] == int(probs.argmax()) and row["prediction"] == IMAGE_LABELS[int(probs.argmax())]
        assert [t["label"] for t in row["top_k"]] == [IMAGE_LABELS[i] for i in np.argsort(-probs)[:2]]
    assert rows[1]["prediction"] is None and rows[1]["probabilities"] is None and rows[1]["error"].startswith("null_image")


class _LengthRecorder:
    """A fake text predictor: probability of class 1 = number of attended tokens / 100; records sub-batch widths."""

    def __init__(self) -> None:
        self.widths: list[int] = []

    def predict_tokens(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.widths.append(ids.shape[1])
        p = mask.sum(axis=1) / 100.0
        return np.stack([1 - p, p], axis=1).astype(np.float32)


def test_text_sub_batches_are_length_bucketed_and_returned_in_input_order(tmp_path):
    lengths = [3, 10, 2, 9, 4, 12]
    ids = np.zeros((6, 16), np.int64)
    mask = np.zeros((6, 16), np.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, :n] = 7
    spec = ScoringSpec(cache_key="t", flavor="pytorch", labels=("negative", "positive"), preprocessing=text_preprocessing(),
                       model_dir=str(tmp_path), batch_size=2)
    recorder = _LengthRecorder()
    inputs = scoring.ModelInputs(np.arange(6), {"input_ids": ids, "attention_mask": mask}, [None] * 6)
    probs = predict(recorder, inputs, spec)
    assert np.allclose(probs[:, 1], np.array(lengths) / 100)
    assert recorder.widths == [3, 9, 12]   # sorted by length: (2, 3), (4, 9), (10, 12)

    tokens = ScoringSpec(**{**spec.__dict__, "batch_size": 256, "max_batch_tokens": 20})
    recorder = _LengthRecorder()
    assert np.allclose(predict(recorder, inputs, tokens)[:, 1], np.array(lengths) / 100)
    assert recorder.widths == [4, 10, 12]  # (2, 3, 4) = 12 tokens, (9, 10) = 20, (12) alone


@pytest.mark.parametrize("lengths, max_rows, max_tokens, expected", [
    ([2, 3, 3, 8], 10, 9, [(0, 3), (3, 4)]),
    ([1, 1, 1], 2, None, [(0, 2), (2, 3)]),
    ([5, 40, 41], 8, 32, [(0, 1), (1, 2), (2, 3)]),      # rows over the budget go alone, none is dropped
    ([0, 0, 1, 1], 3, 2, [(0, 2), (2, 4)]),              # an empty row costs one token
    ([], 4, 8, []),
])
def test_length_chunks_respect_rows_and_token_budget(lengths, max_rows, max_tokens, expected):
    chunks = scoring.length_chunks(np.array(lengths, int), max_rows, max_tokens)
    assert chunks == expected
    assert [i for a, b in chunks for i in range(a, b)] == list(range(len(lengths)))


def test_scoring_spec_rejects_a_token_budget_below_one(tmp_path):
    with pytest.raises(ValueError, match="max_batch_tokens"):
        ScoringSpec(cache_key="t", flavor="pytorch", labels=("a", "b"), preprocessing=text_preprocessing(),
                    model_dir=str(tmp_path), max_batch_tokens=0)


def test_model_is_loaded_once_per_process_and_key(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(scoring, "_PREDICTORS", {})
    monkeypatch.setattr(scoring, "load_predictor", lambda *a, **k: loads.append(a) or object())
    (tmp_path / "MLmodel").write_text("flavors: {}")
    spec = _image_spec(tmp_path, device="cpu", threads=1)
    first = scoring.cached_predictor(spec)
    assert scoring.cached_predictor(spec) is first and len(loads) == 1
    other = ScoringSpec(**{**spec.__dict__, "cache_key": "test:other"})
    assert scoring.cached_predictor(other) is not first and len(loads) == 2


def test_scoring_spec_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="model_dir"):
        ScoringSpec(cache_key="k", flavor="pytorch", labels=("a",), preprocessing=image_preprocessing())
    with pytest.raises(ValueError, match="device"):
        _image_spec(tmp_path, device="tpu")


def test_cpu_only_machine_refuses_an_explicit_cuda_request():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert scoring.choose_device("auto") == "cpu"
    with pytest.raises(RuntimeError, match="no GPU"):
        scoring.choose_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_scoring_in_bf16_agrees_with_cpu(tmp_path):
    model = image_model()
    batch = _image_batch([_good(i) for i in range(64)])
    spec = _image_spec(tmp_path, batch_size=16)
    cpu = score_record_batch(batch, spec, TorchPredictor(model, device="cpu")).to_pydict()
    gpu = score_record_batch(batch, spec, TorchPredictor(image_model(), device="cuda:0")).to_pydict()
    assert np.allclose(np.array(cpu["probabilities"]), np.array(gpu["probabilities"]), atol=3e-2)
    agree = np.mean(np.array(cpu["prediction_index"]) == np.array(gpu["prediction_index"]))
    assert agree >= 0.95

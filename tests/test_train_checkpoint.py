"""Checkpoint store: atomic writes, partial temp files and damaged files ignored, pruning, best model."""
from __future__ import annotations

import torch

from dlspark.train.checkpoint import CheckpointStore


def _state(v: float) -> dict:
    return {"loop": {"epoch": 1, "step": int(v)}, "model": {"w": torch.full((3,), v)}}


def test_latest_ignores_partial_temp_files_and_damaged_checkpoints(tmp_path, caplog):
    store = CheckpointStore(str(tmp_path), "run")
    store.save(_state(1), epoch=0, step=5)
    store.save(_state(2), epoch=1, step=0)
    run_dir = tmp_path / "run"
    (run_dir / ".tmp-abc-ckpt-e00009-s00000000.pt").write_bytes(b"half a checkpo")  # killed mid-write
    path, state = store.latest()
    assert path.endswith("ckpt-e00001-s00000000.pt") and state["model"]["w"][0] == 2
    (run_dir / "ckpt-e00002-s00000000.pt").write_bytes(b"garbage")  # damaged but complete-looking
    path, state = store.latest()
    assert path.endswith("ckpt-e00001-s00000000.pt") and "unreadable" in caplog.text


def test_save_is_atomic_and_prunes_to_keep(tmp_path):
    store = CheckpointStore(str(tmp_path), "run", keep=2)
    assert store.latest() is None
    for step in range(1, 5):
        store.save(_state(step), epoch=0, step=step)
    names = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert names == ["ckpt-e00000-s00000003.pt", "ckpt-e00000-s00000004.pt"]  # no temp file left behind
    assert store.latest()[1]["loop"]["step"] == 4


def test_best_model_round_trip_via_fsspec_uri(tmp_path):
    store = CheckpointStore(f"file://{tmp_path}", "run")
    uri = store.save_best({"model": {"w": torch.ones(2)}, "spec": {"name": "cnn"}, "epoch": 3, "metric": 0.9})
    assert uri == f"file://{tmp_path}/run/best.pt"
    best = store.load_best()
    assert best["epoch"] == 3 and torch.equal(best["model"]["w"], torch.ones(2))

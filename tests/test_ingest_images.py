"""Image ingest end to end on local[2]: bad-file zoo, reconciliation, idempotent reruns, incremental runs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from dlspark.config import load_config
from dlspark.ingest.files import InputNotFound
from dlspark.tables import read_table
from pipelines.ingest_images import ingest_images
from tests.ansi import ANSI_MODES, ansi_conf
from tests.image_zoo import bad_files, good_tree, jpeg_bytes, write_tree
from tests.stacks import no_cached_frames

pytestmark = pytest.mark.connect  # also run over Spark Connect (make test-connect)


def image_cfg(tmp_path: Path, *sets: str):
    return load_config(overrides=[
        f"paths.data_dir={tmp_path}", "ingest_images.input=landing", "ingest_images.size=[16,16]",
        "ingest_images.max_file_bytes=200000", *sets,
    ])


def table_rows(spark, cfg, path="tables/images", fmt="parquet"):
    return read_table(spark, f"{cfg.paths.data_dir}/{path}", fmt=fmt).df


def make_zoo(root: Path) -> Path:
    """6 good images, 1 byte-identical copy of one of them, 6 bad files, 1 oversize file."""
    files = good_tree(3, ("cat", "dog"))
    files["dog/copy_of_cat0.jpg"] = files["cat/0.jpg"]
    for name, (content, _) in bad_files().items():
        files[f"cat/{name}"] = content
    files["dog/big.jpg"] = jpeg_bytes(400, 400, seed=3) + b"\0" * 200_000
    write_tree(root / "landing", files)
    return root


@pytest.fixture()
def zoo(tmp_path):
    return make_zoo(tmp_path)


@pytest.fixture(scope="module", params=ANSI_MODES)
def zoo_run(spark, tmp_path_factory, request):
    """One ingest of the zoo per ANSI mode (Spark 4's default on, 3.5's off), shared by the read-only tests."""
    root = make_zoo(tmp_path_factory.mktemp("zoo"))
    cfg = image_cfg(root)
    with ansi_conf(spark, request.param):
        return root, cfg, ingest_images(spark, cfg, "run-1")


def test_bad_file_zoo_is_quarantined_and_counts_reconcile(spark, zoo_run):
    _, cfg, report = zoo_run
    c = report.counts
    assert (c.files_listed, c.files_new, c.seen) == (14, 14, 14)
    assert (c.written, c.duplicates, c.quarantined) == (6, 1, 7)
    quarantine = {r["record_id"].rsplit("/", 1)[-1]: r for r in table_rows(spark, cfg, "tables/images_quarantine").collect()}
    expected = {name: reason for name, (_, reason) in bad_files().items()} | {"big.jpg": "file_too_large"}
    assert {name: r["reason"] for name, r in quarantine.items()} == expected
    assert all(r["detail"] and r["ingest_run_id"] == "run-1" for r in quarantine.values())
    assert report.summary["quarantine_reasons"] == {r: list(expected.values()).count(r) for r in set(expected.values())}


def test_written_rows_hold_fixed_shape_tensors_labels_and_splits(spark, zoo_run):
    zoo, cfg, _ = zoo_run
    rows = table_rows(spark, cfg).collect()
    assert len(rows) == 6
    for r in rows:
        assert r["shape"] == [16, 16, 3] and len(r["pixels"]) == 16 * 16 * 3
        assert r["label"] in {"cat", "dog"} and r["label_index"] == {"cat": 0, "dog": 1}[r["label"]]
        assert r["split"] in {"train", "val", "test"} and len(r["sha256"]) == 64
    labels = json.loads((zoo / "tables/images/_dlspark/labels.json").read_text())
    assert labels == {"labels": {"cat": 0, "dog": 1}}
    pixels = np.frombuffer(rows[0]["pixels"], np.uint8)
    assert pixels.std() > 0  # real image content, not zeros
    assert not list((zoo / "tables/images").glob("_dlspark_staging-*"))  # workers' staging folder removed


def test_rerun_is_idempotent_then_incremental(spark, zoo):
    cfg = image_cfg(zoo)
    ingest_images(spark, cfg, "run-1")
    again = ingest_images(spark, cfg, "run-2").counts
    assert (again.files_listed, again.files_already_ingested, again.files_new, again.seen) == (14, 14, 0, 0)
    assert table_rows(spark, cfg).count() == 6
    assert table_rows(spark, cfg, "tables/images_quarantine").count() == 7
    write_tree(zoo / "landing", {
        "cat/new.jpg": jpeg_bytes(32, 32, seed=999),
        "dog/again.jpg": (zoo / "landing/cat/0.jpg").read_bytes(),  # content already in the table
    })
    c = ingest_images(spark, cfg, "run-3").counts
    assert (c.files_already_ingested, c.files_new, c.written, c.duplicates, c.quarantined) == (14, 2, 1, 1, 0)
    table = table_rows(spark, cfg)
    assert table.count() == 7
    assert table.where(F.col("ingest_run_id") == "run-3").select("path").first()["path"].endswith("cat/new.jpg")
    assert no_cached_frames(spark)  # every frame a run persisted is released


def test_dedup_off_keeps_identical_content(spark, zoo):
    cfg = image_cfg(zoo, "ingest_images.dedup=false")
    c = ingest_images(spark, cfg, "run-1").counts
    assert (c.written, c.duplicates) == (7, 0)


def test_unknown_label_is_quarantined(spark, ansi_mode, zoo):
    cfg = image_cfg(zoo, "ingest_images.labels=[cat]")
    c = ingest_images(spark, cfg, "run-1").counts
    assert c.written == 3
    reasons = {r["reason"] for r in table_rows(spark, cfg, "tables/images_quarantine").collect()}
    assert "unknown_label" in reasons


def test_labels_from_csv(spark, ansi_mode, tmp_path):
    write_tree(tmp_path / "landing", {f"flat/{k.replace('/', '_')}": v for k, v in good_tree(2).items()})
    names = sorted(p.name for p in (tmp_path / "landing/flat").iterdir())
    (tmp_path / "labels.csv").write_text("path,label\n" + "\n".join(f"flat/{n},{n.split('_')[0]}" for n in names[:-1]))
    cfg = image_cfg(tmp_path, "ingest_images.label_source=csv", f"ingest_images.labels_csv={tmp_path}/labels.csv")
    c = ingest_images(spark, cfg, "run-1").counts
    assert (c.written, c.quarantined) == (3, 1)  # the file missing from the CSV has no label
    rows = table_rows(spark, cfg).collect()
    assert all(r["path"].rsplit("/", 1)[-1].startswith(r["label"]) for r in rows)


def test_delta_output_round_trip(spark, zoo):
    cfg = image_cfg(zoo, "ingest_images.format=delta")
    report = ingest_images(spark, cfg, "run-1")
    assert report.summary["outputs"]["table"]["writer"] == "delta-rs"
    snap = read_table(spark, f"{zoo}/tables/images", fmt="delta")
    assert snap.version == 0 and snap.df.count() == 6
    ingest_images(spark, cfg, "run-2")  # nothing new: no new table version
    assert read_table(spark, f"{zoo}/tables/images", fmt="delta").version == 0


def test_missing_input_is_a_clear_error(spark, tmp_path):
    with pytest.raises(InputNotFound, match="does not exist"):
        ingest_images(spark, image_cfg(tmp_path), "run-1")


def test_run_summary_written_beside_table(zoo_run):
    _, _, report = zoo_run
    summary = json.loads(Path(report.summary["summary_path"]).read_text())
    assert summary["counts"]["written"] == 6 and summary["config_hash"] and summary["timings_s"]["process"] >= 0

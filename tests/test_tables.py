"""Table I/O: Parquet and Delta (delta-rs path) round trips, time travel, conflicts, and argument checks."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

from dlspark.tables import (
    TableConflictError,
    TableError,
    TableSink,
    delete_where,
    delta_log,
    delta_rs,
    layout,
    read_table,
    table_exists,
    write_table,
)

pytestmark = pytest.mark.connect  # also run over Spark Connect (make test-connect)

UTC = dt.UTC
TS0 = dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
TS1 = dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC)
WIDE = T.StructType([
    T.StructField("id", T.LongType()),
    T.StructField("split", T.StringType()),
    T.StructField("shard", T.LongType()),
    T.StructField("score", T.DoubleType()),
    T.StructField("ok", T.BooleanType()),
    T.StructField("blob", T.BinaryType()),
    T.StructField("ts", T.TimestampType()),
    T.StructField("ids", T.ArrayType(T.IntegerType())),
    T.StructField("pixels", T.ArrayType(T.ByteType())),
])
V0 = [(1, "train", 0, 0.5, True, b"\x00\xff", TS0, [1, 2, 3], [-1, 127]),
      (2, "a:b c/%d", None, None, False, b"", TS1, [], None)]
V1 = [(3, "train", 0, 2.0, None, None, None, None, [0])]
V2 = [(10, "test", 2, 1.0, True, b"z", TS0, [7], [5])]
PARTS = ["split", "shard"]


def micros(value: dt.datetime | None) -> int | None:
    return None if value is None else (value - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)


def expected(rows: list[tuple]) -> list[dict]:
    """Rows as Spark should return them, timestamps as epoch micros, binary as bytes."""
    out = [dict(zip(WIDE.names, r)) for r in rows]
    return sorted(({**r, "ts": micros(r["ts"])} for r in out), key=lambda r: r["id"])


def spark_rows(df) -> list[dict]:
    got = df.withColumn("ts", F.unix_micros("ts")).collect()
    rows = [{**r.asDict(), "blob": None if r["blob"] is None else bytes(r["blob"])} for r in got]
    return sorted(rows, key=lambda r: r["id"])


def delta_rs_rows(path: str, version: int | None = None) -> list[dict]:
    """Read with delta-rs's own engine (DataFusion); ``to_pyarrow_table`` needs pyarrow >= 21."""
    from deltalake import DeltaTable, QueryBuilder

    table = QueryBuilder().register("t", DeltaTable(path, version=version)).execute("select * from t").read_all()
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    return sorted(({**r, "ts": micros(r["ts"])} for r in rows), key=lambda r: r["id"])


def parquet_files(path: str) -> set[str]:
    return {str(p) for p in Path(path).rglob("*.parquet") if "_delta_log" not in p.parts}


def unreferenced_files(path: str) -> set[str]:
    """Parquet files under a Delta table that no version of its log adds."""
    from deltalake import DeltaTable

    referenced = {str(Path(path) / f["path"]) for v in range(DeltaTable(path).version() + 1)
                  for f in delta_log.add_files(DeltaTable(path, version=v))}
    return parquet_files(path) - referenced


@pytest.fixture(scope="module")
def wide_table(spark, tmp_path_factory):
    """A Delta table written through delta-rs: v0 create, v1 append, v2 overwrite; plus the results."""
    path = str(tmp_path_factory.mktemp("tables") / "wide")
    conf_before = spark.conf.get(delta_rs.TIMESTAMP_CONF)
    results = [write_table(spark.createDataFrame(rows, WIDE), path, fmt="delta", mode=mode, partition_by=PARTS,
                           delta_writer="delta-rs")
               for rows, mode in ((V0, "append"), (V1, "append"), (V2, "overwrite"))]
    return path, results, conf_before


# ---- pure helpers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["a:b c/%d", "x=y", "plain", "ünï", "%41", "__x"])
def test_partition_value_escaping_round_trips(value):
    escaped = layout.escape_partition_value(value)
    assert "/" not in escaped and "=" not in escaped and ":" not in escaped
    assert layout.unescape_partition_value(escaped) == value


def test_partition_value_escaping_matches_hive():
    assert layout.escape_partition_value("a:b/c") == "a%3Ab%2Fc"
    assert layout.escape_partition_value(None) == layout.HIVE_DEFAULT_PARTITION
    assert layout.escape_partition_value("") == layout.HIVE_DEFAULT_PARTITION
    assert layout.unescape_partition_value(layout.HIVE_DEFAULT_PARTITION) is None
    assert layout.partition_dir({"split": "a/b", "shard": None}) == "split=a%2Fb/shard=__HIVE_DEFAULT_PARTITION__/"


def test_partition_values_from_dir_parses_and_rejects_other_layouts():
    parsed = layout.partition_values_from_dir("split=a%3Ab/shard=__HIVE_DEFAULT_PARTITION__", ["split", "shard"])
    assert parsed == {"split": "a:b", "shard": None}
    assert layout.partition_values_from_dir("", []) == {}
    with pytest.raises(ValueError, match="does not match"):
        layout.partition_values_from_dir("shard=1/split=a", ["split", "shard"])
    with pytest.raises(ValueError, match="does not match"):
        layout.partition_values_from_dir("oops", ["split"])


def test_file_stats_from_footer(tmp_path):
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"id": pa.array([5, None, -2], pa.int64()), "name": ["a", None, None],
                             "ids": pa.array([[1], None, [2, 3]], pa.list_(pa.int32()))}), path)
    stats = json.loads(delta_log.file_stats(pq.read_metadata(path), ["id"]))
    assert stats == {"numRecords": 3, "minValues": {"id": -2}, "maxValues": {"id": 5},
                     "nullCount": {"id": 1, "name": 2}}


def test_schema_difference_ignores_nullability_and_reports_changes():
    a = T.StructType([T.StructField("x", T.LongType(), False), T.StructField("v", T.ArrayType(T.IntegerType(), False))])
    b = T.StructType([T.StructField("x", T.LongType(), True), T.StructField("v", T.ArrayType(T.IntegerType(), True))])
    c = T.StructType([T.StructField("x", T.IntegerType()), T.StructField("w", T.StringType())])
    norm = [delta_log.normalize_schema(json.loads(s.json())) for s in (a, b, c)]
    assert delta_log.schema_difference(norm[0], norm[1]) is None
    diff = delta_log.schema_difference(norm[0], norm[2])
    assert "missing columns ['v']" in diff and "new columns ['w']" in diff and "x: long -> integer" in diff


def test_delta_rs_uri_translates_hadoop_schemes():
    assert delta_log.delta_rs_uri("s3a://bucket/t") == "s3://bucket/t"
    assert delta_log.delta_rs_uri("file:/tmp/t") == "/tmp/t"
    assert delta_log.delta_rs_uri("file:///tmp/t") == "/tmp/t"
    assert delta_log.delta_rs_uri("hdfs://nn:8020/t") == "hdfs://nn:8020/t"
    assert delta_log.delta_rs_uri("/tmp/t") == "/tmp/t"


def test_fingerprint_is_order_free_and_size_sensitive():
    fp = layout.fingerprint([("a", 1), ("b", 2)])
    assert fp == layout.fingerprint([("b", 2), ("a", 1)])
    assert fp != layout.fingerprint([("a", 1), ("b", 3)])
    assert len(fp) == 16


# ---- arguments ------------------------------------------------------------------------------------------

def test_bad_arguments_raise_value_errors(spark, tmp_path):
    df = spark.createDataFrame([(1, "a")], "id long, split string")
    target = str(tmp_path / "t")
    with pytest.raises(ValueError, match="fmt='csv'.*'parquet', 'delta'"):
        write_table(df, target, fmt="csv")
    with pytest.raises(ValueError, match="mode='upsert'.*'append', 'overwrite'"):
        write_table(df, target, fmt="parquet", mode="upsert")
    with pytest.raises(ValueError, match="delta_writer='rust'.*'auto', 'spark', 'delta-rs'"):
        write_table(df, target, fmt="delta", delta_writer="rust")
    with pytest.raises(ValueError, match="fmt='orc'"):
        read_table(spark, target, fmt="orc")
    with pytest.raises(ValueError, match=r"\['nope'\] are not in"):
        write_table(df, target, fmt="parquet", partition_by=["nope"])
    with pytest.raises(TypeError, match="pass a list"):
        write_table(df, target, fmt="parquet", partition_by="split")
    with pytest.raises(ValueError, match="relative"):
        write_table(df, "tables/t", fmt="parquet")
    with pytest.raises(ValueError, match="only for fmt='delta'"):
        read_table(spark, target, fmt="parquet", version=0)
    assert not Path(target).exists()


def test_delta_rs_rejects_unsupported_partition_type(spark, tmp_path):
    df = spark.createDataFrame([(1, 0.5)], "id long, score double")
    with pytest.raises(ValueError, match="cannot partition.*score"):
        write_table(df, str(tmp_path / "t"), fmt="delta", partition_by=["score"], delta_writer="delta-rs")


def test_spark_writer_without_jars_says_what_to_add(spark, tmp_path):
    from dlspark.spark.session import delta_spark_available

    if delta_spark_available(spark):
        pytest.skip("delta-spark jars are on the classpath here")
    df = spark.createDataFrame([(1,)], "id long")
    with pytest.raises(TableError, match="delta-spark jars"):
        write_table(df, str(tmp_path / "t"), fmt="delta", delta_writer="spark")


def test_missing_tables_raise_table_error(spark, tmp_path):
    missing = str(tmp_path / "missing")
    for fmt in ("parquet", "delta"):
        assert not table_exists(missing, fmt=fmt)
        with pytest.raises(TableError, match=f"{missing}.*not been written yet"):
            read_table(spark, missing, fmt=fmt)


# ---- Parquet --------------------------------------------------------------------------------------------

def test_parquet_append_and_overwrite_round_trip(spark, tmp_path):
    path = str(tmp_path / "pq")
    first = write_table(spark.createDataFrame([(1, "a"), (2, "b")], "id long, split string"), path, fmt="parquet",
                        partition_by=["split"])
    assert (first.rows, first.files, first.version, first.writer) == (2, 2, None, "spark-parquet")
    snap1 = read_table(spark, path, fmt="parquet")
    second = write_table(spark.createDataFrame([(3, "a")], "id long, split string"), path, fmt="parquet",
                         partition_by=["split"])
    assert (second.rows, second.files) == (1, 1)
    snap2 = read_table(spark, path, fmt="parquet")
    assert sorted(r["id"] for r in snap2.df.collect()) == [1, 2, 3]
    assert snap2.fingerprint != snap1.fingerprint
    assert read_table(spark, path, fmt="parquet").fingerprint == snap2.fingerprint
    third = write_table(spark.createDataFrame([(9, "c")], "id long, split string"), path, fmt="parquet",
                        mode="overwrite", partition_by=["split"])
    assert third.rows == 1
    assert [tuple(r) for r in read_table(spark, path, fmt="parquet").df.collect()] == [(9, "c")]
    assert table_exists(path, fmt="parquet")


# ---- Delta through delta-rs -----------------------------------------------------------------------------

def test_delta_rs_versions_and_counts(wide_table):
    path, results, _ = wide_table
    assert [(r.version, r.mode, r.rows, r.writer) for r in results] == [
        (0, "append", 2, "delta-rs"), (1, "append", 1, "delta-rs"), (2, "overwrite", 1, "delta-rs")]
    assert results[0].files == 2  # one file per partition
    from deltalake import DeltaTable

    assert DeltaTable(path).version() == 2


def test_delta_overwrite_keeps_only_new_rows_and_time_travel_returns_old(spark, wide_table):
    path, _, _ = wide_table
    latest = read_table(spark, path, fmt="delta")
    assert latest.version == 2
    assert spark_rows(latest.df) == expected(V2)
    assert spark_rows(read_table(spark, path, fmt="delta", version=0).df) == expected(V0)
    assert spark_rows(read_table(spark, path, fmt="delta", version=1).df) == expected(V0 + V1)


def test_delta_read_has_table_schema_with_typed_partition_columns(spark, wide_table):
    path, _, _ = wide_table
    df = read_table(spark, path, fmt="delta", version=0).df
    assert df.columns == WIDE.names  # partition columns stay where the table schema puts them
    assert [f.dataType for f in df.schema.fields] == [f.dataType for f in WIDE.fields]
    assert sorted((r["split"], r["shard"]) for r in df.collect()) == [("a:b c/%d", None), ("train", 0)]


def test_delta_rs_engine_agrees_with_spark_read(spark, wide_table):
    path, _, _ = wide_table
    for version in (0, 1, 2):
        assert delta_rs_rows(path, version) == spark_rows(read_table(spark, path, fmt="delta", version=version).df)
    assert delta_rs_rows(path, 0) == expected(V0)


def test_delta_files_store_utc_micros_and_conf_is_restored(spark, wide_table):
    path, _, conf_before = wide_table
    files = sorted(parquet_files(path))
    assert files and all(pq.read_schema(f).field("ts").type == pa.timestamp("us", tz="UTC") for f in files)
    assert all("split" not in pq.read_schema(f).names for f in files)  # partition values live in the log
    assert spark.conf.get(delta_rs.TIMESTAMP_CONF) == conf_before


def test_delta_files_are_canonical_and_staging_is_gone(wide_table):
    path, _, _ = wide_table
    rel = sorted(str(Path(f).relative_to(path)) for f in parquet_files(path))
    assert rel[0].startswith("split=a%3Ab c%2F%25d/shard=__HIVE_DEFAULT_PARTITION__/part-")
    assert all(Path(r).name.startswith("part-") and r.count("/") == 2 for r in rel)
    assert not [p for p in Path(path).iterdir() if p.name.startswith("_dlspark_staging")]
    assert unreferenced_files(path) == set()


def test_delta_fingerprint_tracks_data(spark, wide_table):
    path, _, _ = wide_table
    prints = [read_table(spark, path, fmt="delta", version=v).fingerprint for v in (0, 1, 2)]
    assert len(set(prints)) == 3
    assert read_table(spark, path, fmt="delta", version=1).fingerprint == prints[1]
    assert read_table(spark, f"file:{path}", fmt="delta").fingerprint == prints[2]


def test_delta_missing_version_lists_latest(spark, wide_table):
    path, _, _ = wide_table
    with pytest.raises(TableError, match="no version 7; its versions run from 0 to 2"):
        read_table(spark, path, fmt="delta", version=7)
    assert table_exists(path, fmt="delta")


def test_delta_empty_writes(spark, tmp_path):
    path = str(tmp_path / "empty")
    empty = spark.createDataFrame([], "id long, name string")
    created = write_table(empty, path, fmt="delta", delta_writer="delta-rs")
    assert (created.version, created.files, created.rows) == (0, 0, 0)  # the table exists, with no files
    assert read_table(spark, path, fmt="delta").df.schema.simpleString() == "struct<id:bigint,name:string>"
    assert write_table(empty, path, fmt="delta", delta_writer="delta-rs").version == 0  # no commit
    one = spark.createDataFrame([(1, "x")], "id long, name string")
    assert write_table(one, path, fmt="delta", delta_writer="delta-rs").version == 1
    cleared = write_table(empty, path, fmt="delta", mode="overwrite", delta_writer="delta-rs")
    assert (cleared.version, cleared.rows) == (2, 0)
    snap = read_table(spark, path, fmt="delta")
    assert snap.df.count() == 0 and snap.df.schema.simpleString() == "struct<id:bigint,name:string>"
    assert [tuple(r) for r in read_table(spark, path, fmt="delta", version=1).df.collect()] == [(1, "x")]


def test_delta_append_with_other_schema_or_partitioning_is_refused(spark, tmp_path):
    from deltalake import write_deltalake

    path = str(tmp_path / "t")
    write_deltalake(path, pa.table({"id": pa.array([1], pa.int64()), "split": ["a"]}), partition_by=["split"])
    with pytest.raises(TableError, match="changed types id: long -> integer"):
        write_table(spark.createDataFrame([(1, "a")], "id int, split string"), path, fmt="delta",
                    partition_by=["split"], delta_writer="delta-rs")
    with pytest.raises(TableError, match=r"partitioned by \['split'\], this write by \[\]"):
        write_table(spark.createDataFrame([(1, "a")], "id long, split string"), path, fmt="delta",
                    delta_writer="delta-rs")


# ---- conflicts ------------------------------------------------------------------------------------------

@pytest.fixture
def racing(monkeypatch):
    """Make a concurrent delta-rs commit land between write_table's file staging and its commit."""
    def arm(path: str, mode: str):
        from deltalake import write_deltalake

        real = delta_log.publish_staged

        def publish_then_race(*args, **kwargs):
            actions = real(*args, **kwargs)
            write_deltalake(path, pa.table({"id": pa.array([99], pa.int64()), "split": ["other"]}),
                            mode=mode, partition_by=["split"])
            return actions

        monkeypatch.setattr(delta_log, "publish_staged", publish_then_race)
    return arm


@pytest.fixture
def base_table(tmp_path):
    from deltalake import write_deltalake

    path = str(tmp_path / "race")
    write_deltalake(path, pa.table({"id": pa.array([1, 2], pa.int64()), "split": ["a", "b"]}), partition_by=["split"])
    return path


@pytest.mark.parametrize(("ours", "theirs"), [("overwrite", "append"), ("overwrite", "overwrite"),
                                              ("append", "overwrite")])
def test_conflicting_commit_raises_and_leaves_no_files(spark, base_table, racing, ours, theirs):
    from deltalake import DeltaTable

    racing(base_table, theirs)
    df = spark.createDataFrame([(7, "a")], "id long, split string")
    with pytest.raises(TableConflictError, match=f"{ours} to .* read version 0, but another writer committed"):
        write_table(df, base_table, fmt="delta", mode=ours, partition_by=["split"], delta_writer="delta-rs")
    assert DeltaTable(base_table).version() == 1  # only the concurrent writer's commit
    assert unreferenced_files(base_table) == set()  # the files this write had moved in were deleted
    assert 7 not in {r["id"] for r in read_table(spark, base_table, fmt="delta").df.collect()}


def test_concurrent_create_conflicts(spark, tmp_path, racing):
    path = str(tmp_path / "new")
    racing(path, "append")  # the other writer creates the table first
    df = spark.createDataFrame([(7, "a")], "id long, split string")
    with pytest.raises(TableConflictError, match="read that no table existed"):
        write_table(df, path, fmt="delta", partition_by=["split"], delta_writer="delta-rs")
    assert sorted(r["id"] for r in read_table(spark, path, fmt="delta").df.collect()) == [99]
    assert unreferenced_files(path) == set()


def test_concurrent_blind_appends_both_commit(spark, base_table, racing):
    racing(base_table, "append")
    df = spark.createDataFrame([(7, "a")], "id long, split string")
    result = write_table(df, base_table, fmt="delta", partition_by=["split"], delta_writer="delta-rs")
    assert result.version == 2  # rebased over the concurrent append (version 1)
    ids = sorted(r["id"] for r in read_table(spark, base_table, fmt="delta").df.collect())
    assert ids == [1, 2, 7, 99]


# ---- Delta through delta-spark (needs its jars) ---------------------------------------------------------

def test_spark_delta_writer_round_trip(spark, tmp_path):
    from dlspark.spark.session import delta_spark_available

    if not delta_spark_available(spark):
        pytest.skip("delta-spark jars are not on the classpath: Spark's native Delta writer cannot run here")
    path = str(tmp_path / "native")
    first = write_table(spark.createDataFrame([(1, "a")], "id long, split string"), path, fmt="delta",
                        partition_by=["split"], delta_writer="spark")
    second = write_table(spark.createDataFrame([(2, "b")], "id long, split string"), path, fmt="delta",
                         mode="overwrite", partition_by=["split"], delta_writer="spark")
    assert (first.version, second.version, second.writer) == (0, 1, "spark-delta")
    assert [tuple(r) for r in read_table(spark, path, fmt="delta").df.collect()] == [(2, "b")]
    assert [tuple(r) for r in read_table(spark, path, fmt="delta", version=0).df.collect()] == [(1, "a")]


def _staged(sink: TableSink, table: pa.Table, name: str = "part-0.parquet") -> tuple:
    """A sink's staging area holding one worker-written file of ``table``; (area, the file's URI)."""
    area = sink.on_write_start()
    folder = Path(area.uri) / "split=train"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, folder / name)
    return area, f"file://{folder}/{name}"


def test_sink_commits_only_the_named_files_and_removes_its_staging(spark, tmp_path):
    for fmt in ("parquet", "delta"):
        sink = TableSink(str(tmp_path / fmt), fmt=fmt, schema=pa.schema([("a", pa.int64())]), delta_writer="delta-rs")
        area, kept = _staged(sink, pa.table({"a": pa.array([1, 2], pa.int64())}))
        _staged_also = Path(area.uri) / "split=train" / "part-retry.parquet"  # a failed task attempt's file
        pq.write_table(pa.table({"a": pa.array([9], pa.int64())}), _staged_also)
        result = sink.commit(spark, area, [kept])
        assert (result.rows, result.format) == (2, fmt)
        assert sorted(r["a"] for r in read_table(spark, sink.uri, fmt=fmt).df.collect()) == [1, 2]
        assert not Path(area.uri).exists()


def test_sink_abort_removes_what_was_staged(tmp_path):
    sink = TableSink(str(tmp_path / "t"), fmt="parquet", schema=pa.schema([("a", pa.int64())]))
    area, _ = _staged(sink, pa.table({"a": pa.array([1], pa.int64())}))
    sink.abort(area)
    assert not Path(area.uri).exists() and not table_exists(sink.uri, fmt="parquet")


def test_sink_refuses_bad_arguments(tmp_path):
    schema = pa.schema([("a", pa.int64())])
    with pytest.raises(ValueError, match="fmt='csv' is not supported"):
        TableSink(str(tmp_path), fmt="csv", schema=schema)
    with pytest.raises(ValueError, match="relative"):
        TableSink("rel/path", fmt="parquet", schema=schema)


def test_publish_to_a_parquet_table_with_other_columns_is_refused(spark, tmp_path):
    """A Parquet table has no schema log: staged files with other columns must not be appended silently."""
    sink = TableSink(str(tmp_path / "t"), fmt="parquet", schema=pa.schema([("a", pa.int64())]))
    sink.commit(spark, *_one(_staged(sink, pa.table({"a": pa.array([1, 2], pa.int64())}))))
    assert sink.commit(spark, *_one(_staged(sink, pa.table({"a": pa.array([3], pa.int64())})))).rows == 1
    area, other = _staged(sink, pa.table({"record_id": ["x"], "a": pa.array([4], pa.int64())}))
    with pytest.raises(TableError, match=r"has columns \['a'\] but this run writes \['record_id', 'a'\].*new output path"):
        sink.commit(spark, area, [other])
    assert sorted(r["a"] for r in spark.read.parquet(sink.uri).collect()) == [1, 2, 3]
    assert not Path(area.uri).exists()  # staging removed on failure too


def _one(staged: tuple) -> tuple:
    area, uri = staged
    return area, [uri]


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_delete_where_removes_exactly_the_matching_rows(spark, tmp_path, fmt):
    path = str(tmp_path / fmt)
    rows = [(1, "a", "k1"), (2, "a", "k2"), (3, "b", "k1"), (4, "b", "k3")]
    write_table(spark.createDataFrame(rows, "id long, part string, key string").coalesce(1), path, fmt=fmt,
                partition_by=["part"], delta_writer="delta-rs")
    assert delete_where(spark, path, fmt=fmt, column="key", value="k1", delta_writer="delta-rs") == 2
    assert sorted(r["id"] for r in read_table(spark, path, fmt=fmt).df.collect()) == [2, 4]
    assert delete_where(spark, path, fmt=fmt, column="key", value="it's absent", delta_writer="delta-rs") == 0
    assert delete_where(spark, path, fmt=fmt, column="part", value="b", delta_writer="delta-rs") == 1
    assert sorted(r["id"] for r in read_table(spark, path, fmt=fmt).df.collect()) == [2]
    with pytest.raises(TableError, match="has no column 'nope'"):
        delete_where(spark, path, fmt=fmt, column="nope", value=1)
    assert delete_where(spark, str(tmp_path / "missing"), fmt=fmt, column="key", value="k1") == 0

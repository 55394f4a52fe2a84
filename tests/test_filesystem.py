"""dlspark.filesystem: one helper for every location (pure, no Spark)."""
from __future__ import annotations

import pytest

from dlspark import filesystem as fs


def test_qualify_gives_hadoops_local_form():
    assert fs.qualify("/data/x") == "file:/data/x"
    assert fs.qualify("file:///data/x") == fs.qualify("file:/data/x") == fs.qualify("file://localhost/data/x") == "file:/data/x"
    assert fs.qualify("s3a://bucket/k") == "s3a://bucket/k"
    with pytest.raises(fs.FileSystemError, match="relative path"):
        fs.qualify("data/x")
    with pytest.raises(fs.FileSystemError, match="must be local"):
        fs.resolve("file://otherhost/data/x")


def test_from_spark_path_decodes_what_spark_encodes():
    assert fs.from_spark_path("file:///t/with%20space.jpg") == "file:/t/with space.jpg"
    assert fs.from_spark_path("file:/t/pct%2520x%23%5B1%5D.jpg") == "file:/t/pct%20x#[1].jpg"
    assert fs.from_spark_path("file:/t/plus+1.jpg") == "file:/t/plus+1.jpg"  # a "+" is a plus, not a space
    assert fs.from_spark_path("hdfs://nn:8020/a%20b") == "hdfs://nn:8020/a b"


def test_resolve_maps_hadoop_schemes_and_names_the_backend_to_install():
    local, path = fs.resolve("file:/tmp/x/")
    assert path == "/tmp/x" and "file" in local.protocol
    with pytest.raises(fs.FileSystemError, match="install the fsspec backend for 'nosuchscheme'"):
        fs.resolve("nosuchscheme://bucket/x")


def test_listing_is_by_folder_and_keeps_every_name(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for rel in (".hidden", "_under", "a/with space.jpg", "a/deep/q?.jpg", "a/deep/zero"):
        (tmp_path / rel).write_bytes(b"" if rel.endswith("zero") else b"xy")
    folders = list(fs.list_directories(str(tmp_path)))
    found = {uri.removeprefix(f"file:{tmp_path}/"): st.size for folder in folders for uri, st in folder}
    assert found == {".hidden": 2, "_under": 2, "a/with space.jpg": 2, "a/deep/q?.jpg": 2, "a/deep/zero": 0}
    assert len(folders) == 3  # one list per folder: memory bounded by the largest folder
    flat = {uri for folder in fs.list_directories(str(tmp_path), recursive=False) for uri, _ in folder}
    assert flat == {f"file:{tmp_path}/.hidden", f"file:{tmp_path}/_under"}
    with pytest.raises(FileNotFoundError):
        list(fs.list_directories(str(tmp_path / "missing")))


def test_status_read_write_and_remove(tmp_path):
    target = f"file:{tmp_path}/sub/a #1.txt"
    assert fs.status(target) is None and fs.read_text(target) is None
    fs.write_text(target, "héllo")
    assert fs.read_text(target) == "héllo" and fs.read_bytes(target) == "héllo".encode()
    assert fs.status(target).size == len("héllo".encode()) and fs.exists(target)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a #1.txt"]  # the temp file was moved, not left
    fs.remove(f"{tmp_path}/sub")
    assert not (tmp_path / "sub").exists()
    fs.remove(f"{tmp_path}/sub")  # already gone: no error


def test_listing_and_status_agree_to_the_millisecond(tmp_path):
    """A listed file's time must equal what status() says of the unchanged file (else it reads as 'changed'):
    both truncate the same nanoseconds to Hadoop's milliseconds, however the float seconds would round."""
    path = tmp_path / "x.jpg"
    path.write_bytes(b"abc")
    import os

    os.utime(path, ns=(1_764_633_529_807_999_700, 1_764_633_529_807_999_700))
    [[(uri, listed)]] = list(fs.list_directories(str(tmp_path)))
    assert listed == fs.status(uri) and listed.modified.microsecond == 807_000


def test_listing_through_fsspec_for_schemes_pyarrow_lacks():
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe("/dlspark-test/a/b.txt", b"12")
    memory.pipe("/dlspark-test/.c", b"3")
    found = {uri: st.size for folder in fs.list_directories("memory://dlspark-test") for uri, st in folder}
    assert found == {"memory://dlspark-test/.c": 1, "memory://dlspark-test/a/b.txt": 2}
    assert fs.status("memory://dlspark-test/a/b.txt").size == 2 and fs.status("memory://dlspark-test/nope") is None
    memory.rm("/dlspark-test", recursive=True)


def test_pyarrow_filesystems_are_made_once_per_process():
    """A worker resolves every file it reads: the pyarrow filesystem (a client, for object stores) is reused."""
    first, path = fs.arrow_filesystem("file:///tmp/a b")
    again, other = fs.arrow_filesystem("/tmp/c")
    assert first is again and (path, other) == ("/tmp/a b", "/tmp/c")
    assert fs.arrow_filesystem("memory://x") is None  # no pyarrow filesystem: callers use resolve()

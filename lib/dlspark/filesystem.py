"""The one filesystem helper: every file, folder and table location of the project goes through here.

A location is a local path or a URI in the form Hadoop and Spark print it: ``/data/x``, ``file:/data/x``,
``file:///data/x``, ``hdfs://nn/x``, ``s3a://bucket/x``, ``abfss://c@acct.dfs.core.windows.net/x``,
``gs://bucket/x``. :func:`resolve` opens it with fsspec (``s3a``/``s3n`` are S3, ``file:`` URIs are local
paths); :func:`arrow_filesystem` gives pyarrow's own filesystem where it has one for the scheme (local,
HDFS, S3, GCS), which reads and writes Parquet faster than an fsspec file object.

Locations are kept as the real names, qualified (``file:/x/with space.jpg``, the form ``binaryFile``'s
``path`` column and the ingest ledger hold). Spark's ``inputFiles()`` and ``_metadata.file_path`` give them
URI-encoded (``with%20space.jpg``; a literal ``%`` is ``%25``): :func:`from_spark_path` decodes them.

Pure code (fsspec + pyarrow): no Spark, no py4j.
"""
from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Iterable, Iterator
from urllib.parse import unquote, urlparse

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem
    from pyarrow import fs as pafs

log = logging.getLogger(__name__)

_ALIASES = {"s3a": "s3", "s3n": "s3"}


class FileSystemError(OSError):
    """A location cannot be opened: no filesystem implementation for its scheme, or a malformed location."""


@dataclass(frozen=True)
class FileStatus:
    """What a listing knows of a file: size in bytes and modification time (UTC)."""

    size: int
    modified: datetime


def resolve(uri: str) -> tuple["AbstractFileSystem", str]:
    """(fsspec filesystem, path within it) for ``uri``; FileSystemError names the package to install."""
    import fsspec.core

    location = _fsspec_form(uri)
    try:
        fs, path = fsspec.core.url_to_fs(location)
    except (ImportError, ValueError) as err:
        scheme = urlparse(location).scheme
        raise FileSystemError(f"no filesystem for {uri!r} ({err}); install the fsspec backend for {scheme!r} "
                              "(s3fs for s3/s3a, gcsfs for gs, adlfs for abfs/abfss, pyarrow's HDFS for hdfs)") from err
    return fs, path.rstrip("/") if len(path) > 1 else path


def arrow_filesystem(uri: str) -> "tuple[pafs.FileSystem, str] | None":
    """pyarrow's native (filesystem, path) for ``uri``: local paths always; HDFS, S3, GCS when pyarrow opens
    them (credentials from the environment). None where pyarrow has no filesystem for it: use :func:`resolve`."""
    location = _fsspec_form(uri)
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return _arrow_filesystem_for("file", ""), _local_path(location)
    if parsed.scheme not in ("hdfs", "s3", "gs", "gcs"):
        return None
    fs = _arrow_filesystem_for(parsed.scheme, parsed.netloc)
    if fs is None:
        return None
    # pyarrow's own path forms: HDFS paths from the root, object stores "bucket/key"
    return fs, parsed.path if parsed.scheme == "hdfs" else f"{parsed.netloc}{parsed.path}".rstrip("/")


@lru_cache(maxsize=32)
def _arrow_filesystem_for(scheme: str, netloc: str) -> "pafs.FileSystem | None":
    """One pyarrow filesystem per (scheme, host or bucket) and process: creating one builds a client (and
    resolves credentials), which a worker reading thousands of files must not do per file."""
    from pyarrow import fs as pafs

    if scheme == "file":
        return pafs.LocalFileSystem()
    try:
        return pafs.FileSystem.from_uri(f"{scheme}://{netloc}/")[0]
    except (OSError, ValueError) as err:  # ArrowInvalid is a ValueError; a missing libhdfs an OSError
        log.debug("pyarrow cannot open %s://%s (%s); using fsspec", scheme, netloc, err)
        return None


def from_spark_path(path: str) -> str:
    """The real name behind a path as Spark lists it (``file:/x/with%20space.jpg`` -> ``file:/x/with space.jpg``)."""
    scheme, sep, rest = path.partition(":")
    if not sep or "/" in scheme:
        return unquote(path)
    return qualify(f"{scheme}:{unquote(rest)}")


def qualify(uri: str) -> str:
    """``uri`` with a scheme, as Hadoop qualifies a local path: ``/x`` and ``file:///x`` -> ``file:/x``."""
    parsed = urlparse(uri)
    if parsed.scheme == "" and uri.startswith("/"):
        return f"file:{os.path.normpath(uri)}"
    if parsed.scheme == "file":
        return f"file:{_local_path(uri)}"
    if parsed.scheme == "":
        raise FileSystemError(f"{uri!r} is a relative path; pass an absolute path or a URI (file:/, hdfs://, s3a://)")
    return uri


def status(uri: str) -> FileStatus | None:
    """Size and modification time (ms, as Hadoop has it) of the file at ``uri``, or None when it does not exist."""
    native = arrow_filesystem(uri)
    if native is not None:
        from pyarrow import fs as pafs

        fs, path = native
        info = fs.get_file_info(path)
        return None if info.type == pafs.FileType.NotFound else _arrow_status(info)
    fs, path = resolve(uri)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    return FileStatus(int(info.get("size") or 0), _modified(fs, path, info))


def read_bytes(uri: str) -> bytes:
    """The whole content of the file at ``uri`` (FileNotFoundError when it is gone)."""
    native = arrow_filesystem(uri)
    if native is not None:
        fs, path = native
        with fs.open_input_stream(path) as handle:
            return handle.read()
    fs, path = resolve(uri)
    with fs.open(path, "rb") as handle:
        return handle.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri``, creating its folder."""
    with open_file(uri, "wb") as handle:
        handle.write(data)


def open_file(uri: str, mode: str = "rb", **kwargs: object):  # noqa: ANN201 - a file object of the filesystem
    """Open the file at ``uri`` (fsspec's ``open``: ``"rb"``, ``"wb"``, ``"r"``, ``"w"``, ...)."""
    fs, path = resolve(uri)
    if "w" in mode:
        fs.makedirs(path.rsplit("/", 1)[0] or "/", exist_ok=True)
    return fs.open(path, mode, **kwargs)


Entry = tuple[str, bool, "FileStatus | None"]  # (path, is a folder, status of a file)


def list_directories(uri: str, *, recursive: bool = True) -> "Iterator[list[tuple[str, FileStatus]]]":
    """The files under the folder ``uri``, one list per folder (memory is bounded by the largest folder, not by
    the tree): ``(location, status)`` with locations in ``uri``'s own scheme and form (``s3a://b/x/y.jpg``).
    Every name is listed, hidden ones (``.x``, ``_x``) included; FileNotFoundError when ``uri`` does not exist.
    Statuses come from the same filesystem as :func:`status`'s, so an unchanged file compares equal."""
    prefix = uri.rstrip("/") if urlparse(uri).scheme and not uri.startswith("file:") else qualify(uri).rstrip("/")
    native = arrow_filesystem(uri)
    root, ls = _arrow_lister(*native) if native is not None else _fsspec_lister(*resolve(uri))
    pending = [root]
    while pending:
        folder = pending.pop()
        files: list[tuple[str, FileStatus]] = []
        for name, is_dir, st in sorted(ls(folder), key=lambda e: e[0]):
            if is_dir:
                if recursive and name != folder:
                    pending.append(name)
            elif st is not None:
                files.append((prefix + name[len(root):], st))
        yield files


def _arrow_lister(fs: "pafs.FileSystem", root: str) -> "tuple[str, Callable[[str], list[Entry]]]":
    from pyarrow import fs as pafs

    root = root.rstrip("/") or "/"
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{root} does not exist or is not a folder")

    def ls(folder: str) -> list[Entry]:
        infos = fs.get_file_info(pafs.FileSelector(folder, recursive=False))
        return [(i.path.rstrip("/"), i.type == pafs.FileType.Directory,
                 None if i.type == pafs.FileType.Directory else _arrow_status(i)) for i in infos]
    return root, ls


def _fsspec_lister(fs: "AbstractFileSystem", root: str) -> "tuple[str, Callable[[str], list[Entry]]]":
    if not fs.isdir(root):
        raise FileNotFoundError(f"{root} does not exist or is not a folder")

    def ls(folder: str) -> list[Entry]:
        return [(i["name"].rstrip("/"), i.get("type") == "directory", None if i.get("type") == "directory"
                 else FileStatus(int(i.get("size") or 0), _modified(fs, i["name"], i))) for i in fs.ls(folder, detail=True)]
    return root, ls


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return bool(fs.exists(path))


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.makedirs(path, exist_ok=True)


def write_text(uri: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``uri``, creating its folder, atomically where the filesystem allows."""
    fs, path = resolve(uri)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with open_file(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    fs.mv(tmp, path)


def read_text(uri: str) -> str | None:
    """The UTF-8 text at ``uri``, or None when the file does not exist."""
    fs, path = resolve(uri)
    if not fs.exists(path):
        return None
    with fs.open(path, "r", encoding="utf-8") as handle:
        return handle.read()


def remove(uri: str) -> None:
    """Delete the file or folder at ``uri`` (no error when it is already gone)."""
    fs, path = resolve(uri)
    remove_paths(fs, [path])


def remove_paths(fs: "AbstractFileSystem", paths: Iterable[str]) -> None:
    """Delete files/folders of ``fs``, logging (not raising) what cannot be deleted."""
    for path in paths:
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not remove %s: %s", path, err)


def full_uri(fs: "AbstractFileSystem", path: str) -> str:
    """``path`` of ``fs`` as a location :func:`resolve` opens again (local paths stay plain paths)."""
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _is_local(fs: "AbstractFileSystem") -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _fsspec_form(uri: str) -> str:
    if not isinstance(uri, str) or not uri:
        raise FileSystemError(f"a location must be a non-empty string, got {uri!r}")
    scheme, sep, rest = uri.partition("://")
    if sep and scheme in _ALIASES:
        return f"{_ALIASES[scheme]}://{rest}"
    if uri.startswith("file:"):
        return _local_path(uri)
    return uri


def _local_path(uri: str) -> str:
    """``file:/x``, ``file:///x``, ``file://localhost/x`` and ``/x`` -> ``/x`` (no decoding: names are real)."""
    if not uri.startswith("file:"):
        return uri
    rest = uri[len("file:"):]
    if rest.startswith("//"):
        authority, _, path = rest[2:].partition("/")
        if authority not in ("", "localhost"):
            raise FileSystemError(f"{uri!r} names host {authority!r}; a file: URI must be local (file:/path)")
        rest = "/" + path
    return "/" + rest.lstrip("/")


def _arrow_status(info: "pafs.FileInfo") -> FileStatus:
    ms = (info.mtime_ns or 0) // 1_000_000
    return FileStatus(int(info.size or 0), datetime.fromtimestamp(ms / 1000, timezone.utc))


def _modified(fs: "AbstractFileSystem", path: str, info: dict) -> datetime:
    """An fsspec entry's modification time, truncated to ms (Hadoop's precision) after rounding to µs."""
    return _ms(_raw_modified(fs, path, info))


def _ms(value: datetime) -> datetime:
    value = value.astimezone(timezone.utc)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def _raw_modified(fs: "AbstractFileSystem", path: str, info: dict) -> datetime:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, timezone.utc)
    try:
        return fs.modified(path)
    except (NotImplementedError, OSError):
        return datetime.fromtimestamp(0, timezone.utc)

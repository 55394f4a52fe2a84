"""The file layout every table engine shares: Hive partition folders, data files, footers, fingerprints.

Parquet tables and Delta tables written by dlspark lay their files out the same way
(``<table>/<col>=<escaped value>/part-<uuid>.parquet``; ``_``/``.``-prefixed names are invisible to readers).
Pure code (fsspec + pyarrow).
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow.parquet as pq
    from fsspec import AbstractFileSystem

HIVE_DEFAULT_PARTITION = "__HIVE_DEFAULT_PARTITION__"
# The characters Spark/Hive escape in partition directory names (ExternalCatalogUtils.escapePathName).
_ESCAPED = frozenset([chr(c) for c in range(0x20)] + list("\"#%'*/:=?\\\x7f{[]^"))


def escape_partition_value(value: str | None) -> str:
    """Hive directory form of a partition value: ``%XX`` escapes; None and "" -> the default partition."""
    if value is None or value == "":
        return HIVE_DEFAULT_PARTITION
    return "".join(f"%{ord(c):02X}" if c in _ESCAPED else c for c in value)


def unescape_partition_value(text: str) -> str | None:
    """Inverse of :func:`escape_partition_value`."""
    if text == HIVE_DEFAULT_PARTITION:
        return None
    out, i = [], 0
    while i < len(text):
        code = text[i + 1:i + 3]
        if text[i] == "%" and len(code) == 2 and all(c in "0123456789abcdefABCDEF" for c in code):
            out.append(chr(int(code, 16)))
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def partition_dir(values: Mapping[str, str | None]) -> str:
    """``col=val/col2=val2/`` (escaped) for ``values`` in their order; "" when unpartitioned."""
    return "".join(f"{escape_partition_value(c)}={escape_partition_value(v)}/" for c, v in values.items())


def partition_values_from_dir(rel_dir: str, columns: Sequence[str]) -> dict[str, str | None]:
    """Parse ``col=val/...`` written by Spark's ``partitionBy(*columns)``; ValueError on another layout."""
    pairs = [p.split("=", 1) for p in rel_dir.strip("/").split("/") if p]
    if any(len(p) != 2 for p in pairs) or [unescape_partition_value(p[0]) for p in pairs] != list(columns):
        raise ValueError(f"directory {rel_dir!r} does not match partition columns {list(columns)}")
    return {name: unescape_partition_value(val) for name, (_, val) in zip(columns, pairs)}


def fingerprint(files: Iterable[tuple[str, int]]) -> str:
    """First 16 hex chars of sha256 over the sorted ``(relative path, size)`` pairs of the files read."""
    digest = hashlib.sha256()
    for rel, size in sorted(files):
        digest.update(f"{rel}\t{size}\n".encode())
    return digest.hexdigest()[:16]


def data_files(fs: AbstractFileSystem, root: str) -> dict[str, int]:
    """Path -> size of the files Spark would read under ``root`` (no ``_x``/``.x`` names; ``_c=v`` dirs kept)."""
    found = fs.find(root, detail=True)
    return {p: int(info["size"]) for p, info in found.items() if not is_hidden(p[len(root) + 1:])}


def is_hidden(rel: str) -> bool:
    return any(part.startswith(".") or (part.startswith("_") and "=" not in part) for part in rel.split("/"))


def read_footer(fs: AbstractFileSystem, path: str) -> pq.FileMetaData:
    """The Parquet footer of ``path``."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle:
        return pq.read_metadata(handle)


def first_data_file(fs: "AbstractFileSystem", root: str) -> str | None:
    """One data file of the table at ``root`` (stops at the first, in name order), or None."""
    for folder, dirs, names in fs.walk(root):
        rel = folder[len(root):].strip("/")
        dirs[:] = sorted(d for d in dirs if not is_hidden(f"{rel}/{d}".strip("/")))
        for name in sorted(names):
            if name.endswith(".parquet") and not is_hidden(f"{rel}/{name}".strip("/")):
                return f"{folder.rstrip('/')}/{name}"
    return None

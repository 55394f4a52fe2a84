"""Resolve configured paths against ``paths.data_dir``. Pure code."""
from __future__ import annotations

import os
import re

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def is_uri(path: str) -> bool:
    """True for ``scheme:...`` paths (file:, hdfs://, s3a://, dbfs:/, abfss://), false for plain paths."""
    return bool(_SCHEME.match(path)) and not re.match(r"^[a-zA-Z]:\\", path)


def resolve_path(data_dir: str, path: str) -> str:
    """``path`` if it is a URI or absolute, else ``data_dir/path``; local results are made absolute."""
    if is_uri(path) or os.path.isabs(path):
        return path
    if is_uri(data_dir):
        return f"{data_dir.rstrip('/')}/{path}"
    return os.path.abspath(os.path.join(data_dir, path))

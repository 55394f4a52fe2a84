"""Slice columns of a scored table and their aggregate, in one Spark job (the judging is ``monitoring.slices``).

Derived slices (``monitor.slices`` names them; null = every one the table can give):

- ``label``, ``prediction``: the true and the predicted class;
- ``text_length``: attended tokens (``attention_mask``) in buckets 0-8 / 9-16 / 17-32 / 33+, else characters of
  ``text`` in 0-40 / 41-80 / 81-140 / 141+;
- ``has_url``, ``has_mention``: whether ``text`` holds a link (``http(s)://``, ``www.``) or an ``@user``;
- ``brightness``: the mean pixel value in buckets 0-63 / 64-127 / 128-191 / 192-255 (needs the ``brightness``
  feature the monitor computes from ``pixels``);
- ``source_folder``: the folder a row's file was ingested from (``source_path``);
- any other column of the table (a passthrough such as ``split`` or a user's ``region``), as its string value.

Rows that failed to score are left out of the slices (the drift report counts them); a null value is ``(null)``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

from pyspark.sql import functions as F

from dlspark.monitoring.slices import CONFIDENCE_BINS, OVERALL, BinCounts

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

DERIVED = ("label", "prediction", "text_length", "has_url", "has_mention", "brightness", "source_folder")
URL_PATTERN, MENTION_PATTERN = r"(?i)(https?://|www\.)", r"(^|[^\w])@\w"


def _buckets(col: Column, edges: Sequence[int]) -> Column:
    """``lo-hi`` labels of integer buckets with upper bounds ``edges``, then ``<last+1>+``."""
    out = F.when(col.isNull(), F.lit(None))
    lo = 0
    for hi in edges:
        out = out.when(col <= hi, F.lit(f"{lo}-{hi}"))
        lo = hi + 1
    return out.otherwise(F.lit(f"{lo}+"))


def available_slices(columns: Sequence[str]) -> dict[str, Column]:
    """Every derived slice the columns allow, name -> its column expression."""
    out: dict[str, Column] = {}
    for name in ("label", "prediction"):
        if name in columns:
            out[name] = F.col(name)
    if "attention_mask" in columns:
        tokens = F.aggregate("attention_mask", F.lit(0), lambda acc, x: acc + x)
        out["text_length"] = _buckets(tokens, (8, 16, 32)).alias("text_length")
    elif "text" in columns:
        out["text_length"] = _buckets(F.length("text"), (40, 80, 140))
    if "text" in columns:
        out["has_url"] = F.col("text").rlike(URL_PATTERN)
        out["has_mention"] = F.col("text").rlike(MENTION_PATTERN)
    if "brightness" in columns:
        out["brightness"] = _buckets(F.floor("brightness").cast("int"), (63, 127, 191)).alias("brightness")
    if "source_path" in columns:
        out["source_folder"] = F.element_at(F.split(F.col("source_path"), "/"), -2)
    return out


def slice_columns(columns: Sequence[str], requested: Sequence[str] | None) -> dict[str, Column]:
    """The slices to compute: ``requested`` (derived names or table columns), or every derived one available.

    Raises
    ------
    ValueError
        A requested slice the table cannot give, naming the ones it can.
    """
    derived = available_slices(columns)
    if requested is None:
        return derived
    out = {}
    for name in requested:
        if name in derived:
            out[name] = derived[name]
        elif name in columns:
            out[name] = F.col(name)
        else:
            raise ValueError(f"monitor.slices: {name!r} is neither a derived slice this table allows "
                             f"({sorted(derived)}) nor one of its columns ({sorted(columns)})")
    return out


def aggregate_slices(df: DataFrame, slices: Mapping[str, Column], expected: Mapping[str, str],
                     positive_class: str | None) -> list[BinCounts]:
    """Counts per (slice, value, confidence bin) of the scored rows of ``df``, plus the whole table as
    (``all``, ``all``): one Spark job; the result is small (slices x values x bins).

    ``expected`` maps a ``label`` to the model class it means (labels of no class are unlabelled rows).
    """
    scored = df.where(F.col("prediction").isNotNull() & (F.col("error").isNull() if "error" in df.columns else F.lit(True)))
    mapping = F.create_map(*[F.lit(x) for pair in expected.items() for x in pair]) if expected else None
    truth = F.try_element_at(mapping, F.col("label")) if mapping is not None and "label" in df.columns else F.lit(None)
    pairs = [F.struct(F.lit(OVERALL[0]).alias("slice"), F.lit(OVERALL[1]).alias("value"))]
    pairs += [F.struct(F.lit(name).alias("slice"), F.coalesce(col.cast("string"), F.lit("(null)")).alias("value"))
              for name, col in slices.items()]
    conf = F.col("probability").cast("double")
    rows = scored.select(
        F.explode(F.array(*pairs)).alias("s"), conf.alias("conf"),
        F.least(F.floor(conf * CONFIDENCE_BINS).cast("int"), F.lit(CONFIDENCE_BINS - 1)).alias("bin"),
        (F.col("prediction") == F.lit(positive_class)).cast("int").alias("positive") if positive_class else F.lit(0).alias("positive"),
        truth.isNotNull().cast("int").alias("labelled"),
        F.coalesce((F.col("prediction") == truth).cast("int"), F.lit(0)).alias("correct"))
    agg = rows.groupBy("s.slice", "s.value", "bin").agg(
        F.count(F.lit(1)).alias("rows"), F.sum("positive").alias("positive"), F.sum("conf").alias("confidence"),
        F.sum("labelled").alias("labelled"), F.sum("correct").alias("correct"),
        F.sum(F.when(F.col("labelled") == 1, F.col("conf")).otherwise(0.0)).alias("labelled_confidence"))
    return [BinCounts(r["slice"], r["value"], int(r["bin"]), int(r["rows"]), int(r["positive"] or 0),
                      float(r["confidence"] or 0.0), int(r["labelled"] or 0), int(r["correct"] or 0),
                      float(r["labelled_confidence"] or 0.0)) for r in agg.collect()]

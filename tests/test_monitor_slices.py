"""Slice and bias metrics: the pure judge on hand-made aggregates, then the Spark aggregate on a table with a
planted biased slice (links are predicted wrong half the time) beside a fair one (mentions)."""
from __future__ import annotations

import pytest

from dlspark.monitoring.slices import BinCounts, SliceRules, confidence_bin, ece, judge_slices, slice_metrics

RULES = SliceRules(min_rows=50, min_labelled=30, min_accuracy_ratio=0.9, min_rate_ratio=0.8, max_ece_increase=0.1)


def cell(slice_: str, value: str, rows: int, correct: int, positive: int = 0, conf: float = 0.9, bin_: int = 9) -> BinCounts:
    return BinCounts(slice_, value, bin_, rows, positive, conf * rows, rows, correct, conf * rows)


def test_ece_is_the_row_weighted_gap_between_confidence_and_accuracy():
    # bin A: 10 rows at confidence 0.9, 6 right (gap 0.3); bin B: 30 rows at 0.6, 18 right (gap 0.0)
    assert ece([(10, 9.0, 6), (30, 18.0, 18)]) == pytest.approx((0.3 * 10 + 0.0 * 30) / 40)
    assert ece([]) is None and ece([(0, 0.0, 0)]) is None
    assert [confidence_bin(p) for p in (0.0, 0.55, 0.999, 1.0)] == [0, 5, 9, 9]


def test_a_slice_far_below_the_overall_accuracy_is_flagged_and_a_fair_one_is_not():
    cells = [cell("all", "all", 1000, 900), cell("region", "north", 200, 100), cell("region", "south", 800, 800),
             cell("region", "tiny", 10, 0)]
    verdicts = {v.value: v for v in judge_slices(cells, RULES, has_positive=False)}
    assert verdicts["north"].flagged and "accuracy 0.500" in verdicts["north"].reasons[0]
    assert verdicts["north"].accuracy_ratio == pytest.approx(0.5 / 0.9)
    assert not verdicts["south"].flagged and verdicts["south"].judged
    assert not verdicts["tiny"].judged and not verdicts["tiny"].flagged       # 10 rows < min_rows: reported only
    assert not verdicts["all"].flagged and verdicts["all"].accuracy == pytest.approx(0.9)


def test_the_four_fifths_rule_on_positive_rates_flags_both_directions():
    cells = [cell("all", "all", 1000, 900, positive=500), cell("g", "low", 200, 180, positive=70),    # 0.35 / 0.5 = 0.7
             cell("g", "high", 200, 180, positive=130),     # 0.65 / 0.5 = 1.3 > 1.25
             cell("g", "fair", 200, 180, positive=90)]      # 0.45 / 0.5 = 0.9
    verdicts = {v.value: v for v in judge_slices(cells, RULES, has_positive=True)}
    assert verdicts["low"].flagged and verdicts["high"].flagged and not verdicts["fair"].flagged
    assert "positive rate" in verdicts["low"].reasons[0]
    names = {(m.feature, m.statistic): m for m in slice_metrics(list(judge_slices(cells, RULES, True)), RULES)}
    assert names[("slice:g=low", "positive_rate_ratio")].drifted
    assert not names[("slice:g=fair", "positive_rate_ratio")].drifted
    assert not names[("slice:g=low", "accuracy_ratio")].drifted                 # accuracy 0.9 = overall


def test_outcome_slices_get_no_positive_rate_rule():
    cells = [cell("all", "all", 1000, 900, positive=500), cell("prediction", "positive", 500, 450, positive=500),
             cell("label", "negative", 500, 450, positive=50)]
    verdicts = {v.value: v for v in judge_slices(cells, RULES, has_positive=True)}
    assert verdicts["positive"].positive_rate_ratio == pytest.approx(2.0) and not verdicts["positive"].flagged
    assert verdicts["negative"].positive_rate_ratio == pytest.approx(0.2) and not verdicts["negative"].flagged


def test_a_slice_calibrated_much_worse_than_the_table_is_flagged():
    cells = [cell("all", "all", 1000, 900, conf=0.9), cell("s", "overconfident", 100, 50, conf=0.95),
             cell("s", "fine", 900, 850, conf=0.9)]
    verdicts = {v.value: v for v in judge_slices(cells, RULES, has_positive=False)}
    assert any(r.startswith("calibration") for r in verdicts["overconfident"].reasons)
    assert not any(r.startswith("calibration") for r in verdicts["fine"].reasons)


def test_an_aggregate_without_the_overall_row_is_refused():
    with pytest.raises(ValueError, match="no overall row"):
        judge_slices([cell("g", "a", 10, 5)], RULES, has_positive=False)


# ---------------------------------------------------------------- the Spark aggregate

def _planted(spark, n: int = 2000):
    """Sentiment-like predictions: 1 row in 4 has a link and is predicted right only half the time; 1 in 5 has a
    mention and is predicted like the rest (90% right); ``region`` is a passthrough column, fair."""
    rows = []
    for i in range(n):
        url, mention = i % 4 == 0, i % 5 == 0
        label = "positive" if i % 2 else "negative"
        right = (i // 4) % 2 == 0 if url else (i % 10 != 3)
        prediction = label if right else ("negative" if label == "positive" else "positive")
        text = ("see https://x.example " if url else "") + ("@friend " if mention else "") + "word " * (i % 30)
        rows.append((label, prediction, 0.8, None, text, f"/data/in/{'a' if i % 3 else 'b'}/f{i}.txt", "north" if i % 2 else "south"))
    return spark.createDataFrame(rows, "label string, prediction string, probability double, error string, text string, "
                                       "source_path string, region string")


def test_spark_aggregate_flags_the_planted_slice_and_not_the_fair_one(spark):
    from dlspark.monitoring.slice_frame import aggregate_slices, slice_columns

    df = _planted(spark)
    slices = slice_columns(df.columns, None)
    assert set(slices) == {"label", "prediction", "text_length", "has_url", "has_mention", "source_folder"}
    cells = aggregate_slices(df, slices, {"positive": "positive", "negative": "negative"}, "positive")
    verdicts = {(v.slice, v.value): v for v in judge_slices(cells, RULES, has_positive=True)}
    overall = verdicts[("all", "all")]
    assert overall.rows == 2000 and overall.labelled == 2000
    assert verdicts[("has_url", "true")].flagged and verdicts[("has_url", "true")].accuracy == pytest.approx(0.5)
    assert not verdicts[("has_mention", "true")].flagged
    assert {k[1] for k in verdicts if k[0] == "source_folder"} == {"a", "b"}
    assert sum(v.rows for k, v in verdicts.items() if k[0] == "text_length") == 2000     # every row in one bucket
    explicit = slice_columns(df.columns, ["region", "has_url"])
    assert set(explicit) == {"region", "has_url"}
    with pytest.raises(ValueError, match="neither a derived slice"):
        slice_columns(df.columns, ["brightness"])


def test_failed_rows_and_unknown_labels_are_left_out_of_the_counts(spark):
    from dlspark.monitoring.slice_frame import aggregate_slices, slice_columns

    df = spark.createDataFrame([("positive", "positive", 0.9, None), ("neutral", "positive", 0.7, None),
                                ("positive", None, None, "decode failed")],
                               "label string, prediction string, probability double, error string")
    cells = aggregate_slices(df, slice_columns(df.columns, ["label"]), {"positive": "positive", "negative": "negative"},
                             "positive")
    overall = next(v for v in judge_slices(cells, RULES, has_positive=True) if v.slice == "all")
    assert (overall.rows, overall.labelled, overall.accuracy, overall.positive_rate) == (2, 1, 1.0, 1.0)

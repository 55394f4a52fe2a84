"""The rollout rules without a server: sticky split, canary steps, rollback on error rate, latency and accuracy."""
from __future__ import annotations

import random

import pytest

from dlspark.config.schema import RolloutConfig
from dlspark.serving.rollout import CHALLENGER, CHAMPION, DuplicateFeedback, Rollout, UnknownRequest, key_point


def rollout(**overrides) -> Rollout:
    cfg = RolloutConfig(**{"mode": "canary", "min_requests": 20, "step_requests": 20, "min_labelled": 10, **overrides})
    return Rollout(cfg, "1", "2", clock=lambda: 0.0, rng=random.Random(0))


def test_sticky_keys_keep_their_version_while_the_share_grows():
    keys = [f"user-{i}" for i in range(2000)]
    assert all(0.0 <= key_point(k) < 1.0 for k in keys)
    ab = rollout(mode="ab", split=0.25)
    first = {k: ab.route(k).answer for k in keys}
    assert first == {k: ab.route(k).answer for k in keys}                 # same key, same version
    share = sum(a == CHALLENGER for a in first.values()) / len(keys)
    assert 0.21 < share < 0.29
    wider = rollout(mode="ab", split=0.5)
    assert all(wider.route(k).answer == CHALLENGER for k, a in first.items() if a == CHALLENGER)


def test_unkeyed_requests_follow_the_share():
    ab = rollout(mode="ab", split=0.1)
    answers = [ab.route().answer for _ in range(5000)]
    assert 0.08 < answers.count(CHALLENGER) / 5000 < 0.12


def test_canary_walks_its_steps_and_promotes_when_configured():
    canary = rollout(auto_promote=True)
    actions = []
    for _ in range(200):
        canary.observe(CHAMPION, 0.010, True)
        decision = canary.observe(CHALLENGER, 0.011, True)
        if decision:
            actions.append((decision.action, decision.share_before, decision.share_after))
    assert actions == [("step", 0.05, 0.25), ("step", 0.25, 0.5), ("step", 0.5, 1.0), ("promote", 1.0, 1.0)]
    assert canary.status == "promoted" and canary.route("any").answer == CHALLENGER


def test_canary_without_auto_promote_completes_at_the_last_step():
    canary = rollout()
    decisions = [d for _ in range(100) if (d := canary.observe(CHALLENGER, 0.01, True))]
    assert decisions[-1].action == "complete" and "auto_promote is off" in decisions[-1].reason
    assert canary.share == 1.0


def test_error_rate_rolls_back_and_the_challenger_answers_nothing_more():
    canary = rollout()
    for _ in range(50):
        canary.observe(CHAMPION, 0.01, True)
    decision = None
    for i in range(20):
        decision = canary.observe(CHALLENGER, 0.01, ok=i % 4 != 0) or decision   # 25% errors
    assert decision is not None and decision.action == "rollback" and "error rate 25.00%" in decision.reason
    assert canary.status == "rolled_back" and canary.share == 0.0
    assert all(canary.route(f"k{i}").answer == CHAMPION for i in range(500))
    assert canary.observe(CHALLENGER, 0.01, False) is None                # judged once


def test_slow_challenger_rolls_back_on_p95_ratio_only_once_both_have_samples():
    canary = rollout(max_p95_ratio=1.5, step_requests=1000)
    for _ in range(30):
        assert canary.observe(CHALLENGER, 0.050, True) is None             # no champion latencies yet
    for _ in range(19):
        canary.observe(CHAMPION, 0.010, True)
    assert canary.observe(CHALLENGER, 0.050, True) is None
    canary.observe(CHAMPION, 0.010, True)
    decision = canary.observe(CHALLENGER, 0.050, True)
    assert decision.action == "rollback" and "p95 latency 50.0 ms vs champion 10.0 ms" in decision.reason


def test_live_accuracy_drop_rolls_back_after_min_labelled():
    ab = rollout(mode="ab", split=0.5, max_accuracy_drop=0.05)
    decision = None
    for i in range(40):
        arm = CHAMPION if i % 2 else CHALLENGER
        ab.record_answer(f"r{i}", arm, ["cat" if arm == CHAMPION else "dog"])
        _, d = ab.feedback(f"r{i}", ["cat"])
        decision = decision or d
    assert decision is not None and decision.action == "rollback"
    assert "live accuracy 0.000 vs champion 1.000 over 10 and 10 labels" in decision.reason


def test_shadow_answers_with_the_champion_and_labels_score_both():
    shadow = rollout(mode="shadow")
    assert shadow.route("k") .answer == CHAMPION and shadow.route("k").shadow
    shadow.record_answer("r1", CHAMPION, ["cat", "dog"])
    shadow.record_answer("r1", CHALLENGER, ["dog", "dog"])
    with pytest.raises(ValueError, match="scored 2 instance"):
        shadow.feedback("r1", ["cat"])
    result, _ = shadow.feedback("r1", ["cat", "dog"])
    assert result.correct == {CHAMPION: 2, CHALLENGER: 1}
    assert (shadow.stats[CHAMPION].accuracy, shadow.stats[CHALLENGER].accuracy) == (1.0, 0.5)
    with pytest.raises(DuplicateFeedback):
        shadow.feedback("r1", ["cat", "dog"])
    with pytest.raises(UnknownRequest, match="feedback_window"):
        shadow.feedback("never", ["cat"])


def test_feedback_window_forgets_the_oldest_answers():
    small = rollout(feedback_window=2)
    for i in range(3):
        small.record_answer(f"r{i}", CHAMPION, ["cat"])
    with pytest.raises(UnknownRequest):
        small.feedback("r0", ["cat"])
    assert small.feedback("r2", ["cat"])[0].correct == {CHAMPION: 1}


def test_a_rolled_back_challenger_starts_rolled_back():
    again = Rollout(RolloutConfig(mode="canary"), "1", "2", status="rolled_back")
    assert again.share == 0.0 and again.route("k").answer == CHAMPION


def test_rollout_config_rejects_bad_steps():
    with pytest.raises(ValueError, match="increasing shares"):
        RolloutConfig(mode="canary", steps=(0.5, 0.25))
    alone = Rollout(RolloutConfig(), "1", None)
    assert alone.route("k").answer == CHAMPION
    assert all(alone.observe(CHAMPION, 0.01, False) is None for _ in range(200))


def test_millisecond_jitter_is_not_a_latency_regression():
    canary = rollout(max_p95_ratio=1.5, min_p95_increase_ms=10.0, step_requests=1000)
    for _ in range(50):
        canary.observe(CHAMPION, 0.001, True)
    assert all(canary.observe(CHALLENGER, 0.003, True) is None for _ in range(50))   # x3, but only 2 ms slower
    assert canary.status == "running"

"""A challenger beside the champion: who answers a request, live statistics per version, and the rules that
roll the challenger back or promote it.

Pure code (no web framework, no MLflow): :class:`Rollout` is told about every answered request
(:meth:`Rollout.observe`) and every label that comes back (:meth:`Rollout.feedback`), and returns a
:class:`Decision` when the state changes; the app records decisions (MLflow tags, log line, table) and moves
aliases.

Modes (``serve.rollout.mode``):

* ``ab``: the challenger answers a fixed share ``split`` of the requests;
* ``canary``: its share walks through ``steps`` (e.g. 5% -> 25% -> 50% -> 100%), one step after each
  ``step_requests`` challenger requests that passed every check; after the last step it is promoted when
  ``auto_promote`` is set (else it keeps answering everything until someone moves the alias);
* ``shadow``: the champion answers every request; the challenger scores a copy whose answer is logged and
  counted, never returned;
* ``none``: the champion alone (its live statistics and feedback still count).

Assignment is sticky when the request carries a key: the key's SHA-256 maps to a point in [0, 1) and the
challenger answers when the point is below its share, so a key keeps its version while the share grows.
Requests without a key are assigned at random.

Rollback rules, checked after every challenger observation and every label once ``min_requests``
challenger requests (``min_labelled`` labels per version for accuracy) have been seen:

* error rate: challenger - champion > ``max_error_rate_increase``;
* p95 latency: challenger / champion > ``max_p95_ratio`` and challenger - champion > ``min_p95_increase_ms``
  (when the champion has ``min_requests`` latencies too);
* live accuracy: champion - challenger > ``max_accuracy_drop``.

A rolled-back challenger answers nothing more, in any mode, until a new rollout starts.
"""
from __future__ import annotations

import random
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence

import numpy as np

from dlspark.config.schema import RolloutConfig
from dlspark.traffic_split import key_point, start_share  # noqa: F401 - re-exported: the split's one home

Arm = Literal["champion", "challenger"]
CHAMPION: Arm = "champion"
CHALLENGER: Arm = "challenger"
Status = Literal["running", "rolled_back", "promoted", "completed"]


class UnknownRequest(KeyError):
    """Feedback for a request id that was never answered (or has left the feedback window)."""


class DuplicateFeedback(ValueError):
    """A second label for the same request id."""


@dataclass
class VersionStats:
    """Counters of one version over the rollout: requests, errors, a window of latencies, labels."""

    version: str | None
    latency_window: int
    requests: int = 0
    errors: int = 0
    labelled: int = 0
    correct: int = 0
    latencies: deque = field(init=False)

    def __post_init__(self) -> None:
        self.latencies = deque(maxlen=self.latency_window)

    def observe(self, seconds: float, ok: bool) -> None:
        self.requests += 1
        if ok:
            self.latencies.append(seconds)
        else:
            self.errors += 1

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def latency_ms(self, q: float) -> float | None:
        return float(np.percentile(np.fromiter(self.latencies, float), q)) * 1000.0 if self.latencies else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.version, "requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 6), "p50_ms": _round(self.latency_ms(50)),
                "p95_ms": _round(self.latency_ms(95)), "labelled": self.labelled,
                "accuracy": None if self.accuracy is None else round(self.accuracy, 6)}


@dataclass(frozen=True)
class Route:
    """Who answers one request, and whether the challenger also scores a shadow copy."""

    answer: Arm
    shadow: bool = False


@dataclass(frozen=True)
class Decision:
    """A change of the rollout: ``rollback``, ``step`` (the canary's share grew) or ``promote``."""

    action: Literal["rollback", "step", "promote", "complete"]
    reason: str
    share_before: float
    share_after: float
    champion: dict[str, Any]
    challenger: dict[str, Any]
    at: float
    sequence: int                       # 1 for the rollout's first decision, 2 for the next...


@dataclass(frozen=True)
class FeedbackResult:
    """What one label told: per version that scored the request, whether it was right."""

    request_id: str
    labels: tuple[str, ...]
    correct: dict[Arm, int]             # arm -> instances it predicted right


class Rollout:
    """The traffic split and the live judgement of one challenger against the champion (thread-safe).

    Parameters
    ----------
    cfg
        ``serve.rollout`` (``mode`` other than ``none``).
    champion_version, challenger_version
        Registered versions, for the statistics and decisions.
    status
        ``rolled_back`` to start with the challenger answering nothing (it was rolled back before).
    clock, rng
        Injected for tests.
    """

    def __init__(self, cfg: RolloutConfig, champion_version: str | None, challenger_version: str | None, *,
                 status: Status = "running", clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.cfg, self.status = cfg, status
        self._clock, self._rng = clock, rng or random.Random()
        self._lock = threading.Lock()
        self.stats: dict[Arm, VersionStats] = {CHAMPION: VersionStats(champion_version, cfg.latency_window),
                                               CHALLENGER: VersionStats(challenger_version, cfg.latency_window)}
        self.step = len(cfg.steps) - 1 if status in ("completed", "promoted") else 0
        self._step_start = 0                                  # challenger requests when this step began
        self._answers: OrderedDict[str, dict[Arm, tuple[str, ...]]] = OrderedDict()   # request id -> arm -> labels
        self._labelled: set[str] = set()
        self.decisions: list[Decision] = []

    # ---- routing ----

    @property
    def share(self) -> float:
        """The challenger's share of the answered requests now."""
        if self.status == "rolled_back" or self.cfg.mode in ("none", "shadow"):
            return 0.0
        if self.status == "promoted":
            return 1.0
        return self.cfg.split if self.cfg.mode == "ab" else self.cfg.steps[self.step]

    def route(self, key: str | None = None) -> Route:
        """Who answers a request with sticky ``key`` (or none: random)."""
        if self.cfg.mode == "shadow":
            return Route(CHAMPION, shadow=self.status == "running")
        point = key_point(key) if key else self._rng.random()
        return Route(CHALLENGER if point < self.share else CHAMPION)

    # ---- observations ----

    def observe(self, arm: Arm, seconds: float, ok: bool) -> Decision | None:
        """One scored request of ``arm`` (``ok`` False = a server-side failure); a decision when it changed the rollout."""
        with self._lock:
            self.stats[arm].observe(seconds, ok)
            return self._evaluate() if arm == CHALLENGER else None

    def record_answer(self, request_id: str, arm: Arm, labels: Sequence[str]) -> None:
        """Remember the labels ``arm`` answered for ``request_id`` (both arms in shadow mode) for its feedback."""
        with self._lock:
            self._answers.setdefault(request_id, {})[arm] = tuple(labels)
            self._answers.move_to_end(request_id)
            while len(self._answers) > self.cfg.feedback_window:
                old, _ = self._answers.popitem(last=False)
                self._labelled.discard(old)

    def feedback(self, request_id: str, labels: Sequence[str]) -> tuple[FeedbackResult, Decision | None]:
        """The true ``labels`` of an answered request (one per instance); updates the accuracy of every version
        that scored it. Raises :class:`UnknownRequest`, :class:`DuplicateFeedback`, or ``ValueError`` for a
        label count that is not the request's instance count."""
        with self._lock:
            answers = self._answers.get(request_id)
            if answers is None:
                raise UnknownRequest(f"no answered request {request_id!r} among the last {self.cfg.feedback_window} "
                                     "(serve.rollout.feedback_window): send feedback sooner, with the response's request_id")
            if request_id in self._labelled:
                raise DuplicateFeedback(f"request {request_id!r} already has its labels")
            count = len(next(iter(answers.values())))
            if len(labels) != count:
                raise ValueError(f"request {request_id!r} scored {count} instance(s), got {len(labels)} label(s)")
            self._labelled.add(request_id)
            correct = {arm: sum(p == t for p, t in zip(predicted, labels)) for arm, predicted in answers.items()}
            for arm, right in correct.items():
                self.stats[arm].labelled += count
                self.stats[arm].correct += right
            return FeedbackResult(request_id, tuple(labels), correct), self._evaluate()

    # ---- judgement ----

    def _evaluate(self) -> Decision | None:
        if self.status != "running" or self.cfg.mode == "none":
            return None
        champ, chall = self.stats[CHAMPION], self.stats[CHALLENGER]
        reason = self._breach(champ, chall)
        if reason is not None:
            return self._decide("rollback", reason, "rolled_back")
        if self.cfg.mode != "canary" or chall.requests - self._step_start < self.cfg.step_requests \
                or chall.requests < self.cfg.min_requests:
            return None
        passed = f"{chall.requests - self._step_start} challenger requests at {self.share:.0%} within every limit"
        if self.step + 1 < len(self.cfg.steps):
            self.step += 1
            self._step_start = chall.requests
            return self._decide("step", passed, "running", before=self.cfg.steps[self.step - 1])
        if self.cfg.auto_promote:
            return self._decide("promote", f"{passed}; every canary step passed", "promoted")
        return self._decide("complete", f"{passed}; every canary step passed (serve.rollout.auto_promote is off: "
                                        "move the champion alias by hand)", "completed")

    def _breach(self, champ: VersionStats, chall: VersionStats) -> str | None:
        """The first rollback rule the challenger breaks, or None."""
        cfg = self.cfg
        if chall.requests >= cfg.min_requests:
            increase = chall.error_rate - champ.error_rate
            if increase > cfg.max_error_rate_increase:
                return (f"error rate {chall.error_rate:.2%} vs champion {champ.error_rate:.2%} "
                        f"(+{increase:.2%} > serve.rollout.max_error_rate_increase={cfg.max_error_rate_increase:.2%})")
            if len(champ.latencies) >= cfg.min_requests and len(chall.latencies) >= cfg.min_requests:
                p95_champ, p95_chall = champ.latency_ms(95) or 0.0, chall.latency_ms(95) or 0.0
                if p95_champ > 0 and p95_chall / p95_champ > cfg.max_p95_ratio \
                        and p95_chall - p95_champ > cfg.min_p95_increase_ms:
                    return (f"p95 latency {p95_chall:.1f} ms vs champion {p95_champ:.1f} ms "
                            f"(x{p95_chall / p95_champ:.2f} > serve.rollout.max_p95_ratio={cfg.max_p95_ratio})")
        if champ.labelled >= cfg.min_labelled and chall.labelled >= cfg.min_labelled:
            drop = (champ.accuracy or 0.0) - (chall.accuracy or 0.0)
            if drop > cfg.max_accuracy_drop:
                return (f"live accuracy {chall.accuracy:.3f} vs champion {champ.accuracy:.3f} over "
                        f"{chall.labelled} and {champ.labelled} labels (-{drop:.3f} > "
                        f"serve.rollout.max_accuracy_drop={cfg.max_accuracy_drop})")
        return None

    def _decide(self, action: Literal["rollback", "step", "promote", "complete"], reason: str, status: Status,
                before: float | None = None) -> Decision:
        share_before = self.share if before is None else before
        self.status = status
        decision = Decision(action, reason, share_before, self.share, self.stats[CHAMPION].as_dict(),
                            self.stats[CHALLENGER].as_dict(), self._clock(), len(self.decisions) + 1)
        self.decisions.append(decision)
        return decision

    def snapshot(self) -> dict[str, Any]:
        """The rollout as ``GET /rollout`` shows it."""
        with self._lock:
            return {"mode": self.cfg.mode, "status": self.status, "challenger_share": self.share,
                    "step": self.step if self.cfg.mode == "canary" else None,
                    "versions": {arm: s.as_dict() for arm, s in self.stats.items()},
                    "decisions": [{"action": d.action, "reason": d.reason, "share_before": d.share_before,
                                   "share_after": d.share_after, "at": d.at} for d in self.decisions]}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)

"""What a learning cycle reports: its candidates, their outcomes and the evaluation it spent
(the answer of `POST /admin/learn`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from gateway.store.records import ArtifactKind
from learners.dataset import DatasetStats
from learners.evaluate import Evaluation
from learners.rollout import RolloutDecision

Outcome = Literal["canary", "promoted", "rejected", "queued"]


@dataclass(frozen=True, slots=True)
class CandidateReport:
    kind: ArtifactKind
    version: str
    outcome: Outcome
    reason: str
    note: str
    evaluation: Evaluation | None = None


@dataclass(slots=True)
class LearnReport:
    """What one cycle did for one route (the answer of `POST /admin/learn`)."""

    route: str
    started_at: float
    duration_s: float = 0.0
    examples: int = 0
    train: int = 0
    heldout: int = 0
    dataset: DatasetStats = field(default_factory=DatasetStats)
    candidates: list[CandidateReport] = field(default_factory=list)
    rollout: list[RolloutDecision] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    eval_calls: int = 0  # upstream calls evaluation made this cycle (replays, judge, optimizer)
    eval_cost_usd: float = 0.0
    eval_cached: int = 0  # replays answered from the cache instead (learners/economy.py)
    eval_skipped: list[str] = field(default_factory=list)  # candidates not evaluated, and why
    eval_halving: list[str] = field(default_factory=list)  # each search's rungs (learners/halving.py)
    eval_saved: int = 0  # case replays successive halving avoided (a full replay of every arm makes them)
    policy: Any = None  # learners.routing.LearnResult, for routes whose policy is learned

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

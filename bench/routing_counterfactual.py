"""Routing settings tried on a finished `bench.flywheel --routing` run, without running a model again.

    python -m bench.routing_counterfactual /tmp/flywheel-bench-XXXX [--grid] [--trials 20]

The run's cheap-only and strong-only arms answered the same stream of requests, in the same order,
each judged by the simulated users: for every request both outcomes are known. This replays that
stream through a fresh `LearnedPolicy` with the settings given: it chooses per request (Features as
the request path computed them for the cheap-only arm: same question, that arm's memory), learns
online from the outcome of the variant it chose, and every `--learn-every` calls from `--replays`
earlier requests judged on both variants (the learning cycle's replays); `--escalate` re-answers a
cheap answer that disagreed with its memory by the strong one's outcome, paying both, and learns what the
strong answer says about the cheap one (`--untaught`: it does not). It prints accuracy and
serving cost relative to strong-only, over the whole pass and its second half, averaged over
`--trials` exploration seeds, next to what the run's own learned-routing arm measured.

What it leaves out, so read its figures as relative: the routed arm's memory differs from the
cheap-only arm's (it learns from both models' answers), replays are judged on the answers given at
the time rather than re-asked, and candidate policies refitted from the log are not simulated.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.serve.injected import injected_examples
from gateway.serve.outcomes import escalated_quality
from gateway.serve.pipeline import answer_text, disagrees
from gateway.store import open_store
from learners.routing_data import Example, load_examples, recent_calls
from policies.featurise import memory_answer, same_answer
from policies.learned import LearnedPolicy
from retrieval.embeddings import load_embedder, threaded

ROUTES = {"routed": "intents", "cheap": "intents-cheap", "strong": "intents-strong"}


@dataclass(frozen=True)
class Settings:
    """The learned policy's settings under test (the rest as bench.flywheel writes them)."""

    min_quality: float = 0.8
    dims: int = 16
    prior_strength: float = 2.0
    prior_cheap: float = 0.7
    explore: float = 0.1
    decay: float = 0.01

    def label(self) -> str:
        return (f"min_quality {self.min_quality} dims {self.dims} prior_strength {self.prior_strength} "
                f"prior_cheap {self.prior_cheap} explore {self.explore} decay {self.decay}")


@dataclass(frozen=True)
class Result:
    """Accuracy and cost relative to strong-only: whole pass and second half."""

    quality: float
    cost: float
    quality_2nd: float
    cost_2nd: float


def relative(correct: Sequence[float], cost: Sequence[float], strong: Sequence[Example]) -> Result:
    half = len(strong) // 2
    s_q = [e.quality or 0.0 for e in strong]
    s_c = [e.cost for e in strong]
    return Result(sum(correct) / sum(s_q), sum(cost) / sum(s_c),
                  sum(correct[half:]) / sum(s_q[half:]), sum(cost[half:]) / sum(s_c[half:]))


def simulate(cheap: Sequence[Example], strong: Sequence[Example], s: Settings, *, learn_every: int,
             replays: int, seed: int, escalation: Sequence[Escalated] | None = None,
             teach: bool = True) -> Result:
    """One pass of the stream through a fresh policy (see the module doc). With `escalation`, a
    cheap answer that disagreed with its memory is escalated: the strong outcome counts, both
    answers are paid, and the policy learns strong's outcome and, when `teach`, what it implies
    for cheap (`learners.routing_data.escalated_quality`), as the gateway does."""
    rng = random.Random(seed)
    policy = LearnedPolicy(["cheap", "strong"], min_quality=s.min_quality, explore=s.explore, decay=s.decay,
                           dims=s.dims, prior_strength=s.prior_strength,
                           prior_quality={"cheap": s.prior_cheap, "strong": 0.95},
                           prior_cost={"cheap": 1, "strong": 20}, rng=random.Random(seed + 1))
    arms = {"cheap": cheap, "strong": strong}
    correct: list[float] = []
    cost: list[float] = []
    for i in range(len(cheap)):
        variant = policy.choose(cheap[i].features).variant
        ex = arms[variant][i]
        paid = ex.cost
        if variant == "cheap" and escalation is not None and not escalation[i].agrees:
            variant, ex = "strong", strong[i]
            paid += ex.cost
            q = None if ex.quality is None else escalated_quality(ex.quality, escalation[i].same_answer)
            if teach and q is not None:
                policy.update(cheap[i].features, "cheap", q, cheap[i].cost)
        correct.append(ex.quality or 0.0)
        cost.append(paid)
        if ex.quality is not None:
            policy.update(ex.features, variant, ex.quality, ex.cost)
        if (i + 1) % learn_every == 0:
            for j in rng.sample(range(i + 1 - learn_every, i + 1), min(replays, learn_every)):
                for name, arm in arms.items():
                    if arm[j].quality is not None:
                        policy.update(arm[j].features, name, arm[j].quality or 0.0, arm[j].cost)
    return relative(correct, cost, strong)


def mean_result(results: Sequence[Result]) -> Result:
    return Result(*(statistics.fmean(getattr(r, f) for r in results)
                    for f in ("quality", "cost", "quality_2nd", "cost_2nd")))


def show(label: str, r: Result, met: Result | None = None) -> str:
    ok = "MET" if r.quality_2nd >= 0.97 and r.cost_2nd <= 0.5 else "no"
    share = f" (second half met in {met.quality:.0%} of trials)" if met is not None else ""
    return (f"{label}: whole {r.quality:6.1%} at {r.cost:6.1%} | second half {r.quality_2nd:6.1%} at "
            f"{r.cost_2nd:6.1%} {ok}{share}")


@dataclass(frozen=True)
class Escalated:
    """Per request: did the cheap-only arm's answer match its memory, and the strong-only arm's answer?"""

    agrees: bool
    same_answer: bool


async def load(data_dir: Path) -> tuple[dict[str, list[Example]], list[Escalated]]:
    """Each arm's served examples, and per request what escalation would have seen."""
    store = open_store(f"sqlite:///{data_dir / 'flywheel.db'}")
    embed = threaded(load_embedder("minilm"))
    try:
        examples = {k: [e for e in await load_examples(store, route, embed, metric="any") if e.served]
                    for k, route in ROUTES.items()}
        cheap = await recent_calls(store, ROUTES["cheap"], since=None, limit=5000)
        strong = await recent_calls(store, ROUTES["strong"], since=None, limit=5000)
    finally:
        await store.close()
    out = []
    for c, s in zip(cheap, strong, strict=False):
        memory = memory_answer(out for _, out in injected_examples(c))
        first, second = (answer_text(r.response) if isinstance(r.response, dict) else None for r in (c, s))
        out.append(Escalated(agrees=not disagrees(c.response, memory) if isinstance(c.response, dict) else True,
                             same_answer=first is not None and second is not None
                             and same_answer(first, second, memory)))
    return examples, out


def main(argv: list[str] | None = None) -> int:
    """Load the run, print its own figures, then each setting's simulated ones."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data_dir", type=Path, help="the run's kept data dir (bench.flywheel prints it)")
    ap.add_argument("--learn-every", type=int, default=40)
    ap.add_argument("--replays", type=int, default=20)
    ap.add_argument("--trials", type=int, default=20, help="exploration seeds per setting")
    ap.add_argument("--grid", action="store_true", help="min_quality x dims x prior_strength grid")
    ap.add_argument("--escalate", action="store_true", help="as with the route's `escalate = { to = \"strong\" }`")
    ap.add_argument("--untaught", action="store_true", help="with --escalate: learn escalated calls as strong's only")
    args = ap.parse_args(argv)
    ex, escalation = asyncio.run(load(args.data_dir))
    n = min(len(ex["cheap"]), len(ex["strong"]))
    if n < 2 or len(ex["cheap"]) != len(ex["strong"]):
        raise SystemExit(f"need both baseline arms complete and equal: cheap {len(ex['cheap'])}, "
                         f"strong {len(ex['strong'])}")
    cheap, strong = ex["cheap"], ex["strong"]
    routed = ex["routed"][:n]
    print(f"{args.data_dir}: {n} requests; cheap-only accuracy {statistics.fmean(e.quality or 0 for e in cheap):.1%}, "
          f"strong-only {statistics.fmean(e.quality or 0 for e in strong):.1%}")
    if len(routed) == n:
        print(show("the run's own learned routing", relative([e.quality or 0.0 for e in routed],
                                                               [e.cost for e in routed], strong)))
    grid = ([Settings(min_quality=q, dims=d, prior_strength=p)
             for q, d, p in itertools.product((0.5, 0.6, 0.7, 0.75, 0.8, 0.85), (0, 4, 16), (2.0, 8.0, 32.0))]
            if args.grid else [Settings()])
    for s in grid:
        results = [simulate(cheap, strong, s, learn_every=args.learn_every, replays=args.replays, seed=t,
                            escalation=escalation if args.escalate else None, teach=not args.untaught)
                   for t in range(args.trials)]
        met = sum(r.quality_2nd >= 0.97 and r.cost_2nd <= 0.5 for r in results) / len(results)
        print(show(s.label(), mean_result(results), Result(met, 0, 0, 0)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

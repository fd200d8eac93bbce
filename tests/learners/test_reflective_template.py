"""Template learning that earns its place: no must-mention rules for label routes, and the optimizer
reflects on the held-out cases the best trial still fails (a deterministic fake optimizer)."""

from __future__ import annotations

from gateway.serve.templating import Template
from learners.dataset import Correction, Dataset
from learners.template import Failure, distill_instructions, fit_template, is_label_task, optimizer_prompt
from retrieval.embeddings import HashingEmbedder
from retrieval.examples import Example

EMB = HashingEmbedder()
INTENTS = [("Utterance: I want my money back for order 5", "0"), ("Utterance: refund my order 7 please", "0"),
           ("Utterance: money back for the broken order", "0"), ("Utterance: refund for order 9", "0")]
REFUNDS = [("How do refunds work?", "Refunds are possible within the 14-day window."),
           ("Can I get a refund for my order?", "You can get a refund within the 14-day window of delivery."),
           ("What is your refund policy?", "Our policy: refunds within the 14-day window.")]


def corrections(pairs: list[tuple[str, str]], answer: str = "1") -> list[Correction]:
    return [Correction(Example(f"c{i}#f", q, fix, f"c{i}", "correction", float(i)), answer, "f")
            for i, (q, fix) in enumerate(pairs)]


def dataset(pairs: list[tuple[str, str]]) -> Dataset:
    fixes = corrections(pairs)
    examples = tuple(c.example for c in fixes)
    return Dataset("bot", (0.0, 1.0), examples, examples, (), tuple(fixes),
                   feedback_ids={e.id: (f"fb-{e.id}",) for e in examples})


def test_a_label_route_gets_no_must_mention_rule() -> None:
    assert is_label_task(["0", "0", "2", "refund"]) and not is_label_task([fix for _, fix in REFUNDS])
    assert distill_instructions(corrections(INTENTS), EMB, min_cluster=2) == []  # not "…must mention: 0"
    assert [i.line() for i in distill_instructions(corrections(REFUNDS, "Ask support."), EMB, min_cluster=2)] == [
        "Answers about refund must mention: 14-day window"]


def test_the_optimizer_prompt_shows_scores_and_slices_of_held_out_failures() -> None:
    prompt = optimizer_prompt(["Be brief."], [Failure("Refund?", "No.", "Within 14 days.", 0.0, "web", "h1")])
    assert "- Be brief." in prompt and "1. Question: Refund?" in prompt and "Answer given: No." in prompt
    assert "Expected: Within 14 days." in prompt and "Score: 0.00 (slice web)" in prompt


async def test_the_optimizer_reflects_on_the_best_trials_failures_and_its_rewrite_is_a_trial() -> None:
    ds = dataset(REFUNDS)
    asked: list[str] = []
    held_out = [Failure("Refund for shoes?", "Sure.", "Refunds within the 14-day window.", 0.0, "web", "c1")]

    async def optimizer(prompt: str) -> str:
        asked.append(prompt)
        return "- State the 14-day refund window in every refund answer."

    async def score(label: str, tpl: Template) -> float | None:
        return 0.9 if any("14-day refund window" in i for i in tpl.instructions) else 0.4

    cand = await fit_template(Template("Seed."), ds, EMB, score, parent=None, trials=1, max_demos=1,
                              optimizer=optimizer, failures=lambda label: held_out)
    assert len(asked) == 1 and "Question: Refund for shoes?" in asked[0] and "Score: 0.00 (slice web)" in asked[0]
    assert cand is not None and cand.label == "optimizer" and cand.score == 0.9
    assert cand.template.instructions == ("State the 14-day refund window in every refund answer.",)
    assert "c1" in cand.manifest.evidence_call_ids  # the failure's call is the rewrite's evidence
    assert ("optimizer", 0.9) in cand.trials


async def test_the_optimizer_is_not_asked_when_the_best_trial_fails_nothing() -> None:
    asked: list[str] = []

    async def optimizer(prompt: str) -> str:
        asked.append(prompt)
        return "- Anything."

    async def score(label: str, tpl: Template) -> float | None:
        return 1.0

    cand = await fit_template(Template("Seed."), dataset(REFUNDS), EMB, score, parent=None, trials=1, max_demos=1,
                              optimizer=optimizer, failures=lambda label: [])
    assert asked == [] and cand is not None and cand.label != "optimizer"


async def test_distilled_rules_that_hurt_lose_to_the_same_demonstrations_without_them() -> None:
    ds = dataset(REFUNDS)

    async def score(label: str, tpl: Template) -> float | None:
        return 0.3 if tpl.instructions != ("Seed rule.",) else 0.8  # the distilled rule hurts

    cand = await fit_template(Template("Seed.", instructions=("Seed rule.",)), ds, EMB, score, parent=None,
                              trials=2, max_demos=1)
    assert cand is not None and cand.label == "demos#1 without rules" and cand.template.instructions == (
        "Seed rule.",) and cand.template.demonstrations

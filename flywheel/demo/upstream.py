"""The demo's simulated upstream: a model that needs no API key and learns from its prompt.

`flywheel demo` serves its route with the built-in `fake` provider (gateway/providers/fakes/provider.py),
configured by this module. Everything it does is deterministic and local; no model is downloaded.

What the simulated model knows and does, in the order it decides an answer:

1. In-context learning (gateway/providers/fakes/icl.py). When the prompt holds a worked example
   whose question resembles the user's (a retrieved example inserted as a user/assistant pair, or
   a "User: … / Assistant: …" demonstration in the system prompt; resemblance is the overlap of
   content words, at least two shared), the model copies that example's answer verbatim. So its
   answers improve when relevant *correct* examples are in the prompt, and get worse when wrong
   ones are: a poisoned correction, once retrieved, is repeated to every similar question.
2. Prior knowledge: a weak model's keyword habits (`PRIOR_KNOWLEDGE`): "weather" means
   get_weather, "play" means play_music - which is also what it answers for "add this to my
   *play*list" - and so on. Intents it has no keyword for (add_to_playlist, search_creative_work)
   it never answers right on its own.
3. Otherwise it echoes the question ("You said: …"), which names no intent: a wrong answer.
4. Rules: a system-prompt line "Answers about X must mention: Y" (the template learner distils
   them from clusters of corrections) appends Y to the answer when the question mentions X.
5. Hard inputs: a model configured with `hard` substrings answers `hard_reply` to any question
   containing one of them, whatever its prompt holds: a cheap model that is weaker on hard inputs
   and only a stronger (pricier) model fixes (`[providers.X] hard`, used by the routing tests and
   benchmarks). The demo's model has none, so every failure it shows is one learning can fix.
6. Cost and latency: every answer reports usage (about 4 characters per token, prompt and
   completion), which the gateway prices with the model's `price`; retrieved examples and learned
   demonstrations lengthen the prompt, so a route that learned costs a little more per call.
   Each call also takes `latency_ms`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Keyword -> intent, first match wins (case-sensitive substrings of the user's message).
PRIOR_KNOWLEDGE: tuple[tuple[str, str], ...] = (
    ("weather", "get_weather"), ("Weather", "get_weather"), ("forecast", "get_weather"),
    ("Play", "play_music"), ("play", "play_music"),
    ("Rate", "rate_book"), ("rate", "rate_book"),
    ("Book", "book_restaurant"), ("book", "book_restaurant"), ("restaurant", "book_restaurant"),
    ("movie", "search_screening_event"),
)


@dataclass(frozen=True, slots=True)
class SimulatedModel:
    """One simulated model as the demo configures it: `[models.<key>]` on provider `sim`."""

    key: str  # the model's name in config.toml
    name: str  # the provider's model name
    input_per_mtok: float  # USD per million prompt tokens
    output_per_mtok: float  # USD per million completion tokens


@dataclass(frozen=True, slots=True)
class SimulatedUpstream:
    """The `[providers.sim]` table and its models."""

    latency_ms: float = 5.0
    seed: int = 0
    models: tuple[SimulatedModel, ...] = (SimulatedModel("small", "sim-small", 0.50, 1.50),)

    def replies(self) -> dict[str, str]:
        """The provider's scripted replies: the model's prior knowledge."""
        return dict(PRIOR_KNOWLEDGE)

"""The demo's gateway configuration, built in code and written out as a readable config.toml.

`write_demo_config` puts three things in the demo directory: `config.toml` (absolute store paths,
so `flywheel --config <dir>/config.toml prompts log intents` works from anywhere), the seed
template `intents.md`, and (once the demo runs) the SQLite store `flywheel.db`. The settings the
demo serves with are parsed back from that file, so what a user inspects is what ran.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flywheel.demo.upstream import SimulatedUpstream
from gateway.config.settings import Settings, load_settings

ROUTE = "intents"
TEMPLATE_FILE = "intents.md"
CONFIG_FILE = "config.toml"
STORE_FILE = "flywheel.db"


@dataclass(frozen=True, slots=True)
class LearningKnobs:
    """The `[learners]` settings that make learning visible within a couple of minutes."""

    canary_share: float = 0.5
    canary_min_feedback: int = 20
    canary_tolerance: float = 0.2  # 20 calls a side: a gap of 0.1 is within noise; poison is far worse
    min_new_feedback: int = 10
    interval_s: float = 2.0
    heldout_share: float = 0.25
    min_samples: int = 5
    demo_trials: int = 3
    max_demos: int = 4
    retrieval_k: int = 4
    min_score: float = 0.2


@dataclass(frozen=True, slots=True)
class DemoFiles:
    directory: Path
    config: Path
    template: Path
    store: Path


def choose_embedder() -> str:
    """ "static" when the distilled static model is on disk, else "hashing" (no download either way)."""
    from retrieval.embeddings import default_static_dir

    try:
        import model2vec  # noqa: F401
    except ImportError:
        return "hashing"
    return "static" if default_static_dir().is_dir() else "hashing"


def seed_template(labels: Sequence[str]) -> str:
    """The route's seed prompt: the task and the intents to choose from."""
    return ("You are the intent classifier of {{ route }}. Reply with exactly one intent name from this list:\n"
            + ", ".join(labels) + "\n")


def _q(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def config_text(files: DemoFiles, upstream: SimulatedUpstream, knobs: LearningKnobs, embedder: str,
                learn_every: int) -> str:
    """config.toml for the demo (comments say what is demo-specific)."""
    replies = ", ".join(f"{_q(k)} = {_q(v)}" for k, v in upstream.replies().items())
    models = "\n".join(
        f"[models.{m.key}]\nprovider = \"sim\"\nname = {_q(m.name)}\n"
        f"price = {{ input_per_mtok = {m.input_per_mtok}, output_per_mtok = {m.output_per_mtok} }}\n"
        for m in upstream.models)
    variants = ", ".join(_q(m.key) for m in upstream.models)
    return f"""\
# Written by `flywheel demo`: one route that learns to name the intent of a request from the
# feedback of simulated users. What it learned: every version with the reason it was kept or not,
# then the newest template and the newest example index against their parents:
#   flywheel --config {files.config} prompts log {ROUTE}
#   flywheel --config {files.config} prompts diff {ROUTE}
#   flywheel --config {files.config} prompts diff {ROUTE} --kind index

[server]
host = "127.0.0.1"
port = 8080

[store]
url = {_q(f"sqlite:///{files.store}")}
spill_path = {_q(str(files.directory / "spill.jsonl"))}
flush_ms = 20

[retries]
attempts = 2
initial_delay_s = 0.01
max_delay_s = 0.5

# The simulated upstream (flywheel/demo/upstream.py): copies the answers of similar examples in its
# prompt, knows a few keywords on its own, echoes the question otherwise. No API key, no download.
[providers.sim]
kind = "fake"
latency_ms = {upstream.latency_ms}
seed = {upstream.seed}
# The model's own knowledge: keyword habits (substring -> answer, first match wins).
replies = {{ {replies} }}

{models}
[routes.{ROUTE}]
variants = [{variants}]
policy = {{ kind = "static" }}
template = {_q(TEMPLATE_FILE)}                 # seed template t0; learned versions live in the store
retrieval = {{ k = {knobs.retrieval_k}, min_score = {knobs.min_score} }}

[auth]
admin_key_env = "FLYWHEEL_ADMIN_KEY"

[learners]
# The demo runs one learning cycle (POST /admin/learn) every {learn_every} calls itself, so the
# background schedule is off; set `enabled = true` to let it learn on its own when served.
enabled = false
interval_s = {knobs.interval_s}
min_new_feedback = {knobs.min_new_feedback}
embedder = {_q(embedder)}   # "static" when its model is on disk, else "hashing"
metric = "exact"   # an intent is right or wrong: no partial credit for naming two
# Fast rollout so canaries are decided within the demo: half the users get the canary, 20 rated
# canary calls decide it, and it may trail by 0.2 (20 calls a side are noisy; poison is far worse).
canary_share = {knobs.canary_share}
canary_min_feedback = {knobs.canary_min_feedback}
canary_tolerance = {knobs.canary_tolerance}
heldout_share = {knobs.heldout_share}
min_samples = {knobs.min_samples}
demo_trials = {knobs.demo_trials}
max_demos = {knobs.max_demos}

[privacy]
store_raw = false   # names in the utterances are scrubbed, and examples with PII are never learned
"""


def write_demo_config(directory: Path, upstream: SimulatedUpstream, knobs: LearningKnobs, embedder: str,
                      labels: Sequence[str], learn_every: int, *, fresh: bool = True) -> tuple[DemoFiles, Settings]:
    """Write config.toml and the seed template into `directory`; return the paths and parsed settings.

    `fresh` removes a previous demo's store first, so every run starts from the seed.
    """
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    files = DemoFiles(directory, directory / CONFIG_FILE, directory / TEMPLATE_FILE, directory / STORE_FILE)
    if fresh:
        for suffix in ("", "-wal", "-shm", "-journal"):
            (directory / f"{STORE_FILE}{suffix}").unlink(missing_ok=True)
        for suffix in ("", ".ingesting", ".rejected"):
            (directory / f"spill.jsonl{suffix}").unlink(missing_ok=True)
    files.template.write_text(seed_template(labels), encoding="utf-8")
    files.config.write_text(config_text(files, upstream, knobs, embedder, learn_every), encoding="utf-8")
    return files, load_settings(files.config)

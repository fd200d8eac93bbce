"""config.toml -> a frozen, typed `Settings`.

Parsing is strict (unknown keys are errors) and then cross-checked (routes name existing models,
fallbacks exist, prices are non-negative). Every problem is reported with its key path, e.g.
`routes.support-bot.fallbacks[0]: unknown model or variant 'huge'`, and all problems are
reported at once so `flywheel check-config` can print them together.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.config.paths import resolve_paths
from gateway.config.providers import ProviderSettings as ProviderSettings  # re-exported: one kind per model
from gateway.config.providers import provider_problem
from gateway.config.references import reference_problems


class ConfigError(Exception):
    """An invalid configuration; `problems` are `key.path: message` strings."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid configuration in {source}:\n  " + "\n  ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    # Serve a non-loopback host without an admin key (the admin API then open to the network):
    # refused unless this or `flywheel serve --insecure-open` says so.
    insecure_open: bool = False
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(8_000_000, gt=0)
    max_concurrency: int = Field(1024, gt=0)  # in-flight requests before 503 Overloaded
    reload_interval_s: float = Field(1.0, gt=0)  # how often config.toml is checked for changes
    log_format: Literal["text", "json"] = "text"  # json: one object per line (env FLYWHEEL_LOG_FORMAT wins)
    # Connection limits, enforced before any key check (gateway/http/limits.py); restart to change.
    max_header_bytes: int = Field(32_768, ge=1024)  # request line + headers; larger: 431
    max_headers: int = Field(100, ge=8)  # header fields per request; more: 431
    header_timeout_s: float = Field(10.0, gt=0)  # a request's head must arrive within this; else 408
    keep_alive_s: float = Field(5.0, gt=0)  # an idle keep-alive connection is closed after this
    max_connections: int = Field(4096, gt=0)  # open connections per process; more are closed at once
    # An upstream answer (whole body, or a stream in all) larger than this fails with a 502.
    max_upstream_response_bytes: int = Field(64_000_000, gt=0)
    # Browser origins allowed to call the API ("https://app.example.com", or "*"); [] allows none.
    # Preflights are answered before any key check (gateway/http/cors.py).
    cors_origins: list[str] = []


class StoreSettings(_Strict):
    url: str = "sqlite:///data/flywheel.db"
    batch_size: int = Field(256, gt=0)
    # Rows wait up to this long for a batch (SIGTERM drains them; a crash loses at most this much).
    # A one-row transaction costs ~0.4 ms CPU, and a PostgreSQL server sharing the gateway's cores
    # added ~3 ms to p99 at 200 ms and 0.2 ms at 1 s (bench.capture --flush-ms); cf. Langfuse's 1 s.
    flush_ms: int = Field(1000, gt=0)
    queue_size: int = Field(50_000, gt=0)
    spill_path: str = "data/spill.jsonl"
    log_calls: bool = True  # false: calls are served but not stored (feedback still is); for benchmarks
    # A stored request or response is cut to this many bytes of JSON (a marker keeps the original size):
    # 30 prompts of ~7 MB made ~700 MB of database and WAL.
    max_stored_bytes: int = Field(1_000_000, ge=1024)
    # ...and keeps at most this many of its newest messages, cut before the call is queued: decoding
    # 60,000 messages again in the writer held the interpreter lock for ~160 ms, even on a thread.
    max_stored_messages: int = Field(1000, ge=1)
    # Calls whose queued record is larger are scrubbed and encoded on a worker thread, so one huge
    # request does not stall the event loop that serves everyone else.
    offload_bytes: int = Field(64_000, ge=1024)
    # Rows kept in memory when neither the database nor the spill file takes them (disk full);
    # beyond it rows are lost (README: capture guarantees).
    memory_rows: int = Field(100_000, ge=0)
    # The journal (gateway/store/journal.py): queued rows reach local disk (encrypted) every
    # journal_ms, one write per window, so a SIGKILL loses at most that window however far the
    # database lags; 0 turns it off. Replicas sharing journal_dir replay a dead one's segments.
    journal_ms: int = Field(100, ge=0)
    journal_dir: str = "data/journal"
    journal_fsync: bool = False  # true: also on disk each window (survives a power cut; a disk flush per window)


class Price(_Strict):
    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)


class ModelSettings(_Strict):
    provider: str
    name: str  # the provider's model name
    price: Price | None = None
    params: dict[str, Any] = {}  # merged under the client's own request fields


class RetrySettings(_Strict):
    attempts: int = Field(3, ge=1, le=20)
    initial_delay_s: float = Field(0.25, ge=0)
    max_delay_s: float = Field(8.0, ge=0)
    attempt_timeout_s: float = Field(60.0, gt=0)
    deadline_s: float = Field(120.0, gt=0)


class VariantSettings(_Strict):
    name: str
    model: str
    params: dict[str, Any] = {}


class PolicySettings(_Strict):
    """A route's policy; `kind` selects it, the rest are that kind's parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: Literal["static", "weighted", "fallback", "learned"] = "fallback"

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class RetrievalSettings(_Strict):
    """A route's retrieval defaults; an index the learning cycle tuned carries its own (retrieval/lexical.py)."""

    k: int = Field(4, ge=0, le=64)
    min_score: float = Field(0.3, ge=-1, le=1)
    scoring: Literal["dense", "bm25", "hybrid"] = "dense"  # cosine, lexical BM25, or their mean
    relative_min: float = Field(0.0, ge=0, le=1)  # keep hits scoring >= this x the best hit's score
    # "agreeing": when most hits give one answer, those go closest to the question (retrieval/lexical.py)
    order: Literal["nearest", "agreeing"] = "nearest"
    tune: bool = True  # let the learning cycle choose k, scoring and thresholds by held-out evaluation
    # PII types learned examples of this route may keep (a name-extraction task must see names);
    # off by default: such examples are otherwise dropped, and the guardrails refuse them
    keep_entities: list[Literal["PERSON"]] = []


class EscalateSettings(_Strict):
    """Re-ask a non-streamed answer from variant `to` when it disagrees with the route's memory: the
    answer the examples retrieval injected mostly give. An answer gives the label it names first
    among the examples' answers ("The sentiment is Positive." gives "positive"); a longer answer
    must have the same words (case, punctuation and spacing aside). Meant for routes whose answers
    are labels or short extractions; a free-text route would escalate nearly every call."""

    to: str
    when: Literal["memory_disagrees"] = "memory_disagrees"


class RouteSettings(_Strict):
    variants: list[Annotated[str, Field(min_length=1)] | VariantSettings] = Field(min_length=1)
    policy: PolicySettings = PolicySettings()
    fallbacks: list[str] = []
    retries: RetrySettings | None = None
    template: str | None = None  # path of the seed template (learned versions live in the store)
    retrieval: RetrievalSettings | None = None
    params: dict[str, Any] = {}
    learn: bool = True  # an admin can freeze learning for a route
    escalate: EscalateSettings | None = None

    def variant_list(self) -> list[VariantSettings]:
        return [VariantSettings(name=v, model=v) if isinstance(v, str) else v for v in self.variants]


class KeySettings(_Strict):
    hash: str  # "sha256:<hex>" of the virtual key; the key itself is never stored
    routes: list[str] = ["*"]
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    no_log: bool = False  # store metadata only for this key's calls
    # Spend limit in USD per calendar period (UTC), from the logged cost; enforced before each call
    # (429 code "budget_exceeded"). Shared across replicas through [limits] redis_url.
    budget_usd: float | None = Field(None, ge=0)
    budget_period: Literal["day", "month"] = "day"
    disabled: bool = False  # refused with 401 at once (a config reload applies it without a restart)

    @field_validator("hash")
    @classmethod
    def _sha256(cls, v: str) -> str:
        hexpart = v.removeprefix("sha256:")
        if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
            raise ValueError("must be 'sha256:' followed by 64 lowercase hex digits (see `flywheel keys new`)")
        return hexpart


class AuthSettings(_Strict):
    admin_key_env: str | None = "FLYWHEEL_ADMIN_KEY"
    keys: dict[str, KeySettings] = {}  # empty: the /v1 API is open (demo mode)
    # how often a replica re-reads the keys disabled, enabled and rotated at run time from the store
    # (gateway/keyring.py): a change made on another replica takes effect here within this many seconds
    refresh_s: float = Field(2.0, gt=0)


class LearnerSettings(_Strict):
    enabled: bool = True
    interval_s: float = Field(30.0, gt=0)
    min_new_feedback: int = Field(20, ge=0)
    canary_share: float = Field(0.1, ge=0, le=1)
    embedder: Literal["hashing", "minilm", "static"] = "minilm"
    refresh_s: float = Field(10.0, gt=0)  # how often a replica reloads artifact states from the store
    learn_on_correction: bool = True  # a new correction wakes the loop without waiting for min_new_feedback
    # dataset (learners/dataset.py)
    window_days: float = Field(30.0, ge=0)  # learn from feedback of the last N days; 0: all
    heldout_share: float = Field(0.3, ge=0, lt=1)  # calls with a reference kept out for evaluation
    seed: int = 0  # seeds the train/held-out split and the demonstration search
    dedupe_threshold: float = Field(0.95, gt=0, le=1)  # cosine at which two questions are "the same"
    max_examples: int = Field(5000, gt=0)
    # offline evaluation (learners/evaluate.py, learners/scoring.py)
    metric: Literal["exact", "normalised", "token_f1", "json_field", "embedding", "judge"] = "token_f1"
    metric_field: str = "answer"  # json_field: the field compared
    judge_route: str | None = None  # judge: the route or model that grades answers
    margin: float = Field(0.0, ge=-1, le=1)  # candidate must score >= current + margin
    min_samples: int = Field(5, ge=1)
    tolerance: float = Field(0.05, ge=0, le=1)  # largest regression allowed in any slice
    min_slice_samples: int = Field(5, ge=1)
    max_eval_calls: int = Field(400, ge=0)  # per learning run
    max_eval_cost_usd: float = Field(1.0, ge=0)  # per learning run; 0: no cost limit
    eval_concurrency: int = Field(2, ge=1)  # evaluation replays in flight per upstream (provider)
    eval_rate_per_s: float = Field(10.0, ge=0)  # evaluation replays started per second per upstream; 0: no cap
    # On an upstream with few slots ([providers.X] slots; a local server: 1) replays yield to live
    # calls: none starts while live calls fill its slots, and while live traffic is present (a live
    # call within eval_live_idle_s) replays occupy it at most eval_share of the time, and keep the live
    # calls that start while a replay holds the upstream (and so wait for it) to eval_live_delay_share
    # of all live calls (learners/economy.py)
    eval_share: float = Field(0.25, gt=0, le=1)
    eval_live_delay_share: float = Field(0.1, gt=0, le=1)
    eval_live_idle_s: float = Field(5.0, ge=0)
    reject_backoff_max: int = Field(8, ge=0)  # most cycles a kind sits out after repeated rejections
    # template learner (learners/template.py)
    demo_trials: int = Field(4, ge=0)
    max_demos: int = Field(4, ge=0)
    min_cluster: int = Field(2, ge=1)  # corrections on one topic before an instruction is distilled
    optimizer_route: str | None = None  # a route or model that rewrites instructions from failures
    max_template_chars: int = Field(8000, gt=0)
    # rollout (learners/rollout.py, learners/sequential.py): a sequential decision on Beta posteriors
    canary_min_feedback: int = Field(5, ge=1)  # guard: canary calls with feedback before any decision
    canary_max_feedback: int = Field(40, ge=1)  # evidence bound: decided by the posterior means by then
    canary_tolerance: float = Field(0.05, ge=0, le=1)  # canary may trail current by this much
    canary_confidence: float = Field(0.95, gt=0.5, lt=1)  # posterior probability that decides early
    # P(not worse by > tolerance) that promotes an index holding all of current's examples and more
    canary_grow_confidence: float = Field(0.8, gt=0.5, lt=1)
    canary_max_share: float = Field(0.5, ge=0, le=1)  # the share grows from canary_share up to this
    canary_prior_weight: float = Field(4.0, ge=0)  # pseudo-calls the offline delta is worth as a prior


class PrivacySettings(_Strict):
    store_raw: bool = False
    retention_days: float = Field(0, ge=0)  # 0 keeps calls forever
    retention_interval_s: float = Field(300.0, gt=0)  # how often calls past retention_days are deleted
    retention_batch: int = Field(500, ge=1, le=500)  # calls per delete transaction
    # The chat `user` field is stored as a keyed hash (gateway/privacy/pseudonym.py); the key comes
    # from this environment variable, else from user_key_path (made on first use).
    pseudonymize_users: bool = True
    user_key_env: str | None = "FLYWHEEL_USER_KEY"
    user_key_path: str = "data/user.key"
    # Person names stored as stable fake names (keyed with the same secret) instead of <PERSON>:
    # examples keep teaching name extraction; see gateway/privacy/pseudonym.py for the trade-off.
    name_pseudonyms: bool = False


class RateSettings(_Strict):
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)


class LimitSettings(_Strict):
    """`[limits]`: where rate limits and spend are kept (gateway/limits/)."""

    # Redis shared by every replica: limits and budgets are exact across them. Unset: in-process,
    # per replica (each replica allows the full limit).
    redis_url: str | None = None
    on_redis_error: Literal["open", "closed"] = "open"  # Redis unreachable: admit (open) or refuse (503)
    prefix: str = "flywheel"  # Redis key prefix: several gateways' deployments may share one Redis
    routes: dict[str, RateSettings] = {}  # per route, for every key together
    per_user: RateSettings | None = None  # per (key, chat `user`) pair
    default_max_tokens: int = Field(1024, gt=0)  # reserved for a call that sets no max_tokens
    lease_s: float = Field(10.0, gt=0)  # the learner lease's period: a dead holder is replaced within it


class ObservabilitySettings(_Strict):
    """`[observability]`: Prometheus metrics and OpenTelemetry traces (gateway/observability/)."""

    metrics: bool = True  # GET /metrics (Prometheus text); admin key required when keys are configured
    metrics_per_key: bool = True  # a `key` label on token and cost series
    tracing: bool = False  # OpenTelemetry spans per request (off by default)
    otlp_endpoint: str | None = None  # e.g. http://127.0.0.1:4318/v1/traces (needs the `otel` extra)
    service_name: str = "flywheel"


class ConsoleSettings(_Strict):
    """The team console under /console (gateway/console/)."""

    enabled: bool = True
    session_hours: float = Field(12.0, gt=0, le=24 * 30)  # a signed session cookie expires after this
    window_hours: int = Field(24, ge=1, le=24 * 90)  # the period the routes page and sparklines cover


class Settings(_Strict):
    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    retries: RetrySettings = RetrySettings()
    providers: dict[str, ProviderSettings] = {}
    models: dict[str, ModelSettings] = {}
    routes: dict[str, RouteSettings] = {}
    auth: AuthSettings = AuthSettings()
    learners: LearnerSettings = LearnerSettings()
    privacy: PrivacySettings = PrivacySettings()
    limits: LimitSettings = LimitSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    console: ConsoleSettings = ConsoleSettings()

    def retries_for(self, route: str | None) -> RetrySettings:
        rs = self.routes.get(route) if route else None
        return rs.retries if rs and rs.retries else self.retries


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not out:
            out = part
        else:
            out += f".{part}"
    return out or "(top level)"


def _cross_check(s: Settings) -> list[str]:
    problems: list[str] = []
    for name, m in s.models.items():
        if m.provider not in s.providers:
            problems.append(f"models.{name}.provider: unknown provider '{m.provider}'")
    for rname, r in s.routes.items():
        if rname in s.models:
            problems.append(f"routes.{rname}: a route cannot share its name with a model")
        variants = r.variant_list()
        names = [v.name for v in variants]
        for i, v in enumerate(variants):
            if v.model not in s.models:
                problems.append(f"routes.{rname}.variants[{i}]: unknown model '{v.model}'")
        if len(set(names)) != len(names):
            problems.append(f"routes.{rname}.variants: variant names must be unique")
        for i, fb in enumerate(r.fallbacks):
            if fb not in names and fb not in s.models:
                problems.append(f"routes.{rname}.fallbacks[{i}]: unknown model or variant '{fb}'")
        if r.escalate is not None and r.escalate.to not in names:
            problems.append(f"routes.{rname}.escalate.to: '{r.escalate.to}' is not a variant of this route")
        weights = r.policy.params().get("weights")
        if r.policy.kind == "weighted":
            if not isinstance(weights, dict) or not weights:
                problems.append(f"routes.{rname}.policy.weights: required for kind 'weighted'")
            else:
                for k, w in weights.items():
                    if k not in names:
                        problems.append(f"routes.{rname}.policy.weights.{k}: not a variant of this route")
                    elif not isinstance(w, int | float) or w < 0:
                        problems.append(f"routes.{rname}.policy.weights.{k}: must be a non-negative number")
        pins = r.policy.params().get("pins", {})
        if isinstance(pins, dict):
            for who, variant in pins.items():
                if variant not in names:
                    problems.append(f"routes.{rname}.policy.pins.{who}: '{variant}' is not a variant of this route")
    for key_name, k in s.auth.keys.items():
        for i, route in enumerate(k.routes):
            if route != "*" and route not in s.routes and route not in s.models:
                problems.append(f"auth.keys.{key_name}.routes[{i}]: unknown route '{route}'")
    for rname in s.limits.routes:
        if rname not in s.routes and rname not in s.models:
            problems.append(f"limits.routes.{rname}: unknown route '{rname}'")
    lr = s.learners
    for key, target in (("judge_route", lr.judge_route), ("optimizer_route", lr.optimizer_route)):
        if target is not None and target not in s.routes and target not in s.models:
            problems.append(f"learners.{key}: unknown route or model '{target}'")
    if lr.metric == "judge" and lr.judge_route is None:
        problems.append("learners.judge_route: required when learners.metric is 'judge'")
    return sorted(set(problems))


def parse_settings(data: dict[str, Any], source: str = "<config>") -> Settings:
    """Validate a parsed TOML document; raises ConfigError listing every problem with its key path."""
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("str", "VariantSettings")))
            loc, rephrased = provider_problem(loc, err["type"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else rephrased or err["msg"]
            problems.append(f"{_path(loc)}: {msg}")
        # names that point at nothing are reported too, though the cross-check needs valid tables
        problems += [p for p in reference_problems(data) if p not in problems]
        raise ConfigError(source, problems) from None
    problems = _cross_check(settings)
    if problems:
        raise ConfigError(source, problems)
    return settings


def load_settings(path: str | Path) -> Settings:
    """Read and validate config.toml."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(p), ["file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), [f"(TOML syntax) {exc}"]) from None
    # Relative paths (store, spill file, templates, key files; defaults included) are relative to
    # config.toml, not to wherever the gateway or the CLI was started.
    for section, model in (("store", StoreSettings), ("privacy", PrivacySettings)):
        table = data.setdefault(section, {})
        if isinstance(table, dict):
            for key in ("url", "spill_path", "journal_dir", "user_key_path"):
                if key in model.model_fields and key not in table:
                    table[key] = model.model_fields[key].default
    resolve_paths(data, p.resolve().parent)
    return parse_settings(data, str(p))

"""The gateway's log: one line per event that matters, as text or JSON, without library chatter.

Events that matter (start, listening address, config reload, learner decisions, degraded states)
are logged by their owners at INFO or above, with an `event` name passed as
`extra={"event": ...}`; nothing is logged per request at INFO. The libraries below log per call
or per load at INFO (litellm logs every completion; faiss logs a `ModuleNotFoundError` while it
probes for AVX builds; sentence-transformers draws tqdm bars when INFO is on), so their loggers
start at WARNING, and progress bars are switched off through the environment variables their
libraries read at import.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Literal

import orjson

LogFormat = Literal["text", "json"]

QUIET_LOGGERS = (
    "LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm", "httpx", "httpcore", "openai", "faiss",
    "faiss.loader", "sentence_transformers", "transformers", "huggingface_hub", "model2vec", "urllib3",
    "uvicorn.access",
)
# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the `extra=` fields, and exc when any."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message` plus ` key=value` for the `extra=` fields."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = [f"{k}={v}" for k, v in vars(record).items()
                 if k not in _STANDARD and not k.startswith("_") and k != "event"]
        return line + (" " + " ".join(extra) if extra else "")


def log_format(configured: str = "text") -> LogFormat:
    """`$FLYWHEEL_LOG_FORMAT` when set, else the configured `[server] log_format`."""
    value = os.environ.get("FLYWHEEL_LOG_FORMAT", configured).strip().lower()
    if value not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {value!r}")
    return "json" if value == "json" else "text"


def setup_logging(fmt: LogFormat = "text", level: str | int | None = None) -> None:
    """Configure the root logger once for a process (`flywheel serve`): one handler on stderr."""
    # Read at import by tqdm, huggingface_hub and transformers: no progress bars in a server log.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or os.environ.get("FLYWHEEL_LOG_LEVEL", "INFO").upper())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

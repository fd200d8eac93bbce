"""Run llama-cpp-python's OpenAI-compatible server on a local GGUF, as a context manager.

    with LlamaServer(model_path("smollm2"), alias="smollm2") as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="local")

The server runs as a child process in its own session (so stopping it never touches anything
else), listens on 127.0.0.1 only, and is stopped with SIGTERM (SIGKILL after a grace period).
Needs `bash bench/real/setup.sh` first (llama-cpp-python[server] in the venv).

On CPUs that advertise AMX the server is started through bench/real/no_repack.py (weight
repacking off, llama.cpp's `--no-repack`), because llama.cpp's AMX/repack kernels fault there;
`no_repack=True/False` forces it either way.

Smoke test: python -m bench.real.serve [smollm2|gemma3|qwen-coder]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .models import DEFAULT_CACHE, MODELS, fetch
from .no_repack import amx_present

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = REPO_ROOT / "bench" / ".cache" / "logs"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LlamaServer:
    """`python -m llama_cpp.server` on one model, started on enter and stopped on exit.

    ``alias`` is the model name clients pass in ``model``; ``chat_format`` None means the chat
    template embedded in the GGUF. The server log goes to ``log_path``
    (default bench/.cache/logs/llama-server-<alias>.log).
    """

    def __init__(
        self,
        model: Path,
        *,
        alias: str = "local",
        port: int | None = None,
        n_ctx: int = 2048,
        n_threads: int = 2,
        chat_format: str | None = None,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 120.0,
        log_path: Path | None = None,
        no_repack: bool | None = None,
    ) -> None:
        self.model = model
        self.alias = alias
        self.port = port or free_port()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.chat_format = chat_format
        self.extra_args = tuple(extra_args)
        self.startup_timeout_s = startup_timeout_s
        self.log_path = log_path or LOG_DIR / f"llama-server-{alias}.log"
        self.no_repack = amx_present() if no_repack is None else no_repack  # None: decide by the CPU
        self.startup_s: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        """OpenAI base URL of the running server (…/v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        """The argv used to start the server."""
        cmd = [
            sys.executable,
            "-m",
            "bench.real.no_repack" if self.no_repack else "llama_cpp.server",
            "--model",
            str(self.model),
            "--model_alias",
            self.alias,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads),
        ]
        if self.chat_format:
            cmd += ["--chat_format", self.chat_format]
        return cmd + list(self.extra_args)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def start(self) -> LlamaServer:
        """Start the server and block until /v1/models answers (raises if it dies or times out)."""
        if not self.model.is_file():
            raise FileNotFoundError(self.model)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,  # so `-m bench.real.no_repack` resolves
                start_new_session=True,  # own process group: stop() signals only this server
            )
        deadline = started + self.startup_timeout_s
        while time.perf_counter() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"llama server exited with {self._proc.returncode}:\n{tail}")
            if self._ready():
                self.startup_s = time.perf_counter() - started
                return self
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"llama server not ready after {self.startup_timeout_s} s; see {self.log_path}")

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL if still alive after ``grace_s``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        pgid = os.getpgid(proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=grace_s)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_model(
    key: str,
    *,
    port: int | None = None,
    n_ctx: int = 2048,
    n_threads: int = 2,
    extra_args: Sequence[str] = (),
) -> LlamaServer:
    """A LlamaServer for a model from bench.real.models (fetched if missing), alias = key."""
    spec = MODELS[key]
    path = fetch(key, DEFAULT_CACHE)
    return LlamaServer(
        path,
        alias=key,
        port=port,
        n_ctx=n_ctx,
        n_threads=n_threads,
        chat_format=spec.chat_format,
        extra_args=extra_args,
    )


def main(argv: list[str] | None = None) -> int:
    """Start the server on one model, send one request through the openai SDK, print latency."""
    from openai import OpenAI  # dev extra; only this smoke test needs it

    parser = argparse.ArgumentParser(description="llama.cpp server smoke test")
    parser.add_argument("model", nargs="?", default="smollm2", choices=sorted(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", default="What is the capital of France? Answer in one word.")
    args = parser.parse_args(argv)
    spec = MODELS[args.model]
    with serve_model(args.model, n_threads=args.threads) as srv:
        print(f"server: {' '.join(srv.command())}")
        print(f"ready in {srv.startup_s:.1f} s at {srv.base_url}")
        client = OpenAI(base_url=srv.base_url, api_key="local", max_retries=0, timeout=120)
        for attempt in ("cold", "warm"):
            start = time.perf_counter()
            if spec.style == "chat":
                chat = client.chat.completions.create(
                    model=args.model,
                    messages=[{"role": "user", "content": args.prompt}],
                    max_tokens=32,
                    temperature=0.0,
                )
                text = chat.choices[0].message.content or ""
                usage = chat.usage
            else:  # base model: plain completion
                comp = client.completions.create(
                    model=args.model,
                    prompt=f"Q: {args.prompt}\nA:",
                    max_tokens=32,
                    temperature=0.0,
                    stop=["\n"],
                )
                text, usage = comp.choices[0].text, comp.usage
            latency = time.perf_counter() - start
            tokens = f"{usage.prompt_tokens} in / {usage.completion_tokens} out" if usage else "?"
            print(f"{attempt}: {latency * 1000:.0f} ms ({tokens}): {text.strip()!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

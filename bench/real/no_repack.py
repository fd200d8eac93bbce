"""`python -m llama_cpp.server` with llama.cpp's weight repacking off (its CLI's `--no-repack`).

On Xeons that advertise AMX, llama.cpp's AMX / repacked CPU kernels fault on the first request.
llama.cpp turns them off with `--no-repack`, which sets `llama_model_params.use_extra_bufts = false`;
llama-cpp-python 0.3.36 exposes neither that flag nor an environment variable for it, so this
launcher wraps `llama_model_default_params` (which `Llama.__init__` starts from) and then runs the
server unchanged with the same arguments. `bench/real/serve.py` uses it when /proc/cpuinfo has AMX.

    python -m bench.real.no_repack --model M.gguf ...   (any llama_cpp.server arguments)
"""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")


def amx_present(cpuinfo: Path = CPUINFO) -> bool:
    """Whether the CPU flags list an AMX extension (amx_tile, amx_int8, amx_bf16, ...)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag.startswith("amx") for line in text.splitlines() if line.startswith("flags")
               for flag in line.split(":", 1)[-1].split())


def disable_repack() -> None:
    """Make every model llama-cpp-python loads from now on skip the extra (repacking) buffer types."""
    import llama_cpp.llama_cpp as lib  # only present after bench/real/setup.sh

    original = lib.llama_model_default_params

    def no_repack() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = no_repack


def main() -> None:
    """Disable repacking, then run llama_cpp.server as `python -m llama_cpp.server` would."""
    disable_repack()
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

"""Distill the static (model2vec) embedder from the packaged MiniLM, offline.

    python bench/distill_static.py [--out DIR] [--pca-dims 256] [--force]

Writes to $FLYWHEEL_STATIC_MODEL_DIR or data/models/minilm-l6-v2-static256 by default, which is
where `load_embedder("static")` looks. Takes ~1.5 minutes on 2 cores; no network is used.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from retrieval.embeddings import StaticEmbedder, default_static_dir, distill_static


def main() -> None:
    """Distill (unless present), then load the result and print a sanity check."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--out", type=Path, default=default_static_dir())
    parser.add_argument("--pca-dims", type=int, default=256)
    parser.add_argument("--force", action="store_true", help="distill even if the directory exists")
    args = parser.parse_args()
    if args.out.is_dir() and not args.force:
        print(f"static model already at {args.out} (use --force to redo)")
    else:
        t0 = time.perf_counter()
        distill_static(args.out, pca_dims=args.pca_dims)
        print(f"distilled into {args.out} in {time.perf_counter() - t0:.1f} s")
    emb = StaticEmbedder(args.out)
    v = emb.embed(["How do I reset my password?", "I forgot my password", "Ship it to Paris"])
    print(f"{emb.name}: dim={emb.dim}; paraphrase cos={v[0] @ v[1]:.3f}, unrelated cos={v[0] @ v[2]:.3f}")


if __name__ == "__main__":
    main()

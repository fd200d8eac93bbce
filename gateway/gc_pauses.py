"""Keep the garbage collector's full passes off the request path.

The gateway holds a large, long-lived heap (settings, the scrubber's name lists, learned
artifacts, embedder weights). CPython's full collection walks all of it: ~60 ms per pass was
measured here, which surfaced as a 30-50 ms p99 stall under load. Objects that live for the
process's lifetime are moved to the permanent generation once they are loaded, so the
periodic collections only look at what requests allocate.
"""

from __future__ import annotations

import gc


def settle(*, collect: bool = True) -> None:
    """Collect once (unless `collect` is False: a pass over a big heap stalls the event loop),
    then exempt everything alive now from future collections (`gc.freeze`).

    Call after start-up and after loading anything large and long-lived. Reference counting still
    frees frozen objects, but cycles among them are never collected: only for long-lived state.
    """
    if collect:
        gc.collect()
    gc.freeze()

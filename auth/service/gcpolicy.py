"""The garbage collector's policy for a serving process: no full collections on the request path
that walk what start-up left behind.

CPython's cyclic collector walks every tracked object of the generations it collects; a gen-2
collection walks everything alive since start (modules, config, keys, the CA, the app) and, left
alone, does so again every time enough new objects have survived: pauses of tens of milliseconds
in the middle of requests. `freeze_after_start` runs once a process serves: it collects once, so
that start-up garbage is freed rather than kept, then moves every surviving object into the
permanent generation (gc.freeze), which no later collection walks. Objects made while serving are
collected as before; the ones that live long are shaped so that the collector need not track them
(the verified-token cache keeps tuples of strings and numbers, see verifier/verify.py).

Call it in every process that serves (each worker of `--workers N` included), after the
application has started and before the first request: objects made later are not frozen.
"""

from __future__ import annotations

import gc


def freeze_after_start() -> int:
    """Collects, then freezes every object alive now. Returns how many were frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

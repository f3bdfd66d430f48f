"""The garbage collector's settings for a serving process (twistd only; issue 18).

CPython's cyclic collector is tuned for short scripts: a young-generation pass every
700 net allocations, and an old-generation pass that walks every tracked object of the
process. A running mailhost holds some 60,000 objects made at startup (modules, the
config, Twisted's and our classes) that never become garbage, and allocates a few
hundred per SMTP message. Measured at 20 SMTP sessions x 4 KiB (``gc.callbacks``, 6,000
messages): 0.18-0.20 s in the collector, 30 us a message, a tenth of it in three
old-generation passes of ~25 ms each, which also stall every session for as long.

``settle``, once the reactor runs (everything is built then):

- ``gc.freeze()`` moves what exists to the permanent generation, which no pass walks
  again (a collection first, so no garbage is kept for ever); the old-generation
  passes then took ~1-3 ms;
- the young-generation threshold goes from 700 to ``YOUNG_THRESHOLD``: most of a
  message's objects are freed by reference counting before a pass would look at
  them, and fewer passes walk the survivors. Collector time fell to ~0.08 s for the
  same 6,000 messages (5,000; 20,000 was slower again: 0.13 s).

Not done in-process (``mailhost.testing``, the test suite): a freeze keeps what an
embedder's process holds for good, which is the embedder's call.
"""

from __future__ import annotations

import gc

#: Net allocations between young-generation passes (CPython's default: 700).
YOUNG_THRESHOLD = 5000


def settle() -> None:
    """Collect once, freeze what is left, and raise the young-generation threshold."""
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    if young:  # 0: the collector is off (someone chose that); leave it so
        gc.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)

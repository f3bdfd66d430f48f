"""mailhost.heap: the collector's settings for a serving process (issue 18)."""

from __future__ import annotations

import gc
import subprocess
import sys


def test_settle_freezes_the_startup_heap_and_raises_the_young_threshold():
    # In a child: a freeze in the test runner would keep its objects for good.
    code = (
        "import gc\n"
        "from mailhost.heap import YOUNG_THRESHOLD, settle\n"
        "_, m, o = gc.get_threshold()\n"
        "settle()\n"
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count()\n"
        "assert gc.get_threshold() == (YOUNG_THRESHOLD, m, o), gc.get_threshold()\n"
        "gc.set_threshold(0)\n"
        "settle()\n"
        "assert gc.get_threshold()[0] == 0  # a collector turned off stays off\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert gc.get_freeze_count() == 0  # (and this process was left alone)

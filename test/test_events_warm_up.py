"""A node warms the event decoders up before it subscribes (``core.events.warm_up_decoders``): in a
fresh interpreter, every numba entry point a decoder calls has been compiled (or loaded from the
cache) afterwards, so the first real packet does not stall the node's executor for a second."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
from numba.core.registry import CPUDispatcher
from cascade_sd_ros.core.events import evt2, evt3, libcaer, warm_up_decoders

entry = {(m.__name__, n): d for m in (evt2, evt3, libcaer) for n, d in vars(m).items()
         if isinstance(d, CPUDispatcher) and n in ("_decode", "_cmp_decode")}
assert len(entry) == 3, sorted(entry)
assert all(not d.signatures for d in entry.values())  # nothing compiled at import
warm_up_decoders()
cold = sorted(k for k, d in entry.items() if not d.signatures)
print("cold:", cold)
"""


def test_every_decoder_entry_point_is_compiled_after_warm_up() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cold: []" in out.stdout, out.stdout

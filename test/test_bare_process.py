"""The bare target in a process of its own (``tools.bare_process``): the demo's honest floor must
decode exactly what the target decodes in this process, report a bad model folder in one line, and
leave no process behind."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from cascade_sd_ros.core.speed import bare_caption
from cascade_sd_ros.core.stage_model import default_stage_source, load_stage_model
from cascade_sd_ros.tools.bare_process import BareProcess


def test_the_child_decodes_what_the_target_decodes_here() -> None:
    source = default_stage_source("target")
    here = load_stage_model(source, "target")
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, (here.num_frames, here.image_size, here.image_size, 3), dtype=np.uint8)
    with torch.inference_mode():
        want = bare_caption(here, clip, "describe the scene", 8)
    with BareProcess(source) as bare:
        bare.wait_ready()
        assert (bare.num_frames, bare.image_size) == (here.num_frames, here.image_size)
        got = bare.caption(clip, "describe the scene", 8)
        again = bare.caption(clip, "describe the scene", 8)
        assert bare.running()
    assert got.tokens == want.tokens == again.tokens
    assert got.prefill_ms > 0 and got.decode_ms > 0
    assert not bare.running()  # closed: the child is gone


def test_a_bad_model_folder_is_one_line_and_the_child_exits(tmp_path: Path) -> None:
    bare = BareProcess(str(tmp_path / "no_such_model"))
    try:
        with pytest.raises(RuntimeError, match="could not load: .*no_such_model"):
            bare.wait_ready()
    finally:
        bare.close()
    assert not bare.running()


def test_closing_a_child_still_loading_its_target_ends_it_at_once() -> None:
    """An interrupted demo closes the bare target maybe before it has loaded: the child would read
    the close request only once loaded, so it is ended instead of waited for."""
    bare = BareProcess(default_stage_source("target"))
    assert bare.running()
    bare.close()  # before wait_ready: still importing torch and loading
    # ended (SIGKILL), not left to load and then read the request (exit 0)
    assert not bare.running() and bare._proc.returncode == -signal.SIGKILL
    bare.close()  # a second close is harmless

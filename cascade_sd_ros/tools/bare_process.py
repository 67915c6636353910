"""The target's bare cost, timed in a process of its own: the verifier-alone reference's floor.

The demo compares the cascade with the verifier node alone, and the verifier alone with the target's
own greedy caption of the same clip without ROS (``core.speed.bare_caption``). That floor is only
honest when it is measured where and when the verifier runs: on the verifier's CPU, in an
interpreter with nothing else in it, interleaved with the two passes so that whatever else the
machine does hits all three alike. Measured once up front in the demo's own process (as before),
the floor moved 58-93 ms p50 from run to run on the same scenes while the passes ran minutes later.

:class:`BareProcess` is that interpreter: a fresh ``python -m`` (not a fork: the parent holds DDS threads), pinned,
one torch thread, the target loaded once; each :meth:`BareProcess.caption` sends a clip over its
stdin and gets the timed caption back. It dies with its parent (``PR_SET_PDEATHSIG``, and its stdin
closes).
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import traceback
from typing import IO, Any

import numpy as np

from cascade_sd_ros.core.speed import BareCaption

_READY = "ready"


def _serve(requests: IO[bytes], replies: IO[bytes], source: str, device: str, dtype: str, threads: int) -> None:
    """The child: load the target, then answer (frames, question, budget) with a BareCaption."""

    def reply(status: str, detail: Any) -> None:
        pickle.dump((status, detail), replies)
        replies.flush()

    try:
        import torch
        from transformers.utils import logging as hf_logging

        from cascade_sd_ros.core.speed import bare_caption
        from cascade_sd_ros.core.stage_model import load_stage_model

        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        target = load_stage_model(source, "target", device=device, dtype=dtype)
    except Exception as exc:  # the parent reports it in one line
        reply("error", f"{type(exc).__name__}: {exc}")
        return
    reply(_READY, (target.num_frames, target.image_size))
    while True:
        try:
            request = pickle.load(requests)  # from the parent that started us: trusted
        except EOFError:  # the parent is gone
            return
        if request is None:
            return
        frames, question, budget = request
        try:
            with torch.inference_mode():
                reply("ok", bare_caption(target, frames, question, budget))
        except Exception as exc:
            reply("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")


class BareProcess:
    """A target in a process of its own that times bare greedy captions on request."""

    def __init__(
        self,
        source: str,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        cpus: set[int] | None = None,
        threads: int = 1,
    ) -> None:
        from cascade_sd_ros.tools.stage_processes import child_setup

        # a module run, not multiprocessing: spawn would re-import the caller's __main__
        cmd = [sys.executable, "-m", __name__, source, "--device", device, "--dtype", dtype, "--threads", str(threads)]
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
            preexec_fn=child_setup(cpus),
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._requests, self._replies = self._proc.stdin, self._proc.stdout
        self._ready = False
        self.num_frames = 0  # the target's clip length and frame size, known once it has loaded
        self.image_size = 0

    def wait_ready(self) -> None:
        """Block until the target has loaded; RuntimeError with the child's reason if it could not."""
        if self._ready:
            return
        status, detail = self._receive()
        if status != _READY:
            raise RuntimeError(f"the bare target could not load: {detail}")
        self.num_frames, self.image_size = detail
        self._ready = True

    def caption(self, frames: np.ndarray, question: str, max_new_tokens: int) -> BareCaption:
        """Decode one clip ([F, H, W, 3] uint8) greedily in the child, timed there."""
        self.wait_ready()
        self._send((np.ascontiguousarray(frames), question, int(max_new_tokens)))
        status, detail = self._receive()
        if status != "ok":
            raise RuntimeError(f"the bare target failed: {detail}")
        assert isinstance(detail, BareCaption)
        return detail

    def running(self) -> bool:
        return self._proc.poll() is None

    def _send(self, obj: Any) -> None:
        pickle.dump(obj, self._requests)
        self._requests.flush()

    def _receive(self) -> tuple[str, Any]:
        try:
            return pickle.load(self._replies)  # type: ignore[no-any-return]
        except EOFError:
            raise RuntimeError(f"the bare target process exited (status {self._proc.wait()})") from None

    def close(self) -> None:
        if not self._ready:  # still loading the target: it would read the request only once loaded
            self._proc.kill()
            self._proc.wait()
            return
        try:
            self._send(None)
            self._requests.close()
        except (OSError, ValueError):
            pass
        try:
            self._proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(2.0)
        self._replies.close()

    def __enter__(self) -> "BareProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="serve bare target captions over stdin/stdout (BareProcess)")
    parser.add_argument("source")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    replies = os.fdopen(os.dup(1), "wb")  # the protocol's channel; stdout itself goes to stderr so that
    os.dup2(2, 1)  # a library's print cannot corrupt it
    sys.stdout = sys.stderr
    _serve(sys.stdin.buffer, replies, args.source, args.device, args.dtype, args.threads)


if __name__ == "__main__":
    main()

"""Runs the static-cache step for T new tokens: eagerly, or by replaying a CUDA graph captured per T.

One graph per token count in `graph_sizes` (1 for plain decoding, k+1 for verifying k drafts, ...),
all captured at configure time over the same KV buffers and one shared memory pool. Inputs go in
through static device buffers (token ids and a `[1]` start position), outputs come out through a
static logits buffer allocated outside the pool, so no graph's replay can clobber another's result.
Token counts without a graph, and every step on a CPU, run the same function eagerly.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from cascade_sd_ros.core.gpu.llama_step import LlamaStaticForward

__all__ = ["StepRunner"]


class StepRunner:
    """`run(ids [T], start) -> logits [T, V]` over a `LlamaStaticForward`.

    Args:
        forward: the static-cache step (owns the KV buffers).
        graph_sizes: token counts to capture as CUDA graphs (needs a CUDA device; empty = all eager).
        warmup: eager runs per size before capture (cuBLAS handles, compiled kernels, autotuning).

    Capturing runs the step, which writes garbage K/V at the first positions: capture before the
    first prefill (the constructor does).
    """

    def __init__(self, forward: LlamaStaticForward, graph_sizes: Iterable[int] = (), *, warmup: int = 2) -> None:
        self.forward = forward
        self.device = forward.weights.device
        sizes = sorted({int(t) for t in graph_sizes})
        if sizes and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; the model is on {self.device}")
        if any(t < 1 or t > forward.cache.max_len for t in sizes):
            raise ValueError(f"graph sizes {sizes} must lie in [1, {forward.cache.max_len}]")
        if warmup < 1 and sizes:
            raise ValueError("capturing needs at least one warm-up run per size")
        vocab = forward.weights.dims.vocab
        self._start = torch.zeros(1, dtype=torch.long, device=self.device)  # [1] read by every graph
        self._ids: dict[int, torch.Tensor] = {}
        self._logits: dict[int, torch.Tensor] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        for t in sizes:
            self._ids[t] = torch.zeros(t, dtype=torch.long, device=self.device)
            self._logits[t] = torch.empty(t, vocab, dtype=forward.weights.dtype, device=self.device)
        if sizes:
            self._capture(sizes, warmup)

    @property
    def graph_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(self._graphs))

    def _body(self, t: int) -> None:
        self._logits[t].copy_(self.forward(self._start, input_ids=self._ids[t]))

    @torch.inference_mode()
    def _capture(self, sizes: list[int], warmup: int) -> None:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for t in sizes:
                for _ in range(warmup):
                    self._body(t)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        pool = torch.cuda.graph_pool_handle()
        for t in sorted(sizes, reverse=True):  # largest first: later captures reuse its pool blocks
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._body(t)
            self._graphs[t] = graph
        torch.cuda.synchronize(self.device)

    def run(self, ids: torch.Tensor, start: int) -> torch.Tensor:
        """Feed ids `[T]` (int64, on the model's device or pinned host memory) at `start`.

        Returns:
            logits `[T, V]` in the model dtype; in graph mode a view of a static buffer that the
            next `run` of the same T overwrites (copy what you keep).
        """
        t = int(ids.shape[0])
        self.forward.cache.check_room(start, t)
        graph = self._graphs.get(t)
        if graph is None:
            start_t = torch.full((1,), start, dtype=torch.long, device=self.device)  # a fill, no host sync
            return self.forward(start_t, input_ids=ids.to(self.device, non_blocking=True))
        self._ids[t].copy_(ids, non_blocking=True)
        self._start.fill_(start)
        graph.replay()
        return self._logits[t]

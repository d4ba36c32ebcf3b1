"""One rank without a sharding wrapper: what FSDP2 computes on a world of one, without its per-layer
gathers, hooks and copies.

On one rank FSDP2 shards nothing: each step it still casts every parameter to the compute dtype
in per-layer all-gathers (twice: forward and backward), copies every gradient into a float32
reduce-scatter buffer, and runs Python hooks around every layer. For the small models of an
ablation (tens of milliseconds of GPU work per step) that is a large share of the step on the CPU
and a few percent on the GPU. Here the arithmetic is the same: float32 master weights (what the
optimizer, checkpoints, exports and scoring see), a working copy in the compute dtype that runs
forward and backward (`pull` casts the masters into it, as FSDP2's all-gather does), and float32
gradients cast from the working copy's (`push_grads`, as FSDP2's reduce-scatter in float32 does).
In float32 the working copy is the model itself and both are no-ops.
"""

from __future__ import annotations

import copy

import torch


class MasterWeights:
    """`master`: the float32 model the optimizer steps; `compute`: the module that runs forward and
    backward (the master itself in float32, else a copy whose parameters are in `dtype`)."""

    def __init__(self, master: torch.nn.Module, dtype: torch.dtype):
        self.master = master
        if dtype == torch.float32:
            self.compute = master
        else:
            self.compute = copy.deepcopy(master)
            for p in self.compute.parameters():  # parameters only: buffers stay float32, as in FSDP2's policy
                p.data = p.data.to(dtype)
        self.mp = list(master.parameters())
        self.cp = list(self.compute.parameters())

    @property
    def separate(self) -> bool:
        return self.compute is not self.master

    @torch.no_grad()
    def pull(self) -> None:
        """Masters -> working copy (round to nearest, as `.to(dtype)`), before a forward."""
        if self.separate:
            torch._foreach_copy_(self.cp, self.mp)

    @torch.no_grad()
    def push_grads(self) -> None:
        """Working copy's gradients added to the float32 master gradients, after each backward
        (FSDP2 also accumulates micro-batches in its float32 reduce dtype)."""
        if not self.separate:
            return
        for m, c in zip(self.mp, self.cp):
            if c.grad is None:
                continue
            if m.grad is None:
                m.grad = c.grad.to(torch.float32)
            else:
                m.grad += c.grad
            c.grad = None

    def train(self, mode: bool = True) -> None:
        self.master.train(mode)
        self.compute.train(mode)

    def eval(self) -> None:
        self.train(False)

    def __call__(self, *args, **kw):
        return self.compute(*args, **kw)

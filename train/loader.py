"""The mixed loader: a deterministic token stream drawn from plan.json, exactly as planned.

Reads the tokenized sources of a plan (datatrove `.ds` files, memory-mapped) and yields batches of
packed windows. Only numpy, torch and the standard library are used, so it runs on a bare GPU host.

How a sample is chosen (all of it a pure function of the plan, so the loader's state is a step):
- Windows: per source, the `.ds` files (sorted by name) are one token stream; window j holds tokens
  [j*L, j*L + L + 1) for L = seq_len (consecutive windows share one token, Megatron-GPT style), so a
  source of U tokens has W = (U - 1) // L windows and one pass over them is one epoch. Windows
  ignore document boundaries; the EOS token written after each document separates them.
- Epochs: the n-th draw from a source (counted over all phases) reads window
  perm(seed, source, epoch)[n % W] with epoch = n // W; every epoch has its own permutation
  (numpy PCG64 seeded with (seed, crc32(source name), epoch)). The window of every sample is
  worked out when the loader is made (8 bytes a sample), so a batch is B slice copies.
- Blend: within a phase of N samples where source s gets c_s of them (plan tokens / L), the
  sources are interleaved deterministically (Megatron-style blending, integer arithmetic only) so
  that after any k samples each source has floor or ceil of k*c_s/N of them: every prefix is within
  one sample of the shares, and a complete phase gives every source exactly c_s (see
  `blend_schedule`). Phases follow one another in plan order.
- Ranks: global sample g = step*world*batch + rank*batch + i, so ranks never share a sample and
  any world size covers the same stream.

`RandomData` is the other source (`data.source: random`): learnable synthetic tokens for checks
that need no plan.
"""

from __future__ import annotations

import bisect
import functools
import json
import zlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


class PlanMismatch(ValueError):
    """The tokens drawn do not match the plan, or the plan does not match the shards."""


def blend_schedule(counts: list[int]) -> np.ndarray:
    """See `_blend`; cached per process (a trainer's train and validation loaders share it)."""
    return _blend(tuple(int(c) for c in counts))


@functools.lru_cache(maxsize=8)
def _blend(counts: tuple[int, ...]) -> np.ndarray:
    """The source index of each of n = sum(counts) samples, every prefix within one sample of the shares.

    Source s's j-th draw (1-based) may come at position k (1-based) once j <= ceil(k*c_s/n) and must
    have come by the first k with k*c_s/n >= j; each position goes to the released draw with the
    earliest deadline (ties: the earlier source). Earliest-deadline-first meets every deadline when any
    schedule can, and one always can (Tijdeman's chairman assignment theorem), so after every k
    samples floor(k*c_s/n) <= drawn_s <= ceil(k*c_s/n). The plain largest-deficit greedy can fall a
    little more than one sample behind (counts 1,1,1,14,14).
    """
    n = int(sum(counts))
    out = np.empty(n, dtype=np.int16)
    nxt = [1] * len(counts)  # the next draw of each source
    live = [s for s, c in enumerate(counts) if c > 0]
    for k in range(1, n + 1):
        best, best_dead = -1, None
        for s in live:
            j, c = nxt[s], counts[s]
            if j > c or (j - 1) * n // c + 1 > k:  # done, or not released yet
                continue
            dead = (j * n + c - 1) // c
            if best_dead is None or dead < best_dead:
                best, best_dead = s, dead
        if best < 0 or best_dead < k:
            raise AssertionError(f"blend schedule infeasible at sample {k} for counts {counts}")
        nxt[best] += 1
        out[k - 1] = best
    out.flags.writeable = False
    return out


class _Stream:
    """One source: its `.ds` files as one memory-mapped token stream, read in windows of L+1."""

    def __init__(self, name: str, folder: str, seq_len: int, vocab_size: int):
        self.name, self.seq_len = name, seq_len
        files = sorted(Path(folder).glob("*.ds"))
        if not files:
            raise PlanMismatch(f"source {name!r}: no .ds files in {folder}")
        dtype = np.uint16 if vocab_size <= 65536 else np.uint32
        self.arrays, starts, total, self.docs = [], [], 0, 0
        for f in files:
            size = f.stat().st_size
            if size % dtype().itemsize:
                raise PlanMismatch(f"{f}: size {size} is not a multiple of {dtype().itemsize} bytes (tokenizer mismatch?)")
            # a plain ndarray view of the map: slicing it skips np.memmap's per-slice Python overhead
            arr = np.asarray(np.memmap(f, dtype=dtype, mode="r")) if size else np.zeros(0, dtype=dtype)
            idx = Path(f"{f}.index")
            if idx.exists():
                ends = np.fromfile(idx, dtype="<u8")
                if len(ends) and int(ends[-1]) != len(arr):
                    raise PlanMismatch(f"{idx}: last document ends at {int(ends[-1])}, file holds {len(arr)} tokens")
                self.docs += len(ends)
            self.arrays.append(arr)
            starts.append(total)
            total += len(arr)
        self.bounds = starts  # token offset of each file in the stream
        self.tokens = total
        self.windows = max(0, (total - 1) // seq_len)

    def window(self, j: int, out: np.ndarray) -> None:
        """Window j (tokens [j*L, j*L + L + 1) of the stream) into `out`."""
        a = j * self.seq_len
        n = self.seq_len + 1
        f = bisect.bisect_right(self.bounds, a) - 1
        off = a - self.bounds[f]
        arr = self.arrays[f]
        if off + n <= len(arr):
            out[:] = arr[off:off + n]
            return
        pos = 0
        while pos < n:  # across file ends
            arr = self.arrays[f]
            take = min(len(arr) - off, n - pos)
            out[pos:pos + take] = arr[off:off + take]
            pos, off, f = pos + take, 0, f + 1


class MixLoader:
    """Batches [batch_size, seq_len+1] (torch.long) of the plan's stream for one rank.

    state_dict() is {"step": n}: a loader restored at step k yields what the uninterrupted one does.
    With `phase`, only that phase's samples are drawn (its steps count from 0).
    """

    def __init__(self, plan: str | dict, rank: int = 0, world_size: int = 1, batch_size: int = 1, phase: str | None = None):
        if isinstance(plan, (str, Path)):
            plan = json.loads(Path(plan).read_text())
        self.plan = plan
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.seq_len, self.seed = int(plan["seq_len"]), int(plan["seed"])
        self.step = 0
        self.names: list[str] = []
        folders: dict[str, str] = {}
        for ph in plan["phases"]:
            for s in ph["sources"]:
                if s["name"] not in folders:
                    self.names.append(s["name"])
                    folders[s["name"]] = s["path"]
        self.streams = [_Stream(n, folders[n], self.seq_len, int(plan["vocab_size"])) for n in self.names]
        self._salt = [zlib.crc32(n.encode()) for n in self.names]
        # the blend: source index and n-th draw from that source for every global sample
        parts, self.phase_bounds, self.planned = [], {}, {}
        start = 0
        for ph in plan["phases"]:
            counts, want = [0] * len(self.names), [0] * len(self.names)
            for s in ph["sources"]:
                i = self.names.index(s["name"])
                counts[i], want[i] = int(s["tokens"]) // self.seq_len, int(s["tokens"])
            if sum(counts) != int(ph["tokens"]) // self.seq_len:
                raise PlanMismatch(f"phase {ph['name']!r}: its sources' tokens ({sum(want)}) do not add up to its tokens ({ph['tokens']})")
            for i, c in enumerate(counts):
                if c and self.streams[i].windows == 0:
                    raise PlanMismatch(f"source {self.names[i]!r} has {self.streams[i].tokens} tokens: too few for one window")
            parts.append(blend_schedule(counts))
            self.planned[ph["name"]] = want
            self.phase_bounds[ph["name"]] = (start, start + sum(counts))
            start += sum(counts)
        self.src = np.concatenate(parts) if parts else np.zeros(0, np.int16)
        # n-th draw of its source, and the window it reads, for every global sample
        self.nth = np.empty(len(self.src), dtype=np.int64)
        self.win = np.empty(len(self.src), dtype=np.int64)
        for i, st in enumerate(self.streams):
            where = np.flatnonzero(self.src == i)
            self.nth[where] = np.arange(len(where))
            for e in range(-(-len(where) // st.windows) if st.windows else 0):
                sel = where[e * st.windows:(e + 1) * st.windows]
                self.win[sel] = self._perm(i, e)[: len(sel)]
        if phase is not None and phase not in self.phase_bounds:
            raise ValueError(f"unknown phase {phase!r}; the plan has {list(self.phase_bounds)}")
        self.phase = phase
        self.lo, self.hi = self.phase_bounds[phase] if phase else (0, len(self.src))

    # state -------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.step = int(d["step"])

    @property
    def global_batch(self) -> int:
        return self.world_size * self.batch_size

    def steps_total(self, global_batch: int | None = None) -> int:
        return (self.hi - self.lo) // (global_batch or self.global_batch)

    def __len__(self) -> int:
        return self.steps_total()

    # sampling ----------------------------------------------------------------------------------
    def _perm(self, s: int, epoch: int) -> np.ndarray:
        """The order of source s's windows in `epoch`."""
        rng = np.random.Generator(np.random.PCG64([self.seed, self._salt[s], epoch]))
        return rng.permutation(self.streams[s].windows)

    def window_of(self, g: int) -> tuple[int, int, int]:
        """(source index, epoch, window) of global sample g."""
        s, n = int(self.src[g]), int(self.nth[g])
        return s, n // self.streams[s].windows, int(self.win[g])

    def batch(self, step: int) -> torch.Tensor:
        """This rank's batch at `step`."""
        out = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        g0 = self.lo + step * self.global_batch + self.rank * self.batch_size
        if g0 + self.batch_size > len(self.src):
            raise IndexError(f"step {step} is past the end of the plan ({self.steps_total()} steps)")
        srcs = self.src[g0:g0 + self.batch_size].tolist()
        wins = self.win[g0:g0 + self.batch_size].tolist()
        for i, (s, j) in enumerate(zip(srcs, wins)):
            self.streams[s].window(j, out[i])
        return torch.from_numpy(out)

    def __iter__(self) -> Iterator[torch.Tensor]:
        total = self.steps_total()
        while self.step < total:
            b = self.batch(self.step)
            self.step += 1  # the batch is consumed once yielded: a checkpoint now resumes after it
            yield b

    # accounting --------------------------------------------------------------------------------
    def _drawn(self, steps: int) -> np.ndarray:
        end = min(self.hi, self.lo + steps * self.global_batch)
        return np.bincount(self.src[self.lo:end], minlength=len(self.names))[: len(self.names)]

    def tokens_drawn(self, steps: int | None = None) -> dict[str, int]:
        """Tokens (targets, seq_len per sample) drawn per source by all ranks up to `steps`."""
        d = self._drawn(self.step if steps is None else steps)
        return {n: int(d[i]) * self.seq_len for i, n in enumerate(self.names)}

    def epochs_seen(self, steps: int | None = None) -> dict[str, float]:
        """Passes over each source's windows made by all ranks up to `steps` in this loader's range."""
        d = self._drawn(self.step if steps is None else steps)
        return {n: round(int(d[i]) / max(1, self.streams[i].windows), 6) for i, n in enumerate(self.names)}

    def check_against_plan(self, steps: int | None = None, tol: float = 1e-3) -> dict[str, Any]:
        """Compare tokens drawn per source and phase with the plan; raise PlanMismatch beyond `tol`.

        A phase drawn completely must match its plan within `tol` (relative); a phase drawn in part
        (the trainer drops the last incomplete global batch) is compared with its shares over the
        part drawn, within one sample. Returns a report for the run's metadata.
        """
        steps = self.step if steps is None else steps
        end = min(self.hi, self.lo + steps * self.global_batch)
        report: dict[str, Any] = {"steps": steps, "samples": end - self.lo, "phases": {},
                                  "tokens_drawn": self.tokens_drawn(steps), "epochs_seen": self.epochs_seen(steps)}
        for name, (a, b) in self.phase_bounds.items():
            lo, hi = max(a, self.lo), min(b, end)
            if hi <= lo:
                continue
            drawn = np.bincount(self.src[lo:hi], minlength=len(self.names))[: len(self.names)]
            want_tokens, n = self.planned[name], b - a
            full = hi - lo == n
            rows = {}
            for i, src in enumerate(self.names):
                got = int(drawn[i]) * self.seq_len
                if full:
                    want, allowed = want_tokens[i], tol * want_tokens[i]
                else:  # a prefix of the phase: its shares, within one sample
                    want = want_tokens[i] * (hi - a) / n
                    allowed = max(tol * want, float(self.seq_len))
                rows[src] = {"planned_tokens": round(want), "drawn_tokens": got}
                if abs(got - want) > allowed + 1e-9:
                    raise PlanMismatch(f"phase {name!r}, source {src!r}: drew {got} tokens, the plan says {want:.0f} "
                                       f"(more than {tol:.1%} off)")
            report["phases"][name] = {"complete": full, "sources": rows}
        return report


class RandomData:
    """Learnable synthetic tokens: x[t+1] = x[t] + one of 4 fixed offsets (mod V), so the loss floor
    is ln 4. Sample i of the global stream depends only on (seed, i): the same global batch on any
    number of ranks."""

    def __init__(self, seed: int, vocab: int, seq_len: int, rank: int, world: int, micro: int, split: str = "train"):
        self.seed, self.V, self.T = seed, vocab, seq_len
        self.rank, self.world, self.micro = rank, world, micro
        g = torch.Generator().manual_seed(seed)
        self.offsets = torch.randint(1, vocab, (4,), generator=g)
        self.base = (seed * 1_000_003 + (0 if split == "train" else 10**12))
        self.cursor = 0  # micro-batches drawn by this rank

    def sample(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.base + i)
        x0 = torch.randint(0, self.V, (1,), generator=g)
        steps = self.offsets[torch.randint(0, 4, (self.T,), generator=g)]
        return torch.cat([x0, (x0 + steps.cumsum(0)) % self.V])

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        first = (self.cursor * self.world + self.rank) * self.micro
        self.cursor += 1
        return torch.stack([self.sample(first + j) for j in range(self.micro)])

    def state_dict(self) -> dict:
        return {"step": self.cursor}

    def load_state_dict(self, d: dict) -> None:
        self.cursor = int(d["step"])

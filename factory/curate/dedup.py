"""Dedup: exact (normalized text hash) and MinHash, within the synthetic set and against reference
documents (web corpus, seeds) that are indexed but never removed.

Datatrove does the MinHash work (signatures, LSH buckets, union-find clusters). Our steps around
it record each document's id and exact hash in stream order, and decide per cluster with rules
that do not depend on how documents were sharded: a cluster that holds a reference document loses
all its synthetic members; otherwise the member with the smallest id is kept.
"""

from __future__ import annotations

import json
import struct
from collections import defaultdict
from typing import Any

import numpy as np
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import MinhashDedupSignature
from datatrove.utils.hashing import HashConfig, create_hash_func
from datatrove.utils.text import TextNormConfig, simplify_text

from factory.curate.filters import Step
from factory.curate.io import reject

REF_OFFSET = 50_000  # reference shards sign as ranks REF_OFFSET + r, next to the synthetic ranks
SNIPPET = 300


def exact_hash(text: str, _h=create_hash_func(HashConfig(precision=64))) -> int:
    return _h(simplify_text(text, TextNormConfig()))


class DocIndex(PipelineStep):
    """Pass-through step that writes `{prefix}{rank:05d}.jsonl` with (id, exact hash[, snippet]) per doc."""

    type = "🫂 - DEDUP"
    name = "🗂 Doc index"

    def __init__(self, folder: str, prefix: str = "", snippets: bool = False):
        super().__init__()
        self.folder = get_datafolder(folder)
        self.prefix = prefix
        self.snippets = snippets

    def run(self, data, rank: int = 0, world_size: int = 1):
        with self.folder.open(f"{self.prefix}{rank:05d}.jsonl", "wt") as f:
            for doc in data or ():
                rec: dict[str, Any] = {"id": doc.id, "h": exact_hash(doc.text)}
                if self.snippets:
                    rec["text"] = doc.text[:SNIPPET]
                f.write(json.dumps(rec) + "\n")
                self.stat_update("indexed")
                yield doc


class OffsetSignature(MinhashDedupSignature):
    """MinHash signatures of reference documents, filed under rank REF_OFFSET + rank."""

    name = "🎯 MinHash stage 1 (reference)"

    def run(self, data, rank: int = 0, world_size: int = 1):
        return super().run(data, REF_OFFSET + rank, world_size)


def _read_index(folder, name: str) -> list[dict]:
    with folder.open(name, "rt") as f:  # one read: fsspec's file objects are slow line by line
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]


def load_signatures(folder, num_buckets: int, hashes_per_bucket: int) -> dict[int, np.ndarray]:
    """All MinHash signatures from datatrove's sig files: {file: array (docs, buckets * hashes)}."""
    dt = np.dtype([("h", "<u8", (hashes_per_bucket,)), ("doc", "<u4")])
    per_file: dict[int, list[np.ndarray]] = defaultdict(lambda: [None] * num_buckets)
    # one listing of the folder and the files opened together (on a store: one LIST, the GETs concurrent)
    names = [n for n in folder.list_files() if n.endswith(".minhash.sig") and n.startswith("bucket_")
             and int(n[7:10]) < num_buckets]
    from factory.curate.workfolder import WorkFolder

    files = folder.open_files(names, mode="rb") if isinstance(folder, WorkFolder) else (folder.open(n, "rb") for n in names)
    for name, f in zip(names, files):
        with f:
            per_file[int(name.rsplit("/", 1)[1].split(".")[0])][int(name[7:10])] = np.frombuffer(f.read(), dtype=dt)
    out = {}
    for file, recs in per_file.items():
        n = max((int(r["doc"].max()) + 1 for r in recs if r is not None and len(r)), default=0)
        sig = np.zeros((n, num_buckets * hashes_per_bucket), dtype=np.uint64)
        for b, r in enumerate(recs):
            if r is not None and len(r):
                sig[r["doc"], b * hashes_per_bucket:(b + 1) * hashes_per_bucket] = r["h"]
        out[file] = sig
    return out


def verified(pairs: np.ndarray, sigs: dict[int, np.ndarray], threshold: float,
             reference_threshold: float = 0.0) -> np.ndarray:
    """Which pairs (rows of file1, doc1, file2, doc2) agree on at least `threshold` of their
    signature values (`reference_threshold`, when higher, for a pair with a reference document):
    one array operation per pair of files, not a Python step per pair."""
    keep = np.zeros(len(pairs), dtype=bool)
    if not len(pairs):
        return keep
    key = pairs[:, 0].astype(np.int64) << 32 | pairs[:, 2]
    order = np.argsort(key, kind="stable")
    for at in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
        f1, f2 = int(pairs[at[0], 0]), int(pairs[at[0], 2])
        cut = max(threshold, reference_threshold) if max(f1, f2) >= REF_OFFSET else threshold
        keep[at] = (sigs[f1][pairs[at, 1]] == sigs[f2][pairs[at, 3]]).mean(axis=1) >= cut
    return keep


def first_pairs(chunks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct pair (either order) once, at its first appearance: (rows of the chunks' pairs,
    index of the chunk it came from). A pair of near copies collides in most LSH buckets, so the
    buckets stage lists it many times; clustering needs each edge only once."""
    if not chunks:
        return np.zeros((0, 4), dtype="<u4"), np.zeros(0, dtype=np.int64)
    pairs = np.concatenate(chunks)
    source = np.repeat(np.arange(len(chunks)), [len(c) for c in chunks])
    a = pairs[:, 0].astype(np.uint64) << np.uint64(32) | pairs[:, 1]
    b = pairs[:, 2].astype(np.uint64) << np.uint64(32) | pairs[:, 3]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((np.arange(len(a)), hi, lo))  # by pair, then by position: the first copy leads
    lo, hi = lo[order], hi[order]
    new = np.ones(len(order), dtype=bool)
    new[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    first = np.sort(order[new])
    return pairs[first], source[first]


class VerifyPairs(PipelineStep):
    """Keeps only candidate pairs whose whole-signature Jaccard estimate reaches `threshold`.

    LSH alone (datatrove's stages 2-3) unions every pair that collides in one bucket; with the
    low per-bucket thresholds that paraphrases need, unrelated documents sharing boilerplate
    collide too. The full signature (buckets x hashes values) estimates Jaccard with a standard
    error of about sqrt(J(1-J)/k), so a cut at `threshold` removes those false pairs.
    Each distinct pair is checked and written once, in datatrove's `.dups` format (one file per
    bucket file read) for MinhashDedupCluster.
    """

    type = "🫂 - DEDUP"
    name = "✅ MinHash verify pairs"

    def __init__(self, sigs_folder: str, dups_folder: str, out_folder: str, num_buckets: int, hashes_per_bucket: int,
                 threshold: float, reference_threshold: float = 0.0):
        super().__init__()
        self.sigs = get_datafolder(sigs_folder)
        self.dups = get_datafolder(dups_folder)
        self.out = get_datafolder(out_folder)
        self.shape = (num_buckets, hashes_per_bucket)
        self.threshold, self.reference_threshold = threshold, reference_threshold

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        assert world_size == 1
        with self.track_time():
            sigs = load_signatures(self.sigs, *self.shape)
            names = sorted(self.dups.list_files(glob_pattern="*.dups"))
            chunks = []
            for name in names:
                with self.dups.open(name, "rb") as f:
                    chunks.append(np.frombuffer(f.read(), dtype="<u4").reshape(-1, 4))
            pairs, source = first_pairs(chunks)
            keep = verified(pairs, sigs, self.threshold, self.reference_threshold)
            self.stat_update("candidate_pairs", value=sum(map(len, chunks)))
            self.stat_update("distinct_pairs", value=len(pairs))
            self.stat_update("verified_pairs", value=int(keep.sum()))
            for i, name in enumerate(names):
                with self.out.open(name, "wb") as f:
                    f.write(pairs[keep & (source == i)].astype("<u4").tobytes())
        return None  # eager (see Decide)


class Decide(PipelineStep):
    """World-size-1 step after MinhashDedupCluster: per synthetic rank, which docs go and why.

    Writes `decide/{rank:05d}.json` ({doc index: [reason, cluster, kept-or-matched id]}) and
    `decide/clusters.json` (every cluster that lost a member, for the report).
    """

    type = "🫂 - DEDUP"
    name = "⚖ Dedup decide"

    def __init__(self, index_folder: str, clusters_folder: str | None, out_folder: str, exact: bool):
        super().__init__()
        self.index = get_datafolder(index_folder)
        self.clusters = get_datafolder(clusters_folder) if clusters_folder else None
        self.out = get_datafolder(out_folder)
        self.exact = exact

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        assert world_size == 1, "dedup decisions need the whole picture: run with one task"
        with self.track_time():
            docs: dict[tuple[int, int], dict] = {}  # (file, idx) -> {"id", "h"}
            for name in self.index.list_files(glob_pattern="*.jsonl"):
                ref = name.startswith("ref-")
                file = int(name.removeprefix("ref-").removesuffix(".jsonl")) + (REF_OFFSET if ref else 0)
                for i, rec in enumerate(_read_index(self.index, name)):
                    docs[(file, i)] = rec
            removed: dict[tuple[int, int], list] = {}
            groups: list[dict] = []
            if self.exact:
                by_hash: dict[int, list[tuple[int, int]]] = defaultdict(list)
                for key, rec in docs.items():
                    by_hash[rec["h"]].append(key)
                for members in by_hash.values():
                    if len(members) > 1:
                        self._settle(members, docs, removed, groups, "exact")
            if self.clusters is not None:
                by_cluster: dict[int, list[tuple[int, int]]] = defaultdict(list)
                for name in self.clusters.list_files(glob_pattern="*.clusters"):
                    file = int(name.removesuffix(".clusters"))
                    with self.clusters.open(name, "rb") as f:
                        raw = f.read()
                    for doc, cid in struct.iter_unpack("<2I", raw):
                        by_cluster[cid].append((file, doc))
                for members in by_cluster.values():
                    members = [m for m in members if m in docs and m not in removed]
                    if len(members) > 1:
                        self._settle(members, docs, removed, groups, "near")
            per_rank: dict[int, dict[str, list]] = defaultdict(dict)
            for (file, idx), how in removed.items():
                per_rank[file][str(idx)] = how
            for file, recs in per_rank.items():
                with self.out.open(f"{file:05d}.json", "wt") as f:
                    f.write(json.dumps(recs))  # one write: json.dump streams thousands of small ones
                self.stat_update("removed", value=len(recs))
            with self.out.open("clusters.json", "wt") as f:
                f.write(json.dumps(groups))
        return None  # not a generator: runs eagerly, like datatrove's MinhashDedupCluster

    @staticmethod
    def _settle(members, docs, removed, groups, kind: str) -> None:
        refs = sorted(docs[m]["id"] for m in members if m[0] >= REF_OFFSET)
        syn = sorted((m for m in members if m[0] < REF_OFFSET), key=lambda m: docs[m]["id"])
        if refs:
            keep, gone, reason = refs[0], syn, f"{kind}_dup_reference"
        else:
            keep, gone, reason = docs[syn[0]]["id"], syn[1:], f"{kind}_dup"
        if not gone:
            return
        cid = len(groups)
        for m in gone:
            removed[m] = [reason, cid, keep]
        groups.append({"cluster": cid, "kind": reason, "kept": keep, "kept_is_reference": bool(refs),
                       "removed": [docs[m]["id"] for m in gone], "size": len(members)})


class ApplyDecisions(Step):
    """Drops the documents Decide marked, in the same stream order the signatures were taken in."""

    name = "🫂 Dedup apply"
    reason = "dedup"

    def __init__(self, decide_folder: str, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.decide = get_datafolder(decide_folder)

    def run(self, data, rank: int = 0, world_size: int = 1):
        name = f"{rank:05d}.json"
        self._marks = {}
        if self.decide.exists(name):
            with self.decide.open(name, "rt") as f:
                self._marks = json.load(f)
        self._i = -1
        yield from super().run(data, rank, world_size)

    def filter(self, doc):
        self._i += 1
        how = self._marks.get(str(self._i))
        if how is None:
            return True
        reason, cid, kept = how
        return reject(doc, reason, {"cluster": cid, "kept": kept})

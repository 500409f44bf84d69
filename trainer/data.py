"""Packed, mixed, deterministic and resumable samples from token shards, plus a prefetching loader.

    sources = load_sources(["data/tok"], tokenizer_hash=tok_hash)          # name -> TokenSource
    stream = PackedStream(sources, weights={"web": 0.7, "code": 0.3}, seq_len=1024, eos_id=0, seed=1)
    loader = PrefetchLoader(stream, global_batch=64, rank=r, world_size=w)  # torch batches
    batch = next(loader); loader.state_dict(); loader.data_wait_s

Order. Each source is one endless token stream: per epoch a seeded permutation of its documents,
each followed by EOS. A sample is seq_len + 1 tokens read at the source's token cursor, which then
advances by seq_len (so every token is a target exactly once). Global sample i of a phase comes from
the source picked by a counter-based seeded draw over the mixture weights. So the global order is a
pure function of (seed, phase, weights, seq_len, manifest, cursors at the phase start) and never of
the world size: rank r of W keeps global samples i with i % W == r and still advances every cursor.
State = (phase, samples consumed in the phase, per-source token cursors): tiny and exact, and because
cursors are in tokens a new phase may change seq_len and weights without resetting or repeating data.

The core (TokenSource, PackedStream) is numpy only; torch is imported by PrefetchLoader alone.
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.core.token_shards import TokenShard, check_tokenizer, open_token_shard, read_token_manifest

STATE_VERSION = 1
MIX_BLOCK = 4096  # mixture draws are made in seeded blocks so any global index is cheap to reach
_MIX_TAG = 0x6D6978  # "mix": keeps mixture draws independent of document permutations


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


class TokenSource:
    """One mixture source: token shards in manifest order, read as an endless shuffled doc stream."""

    def __init__(self, name: str, shards: list[TokenShard], sha256s: list[str], appends_eos: bool = False):
        """`appends_eos`: the shards already end every document with EOS (the tokenizer's encoder
        writes them so), so the reader inserts none; otherwise one EOS follows each document."""
        if not shards:
            raise ValueError(f"source {name!r} has no token shards")
        self.name = name
        self.shards = shards
        self.sha256s = sha256s
        self.doc_lens = np.concatenate([np.diff(s.doc_offsets) for s in shards])  # (num_docs,)
        self.shard_doc_base = np.cumsum([0] + [s.num_docs for s in shards])
        self.num_docs = int(self.doc_lens.shape[0])
        self.num_tokens = int(self.doc_lens.sum())
        if self.num_docs == 0:
            raise ValueError(f"source {name!r} has no documents")
        self.sep = 0 if appends_eos else 1  # separator tokens the reader inserts after a document
        self.epoch_tokens = self.num_tokens + self.sep * self.num_docs
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _epoch(self, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(doc permutation, end position of each permuted doc incl. EOS) for one epoch."""
        if epoch not in self._epochs:
            rng = np.random.Generator(
                np.random.PCG64(np.random.SeedSequence([seed, _name_key(self.name), epoch]))
            )
            perm = rng.permutation(self.num_docs)
            ends = np.cumsum(self.doc_lens[perm] + self.sep)
            if len(self._epochs) >= 2:  # a sample spans at most two epochs
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = (perm, ends)
        return self._epochs[epoch]

    def _doc(self, g: int) -> np.ndarray:
        i = int(np.searchsorted(self.shard_doc_base, g, side="right")) - 1
        return self.shards[i].doc(g - int(self.shard_doc_base[i]))

    def read(self, seed: int, cursor: int, n: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
        """n tokens from absolute stream position `cursor`, and the positions where a document starts."""
        out = np.empty(n, dtype=np.int64)
        starts = []
        filled = 0
        while filled < n:
            epoch, pos = divmod(cursor, self.epoch_tokens)
            perm, ends = self._epoch(seed, epoch)
            k = int(np.searchsorted(ends, pos, side="right"))
            off = pos - (int(ends[k - 1]) if k else 0)
            if off == 0:
                starts.append(filled)
            doc = self._doc(int(perm[k]))
            if off < len(doc):
                take = min(len(doc) - off, n - filled)
                out[filled : filled + take] = doc[off : off + take]
            else:
                take = 1
                out[filled] = eos_id
            filled += take
            cursor += take
        return out, np.asarray(starts, dtype=np.int64)


def load_sources(
    manifest_dirs: Iterable[str | Path], tokenizer_hash: str | None = None, names: Iterable[str] | None = None
) -> dict[str, TokenSource]:
    """Open every source of the given token-shard manifests (shards of a source keep manifest order).

    With `tokenizer_hash`, refuse manifests written by another tokenizer.
    """
    shards: dict[str, list[TokenShard]] = {}
    sha: dict[str, list[str]] = {}
    appends: dict[str, bool] = {}
    for d in manifest_dirs:
        manifest = read_token_manifest(d)
        if tokenizer_hash is not None:
            check_tokenizer(manifest, tokenizer_hash)
        flag = bool(manifest.raw.get("appends_eos", False))
        for entry in manifest.shards:
            if appends.setdefault(entry["source"], flag) != flag:
                raise ValueError(
                    f"source {entry['source']!r} mixes manifests with and without appended EOS ({d})"
                )
            shards.setdefault(entry["source"], []).append(open_token_shard(manifest.shard_path(entry)))
            sha.setdefault(entry["source"], []).append(entry["sha256"])
    wanted = sorted(shards) if names is None else list(names)
    missing = [n for n in wanted if n not in shards]
    if missing:
        raise KeyError(f"sources {missing} not found in manifests; have {sorted(shards)}")
    return {n: TokenSource(n, shards[n], sha[n], appends_eos=appends[n]) for n in wanted}


def data_fingerprint(
    shard_sha256s: Mapping[str, list[str]],
    tokenizer_hash: str | None,
    *,
    seq_len: int,
    eos_id: int,
    weights: Mapping[str, float],
    seed: int,
) -> str:
    """sha256 over the exact data and packing: a checkpoint stores it and resume refuses a mismatch."""
    blob = {
        "shards": {k: list(v) for k, v in sorted(shard_sha256s.items())},
        "tokenizer_hash": tokenizer_hash,
        "seq_len": seq_len,
        "eos_id": eos_id,
        "weights": {k: float(v) for k, v in sorted(weights.items())},
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Sample:
    index: int  # global index within the phase
    source: str
    tokens: np.ndarray  # (seq_len + 1,) int64; inputs = tokens[:-1], targets = tokens[1:]
    doc_starts: np.ndarray  # positions in `tokens` where a document begins


class PackedStream:
    """The world-size-independent global sample stream of one phase (numpy only)."""

    def __init__(
        self,
        sources: Mapping[str, TokenSource],
        weights: Mapping[str, float],
        seq_len: int,
        eos_id: int,
        seed: int,
        phase: int = 0,
        tokenizer_hash: str | None = None,
    ):
        self.sources = dict(sources)
        self.eos_id = eos_id
        self.seed = seed
        self.tokenizer_hash = tokenizer_hash
        self.cursors = {name: 0 for name in self.sources}
        self.set_phase(phase, weights, seq_len)

    def set_phase(self, phase: int, weights: Mapping[str, float], seq_len: int) -> None:
        """Start a phase: new weights and seq_len, index restarts at 0, source cursors carry on."""
        unknown = sorted(set(weights) - set(self.sources))
        if unknown:
            raise ValueError(f"weights name unknown sources {unknown}; have {sorted(self.sources)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights={dict(weights)} must be >= 0 with a positive sum")
        if seq_len < 1:
            raise ValueError(f"seq_len={seq_len} must be >= 1")
        self.phase = phase
        self.seq_len = seq_len
        self.weights = {k: float(weights.get(k, 0.0)) for k in sorted(self.sources)}
        self._names = list(self.weights)
        w = np.array(list(self.weights.values()))
        self._cdf = np.cumsum(w / w.sum())
        self._cdf[-1] = 1.0
        self.index = 0
        self._block = (-1, np.empty(0, dtype=np.int64))

    def _source_of(self, i: int) -> int:
        b = i // MIX_BLOCK
        if self._block[0] != b:
            ss = np.random.SeedSequence([self.seed, _MIX_TAG, self.phase, b])
            u = np.random.Generator(np.random.PCG64(ss)).random(MIX_BLOCK)
            choice = np.searchsorted(self._cdf, u, side="right")
            self._block = (b, np.minimum(choice, len(self._cdf) - 1))
        return int(self._block[1][i % MIX_BLOCK])

    def next_global_batch(self, global_batch: int, rank: int = 0, world_size: int = 1) -> list[Sample]:
        """Advance by `global_batch` global samples; return this rank's (indices i % world_size == rank)."""
        if global_batch % world_size or not 0 <= rank < world_size:
            raise ValueError(
                f"global_batch={global_batch} must divide by world_size={world_size}, rank={rank}"
            )
        out = []
        for i in range(self.index, self.index + global_batch):
            name = self._names[self._source_of(i)]
            if i % world_size == rank:
                src = self.sources[name]
                tokens, starts = src.read(self.seed, self.cursors[name], self.seq_len + 1, self.eos_id)
                out.append(Sample(i, name, tokens, starts))
            self.cursors[name] += self.seq_len
        self.index += global_batch
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "phase": self.phase,
            "samples_consumed": self.index,
            "cursors": dict(self.cursors),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["phase"] != self.phase:
            raise ValueError(
                f"data state is for phase {state['phase']} but the stream is in phase {self.phase}; "
                "call set_phase with that phase's weights and seq_len first"
            )
        if set(state["cursors"]) != set(self.sources):
            raise ValueError(f"data state sources {sorted(state['cursors'])} != {sorted(self.sources)}")
        self.cursors = {k: int(v) for k, v in state["cursors"].items()}
        self.index = int(state["samples_consumed"])

    def fingerprint(self) -> str:
        return data_fingerprint(
            {n: s.sha256s for n, s in self.sources.items()},
            self.tokenizer_hash,
            seq_len=self.seq_len,
            eos_id=self.eos_id,
            weights=self.weights,
            seed=self.seed,
        )


class PrefetchLoader:
    """This rank's batches as torch tensors, built by a background thread into a bounded queue.

    state_dict() reflects the batches handed out (not those prefetched), so it is exact.
    `data_wait_s` is the total time the consumer blocked waiting for data. With a CUDA `device`
    the thread also pins input_ids and labels and copies them to the GPU on its own CUDA stream
    (non_blocking), so the next batch's transfer overlaps the current step; the consumer's stream
    waits on the copy's event, never the host. The rest of the batch (index, source) stays on the host.
    """

    def __init__(
        self,
        stream: PackedStream,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        prefetch: int = 4,
        device: Any = None,
    ):
        if global_batch % world_size:
            raise ValueError(f"global_batch={global_batch} must divide by world_size={world_size}")
        self.stream = stream
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.prefetch = prefetch
        self.device = device if device is not None and getattr(device, "type", None) == "cuda" else None
        self._copy_stream = None
        self.data_wait_s = 0.0
        self._state = stream.state_dict()
        self._thread: threading.Thread | None = None

    def _produce(self, q: queue.Queue, stop: threading.Event) -> None:
        try:
            if self.device is not None:
                import torch  # CUDA only: torch is there

                torch.cuda.set_device(self.device)  # the current device is per thread
                self._copy_stream = self._copy_stream or torch.cuda.Stream(self.device)
            while not stop.is_set():
                samples = self.stream.next_global_batch(self.global_batch, self.rank, self.world_size)
                batch, event = _collate(samples), None
                if self.device is not None:
                    batch, event = _to_device(batch, self.device, self._copy_stream)
                self._put(q, stop, (batch, self.stream.state_dict(), event))
        except BaseException as e:  # surfaced to the consumer on its next batch
            self._put(q, stop, (e, None, None))

    @staticmethod
    def _put(q: queue.Queue, stop: threading.Event, item: tuple) -> None:
        while not stop.is_set():  # a timeout so close() never waits on a full queue
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _start(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=self.prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, args=(self._queue, self._stop), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the producer and rewind the stream to the last batch handed out."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self.stream.load_state_dict(self._state)

    def __iter__(self) -> PrefetchLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._thread is None:
            self._start()
        t0 = time.perf_counter()
        batch, state, event = self._queue.get()
        self.data_wait_s += time.perf_counter() - t0
        if isinstance(batch, BaseException):
            self._thread = None
            raise batch
        if event is not None:  # the compute stream waits for the copy (on the device, not the host)
            import torch  # CUDA only

            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for key in _DEVICE_KEYS:
                batch[key].record_stream(current)  # the allocator must not reuse it before compute ends
        self._state = state
        return batch

    def state_dict(self) -> dict[str, Any]:
        return dict(self._state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.close()
        self.stream.load_state_dict(state)
        self._state = self.stream.state_dict()

    def set_phase(self, phase: int, weights: Mapping[str, float], seq_len: int) -> None:
        self.close()
        self.stream.set_phase(phase, weights, seq_len)
        self._state = self.stream.state_dict()


_DEVICE_KEYS = ("input_ids", "labels")  # what the step reads on the device


def _to_device(batch: dict[str, Any], device: Any, copy_stream: Any) -> tuple[dict[str, Any], Any]:
    """input_ids and labels pinned and copied to `device` on `copy_stream`; returns the batch and
    the event that marks the copies' end."""
    import torch  # CUDA only

    out = dict(batch)
    with torch.cuda.stream(copy_stream):
        for key in _DEVICE_KEYS:
            out[key] = batch[key].contiguous().pin_memory().to(device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(copy_stream)
    return out, event


def _collate(samples: list[Sample]) -> dict[str, Any]:
    import torch  # torch only for batches: load_sources and PackedStream stay numpy-only

    tokens = torch.from_numpy(np.stack([s.tokens for s in samples]))  # (B, T + 1) int64
    return {
        "input_ids": tokens[:, :-1],
        "labels": tokens[:, 1:],
        "index": torch.tensor([s.index for s in samples]),
        "source": [s.source for s in samples],
        "num_doc_starts": torch.tensor([len(s.doc_starts) for s in samples]),
    }

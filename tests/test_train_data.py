"""Packed data stream: world-size-independent global order, exact resume, mixture, EOS, fingerprint."""

from __future__ import annotations

import numpy as np
import pytest

from pretrain.core.token_shards import TokenizerMismatchError, write_token_manifest, write_token_shard
from trainer.data import PackedStream, PrefetchLoader, load_sources

EOS = 0
VOCAB = 1000
WEIGHTS = {"web": 0.7, "code": 0.3}


def _write_corpus(root, seed: int = 0, tokenizer_hash: str = "tok-1") -> dict[str, list[np.ndarray]]:
    """web: 3 shards, code: 2 shards; token ids 1..VOCAB-1 so EOS (0) only appears as a separator."""
    rng = np.random.default_rng(seed)
    docs_by_source: dict[str, list[np.ndarray]] = {"web": [], "code": []}
    entries = []
    for i, source in enumerate(["web", "web", "code", "web", "code"]):
        docs = [rng.integers(1, VOCAB, size=int(rng.integers(1, 40))) for _ in range(60)]
        docs_by_source[source] += docs
        entries.append({**write_token_shard(root / f"{i:05d}.arrow", docs, VOCAB), "source": source})
    write_token_manifest(root, tokenizer_hash=tokenizer_hash, shards=entries)
    return docs_by_source


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    docs = _write_corpus(root)
    return root, docs


def _stream(root, seed=1, weights=WEIGHTS, seq_len=16, phase=0) -> PackedStream:
    sources = load_sources([root], tokenizer_hash="tok-1")
    return PackedStream(
        sources, weights, seq_len=seq_len, eos_id=EOS, seed=seed, phase=phase, tokenizer_hash="tok-1"
    )


def _key(s) -> tuple:
    return (s.index, s.source, s.tokens.tobytes())


def _global(stream: PackedStream, steps: int, gb: int, world_size: int, streams=None) -> list[tuple]:
    """Run `world_size` rank streams for `steps` steps and merge their samples by global index."""
    streams = streams or [stream] + [_clone_fresh(stream) for _ in range(world_size - 1)]
    out = []
    for _ in range(steps):
        for r, s in enumerate(streams):
            out += [_key(x) for x in s.next_global_batch(gb, r, world_size)]
    return sorted(out)


def _clone_fresh(stream: PackedStream) -> PackedStream:
    s = PackedStream(stream.sources, stream.weights, stream.seq_len, stream.eos_id, stream.seed, stream.phase)
    s.load_state_dict(stream.state_dict())
    return s


def test_union_over_ranks_is_world_size_independent(corpus):
    root, _ = corpus
    ref = _global(_stream(root), steps=6, gb=8, world_size=1)
    assert [k[0] for k in ref] == list(range(48))
    for w in (2, 4):
        assert _global(_stream(root), steps=6, gb=8, world_size=w) == ref


def test_rank_takes_indices_mod_world_size(corpus):
    root, _ = corpus
    batch = _stream(root).next_global_batch(8, rank=1, world_size=4)
    assert [s.index for s in batch] == [1, 5]
    with pytest.raises(ValueError, match="world_size=3"):
        _stream(root).next_global_batch(8, rank=0, world_size=3)


def test_resume_mid_stream_matches_uninterrupted(corpus):
    root, _ = corpus
    straight = _stream(root)
    ref = [_key(s) for _ in range(10) for s in straight.next_global_batch(8)]
    first = _stream(root)
    for _ in range(4):
        first.next_global_batch(8)
    state = first.state_dict()
    assert (
        set(state) == {"version", "phase", "samples_consumed", "cursors"} and state["samples_consumed"] == 32
    )
    resumed = _stream(root)
    resumed.load_state_dict(state)
    assert [_key(s) for _ in range(6) for s in resumed.next_global_batch(8)] == ref[32:]


def test_resume_with_different_world_size_continues_global_order(corpus):
    root, _ = corpus
    ref = _global(_stream(root), steps=8, gb=8, world_size=1)
    two = [_stream(root), _clone_fresh(_stream(root))]
    before = _global(None, steps=3, gb=8, world_size=2, streams=two)
    assert two[0].state_dict() == two[1].state_dict()  # every rank holds the global state
    state = two[1].state_dict()
    four = [_stream(root) for _ in range(4)]
    for s in four:
        s.load_state_dict(state)
    after = _global(None, steps=5, gb=8, world_size=4, streams=four)
    assert before + after == ref


def test_mixture_weights_respected(corpus):
    root, _ = corpus
    samples = _stream(root, seq_len=4).next_global_batch(8000)
    frac_web = sum(s.source == "web" for s in samples) / len(samples)
    assert abs(frac_web - 0.7) < 0.02, frac_web
    only_code = _stream(root, weights={"web": 0.0, "code": 1.0}).next_global_batch(64)
    assert {s.source for s in only_code} == {"code"}


def test_packing_is_exact_eos_separated_doc_stream(corpus):
    """One source's samples, overlapped by one token, are an epoch of its docs, each + EOS, once."""
    root, docs = corpus
    stream = _stream(root, weights={"web": 0.0, "code": 1.0}, seq_len=16)
    epoch_tokens = sum(len(d) + 1 for d in docs["code"])
    samples = stream.next_global_batch(epoch_tokens // 16 + 2)
    flat = np.concatenate([samples[0].tokens] + [s.tokens[1:] for s in samples[1:]])
    for s in samples:
        ends = np.flatnonzero(s.tokens == EOS)
        assert set((ends + 1)[ends + 1 < len(s.tokens)]) <= set(s.doc_starts)  # doc starts after each EOS
        assert all(p == 0 or s.tokens[p - 1] == EOS for p in s.doc_starts)
    pieces = np.split(flat[:epoch_tokens], np.flatnonzero(flat[:epoch_tokens] == EOS) + 1)[:-1]
    assert len(pieces) == len(docs["code"])
    got = sorted(p[:-1].tobytes() for p in pieces)  # strip the EOS
    want = sorted(d.astype(np.int64).tobytes() for d in docs["code"])
    assert got == want
    assert not np.array_equal(flat[: len(docs["code"][0])], docs["code"][0])  # docs are shuffled


def test_phase_change_keeps_cursors_and_changes_seq_len(corpus):
    root, _ = corpus
    stream = _stream(root, weights={"web": 0.0, "code": 1.0}, seq_len=16)
    a = stream.next_global_batch(4)
    stream.set_phase(1, {"web": 0.0, "code": 1.0}, seq_len=32)
    b = stream.next_global_batch(2)
    assert stream.state_dict()["phase"] == 1 and stream.state_dict()["samples_consumed"] == 2
    assert len(b[0].tokens) == 33 and b[0].tokens[0] == a[-1].tokens[-1]  # continues, no reset
    fresh = _stream(root, weights={"web": 0.0, "code": 1.0}, seq_len=16)
    with pytest.raises(ValueError, match="phase 1"):
        fresh.load_state_dict(stream.state_dict())


def test_two_fresh_instances_agree_and_seed_changes_order(corpus):
    root, _ = corpus
    a = [_key(s) for s in _stream(root, seed=5).next_global_batch(32)]
    b = [_key(s) for s in _stream(root, seed=5).next_global_batch(32)]
    c = [_key(s) for s in _stream(root, seed=6).next_global_batch(32)]
    assert a == b
    assert a != c
    assert [k[1] for k in a] != [k[1] for k in c]  # the mixture draw changes too, not just doc order


def test_phase_changes_mixture_draw(corpus):
    root, _ = corpus
    p0 = [s.source for s in _stream(root, phase=0).next_global_batch(64)]
    p1 = [s.source for s in _stream(root, phase=1).next_global_batch(64)]
    assert p0 != p1


def test_fingerprint_changes_with_shard_tokenizer_and_seq_len(corpus, tmp_path):
    root, _ = corpus
    base = _stream(root).fingerprint()
    assert _stream(root).fingerprint() == base
    assert _stream(root, seq_len=32).fingerprint() != base
    assert _stream(root, seed=2).fingerprint() != base
    assert _stream(root, weights={"web": 0.5, "code": 0.5}).fingerprint() != base
    other = tmp_path / "other"
    _write_corpus(other, seed=99)  # same layout, different tokens
    assert _stream(other).fingerprint() != base
    s = _stream(root)
    s.tokenizer_hash = "tok-2"
    assert s.fingerprint() != base


def test_load_sources_refuses_other_tokenizer(corpus):
    root, _ = corpus
    with pytest.raises(TokenizerMismatchError, match="tok-1.*tok-9"):
        load_sources([root], tokenizer_hash="tok-9")


def test_prefetch_loader_matches_stream_and_resumes_exactly(corpus):
    torch = pytest.importorskip("torch")
    root, _ = corpus
    ref = _stream(root).next_global_batch(8 * 6)
    ref_rank1 = [s for s in ref if s.index % 2 == 1]
    loader = PrefetchLoader(_stream(root), global_batch=8, rank=1, world_size=2, prefetch=3)
    got = [next(loader) for _ in range(3)]
    assert got[0]["input_ids"].shape == (4, 16) and got[0]["input_ids"].dtype == torch.int64
    state = loader.state_dict()  # prefetched batches must not leak into the state
    assert state["samples_consumed"] == 24
    loader.close()
    resumed = PrefetchLoader(_stream(root), global_batch=8, rank=1, world_size=2)
    resumed.load_state_dict(state)
    got += [next(resumed) for _ in range(3)]
    resumed.close()
    ids = torch.cat([b["input_ids"] for b in got])
    labels = torch.cat([b["labels"] for b in got])
    want = torch.from_numpy(np.stack([s.tokens for s in ref_rank1]))
    assert torch.equal(ids, want[:, :-1]) and torch.equal(labels, want[:, 1:])
    assert [i for b in got for i in b["index"].tolist()] == [s.index for s in ref_rank1]
    assert loader.data_wait_s >= 0.0 and resumed.data_wait_s > 0.0


def test_shards_with_appended_eos_give_the_same_stream(tmp_path, corpus):
    """The tokenizer's encoder stores each doc as ids + [EOS] and says so (appends_eos): the
    reader then inserts no separator, and the packed samples equal those of EOS-less shards."""
    root, _ = corpus
    rng = np.random.default_rng(0)
    entries = []
    for i, source in enumerate(["web", "web", "code", "web", "code"]):
        docs = [rng.integers(1, VOCAB, size=int(rng.integers(1, 40))) for _ in range(60)]
        docs = [np.append(d, EOS) for d in docs]
        entries.append({**write_token_shard(tmp_path / f"{i:05d}.arrow", docs, VOCAB), "source": source})
    write_token_manifest(tmp_path, tokenizer_hash="tok-1", shards=entries, appends_eos=True, eos_id=EOS)
    plain, with_eos = _stream(root), _stream(tmp_path)
    assert with_eos.sources["web"].epoch_tokens == plain.sources["web"].epoch_tokens
    for _ in range(40):  # well past one epoch of "code"
        a, b = plain.next_global_batch(8), with_eos.next_global_batch(8)
        assert [_key(x) for x in a] == [_key(x) for x in b]
        assert [x.doc_starts.tolist() for x in a] == [x.doc_starts.tolist() for x in b]

"""The MinHash signature step reads its shard by record batches: the same files, byte for byte, as
reading the whole shard at once (the implementation before, kept below), and a peak memory that
grows with the shard's documents by the band run it must hold, not by their text."""

from __future__ import annotations

import gc
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.corpus.short_docs import sentence_pool, short_docs
from data_pipeline.minhash import steps
from data_pipeline.minhash.dedup import MinHashConfig
from data_pipeline.minhash.lsh import band_keys
from data_pipeline.minhash.signatures import EMPTY_VALUE, MinHasher
from data_pipeline.shuffle import write_run
from pretrain.core.files import atomic_path
from pretrain.core.shards import DOC_SCHEMA, ShardWriter, read_table, write_table
from pretrain.core.storage import stage_path, work_dir

ROW_GROUP_ROWS = 100  # the input's row groups (`batch_rows` of the stage that wrote it)
# Memory test: the peak on a shard of 4x the documents may exceed the smaller one's by the
# signature's bytes per extra document plus this. The step holds the band run (20 bytes a band row
# while sorting: 340 a document at 17 bands) and 4 bytes a document; its node rows until written.
SLACK_BYTES_PER_ROW = 256


def _signature_shard_whole(
    shard_path: str, shard_index: int, cfg, bands: int, rows: int, out_dir: str, fingerprint
) -> dict:
    """`steps.signature_shard` as it was: the whole shard read, its texts as a list, the signatures
    and the band table held whole (the reference the streamed step must match byte for byte)."""
    t0 = time.perf_counter()
    out = stage_path(out_dir)
    work = work_dir(out) / "minhash"
    name = stage_path(shard_path).stem
    table = read_table(shard_path, columns=["id", "text", "metadata"])
    hasher = MinHasher(num_perm=cfg.num_perm, seed=cfg.seed, ngram=cfg.ngram, mode=cfg.mode)
    sigs = hasher.signatures(table.column("text").to_pylist())
    sig_path = work / "sig" / f"{name}.npy"
    with atomic_path(sig_path) as tmp, open(tmp, "wb") as f:
        np.save(f, sigs)
    nodes = steps.node_ids(shard_index, table.num_rows)
    scores = [steps._quality_score(m, cfg.quality_score_field) for m in table.column("metadata").to_pylist()]
    node_path = work / "nodes" / f"{name}.parquet"
    write_table(
        node_path,
        pa.table({"node": nodes, "id": table.column("id"), "score": scores}, schema=steps.NODE_SCHEMA),
    )
    has_shingles = ~(sigs == EMPTY_VALUE).all(axis=1)
    keys = band_keys(sigs[has_shingles], bands, rows)
    band_path = work / "bands" / f"{name}.0000.arrow"
    run = write_run(
        band_path,
        pa.table(
            {
                "key": keys.ravel(),
                "band": np.broadcast_to(np.arange(bands, dtype=np.uint16), keys.shape).ravel(),
                "node": np.repeat(nodes[has_shingles], bands),
            }
        ),
        "key",
    )
    record = {
        "shard": name,
        "fingerprint": fingerprint,
        "num_in": table.num_rows,
        "num_band_rows": run["rows"],
        "band_runs": [str(band_path)],
        "scheme": hasher.scheme_id,
        "num_without_shingles": int((~has_shingles).sum()),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return steps._done(out, work / "sig" / f"{name}.done.json", record, sig_path, node_path, band_path)


def _write_shard(path: Path, texts: list[str]) -> Path:
    """A document shard of `texts` in row groups of ROW_GROUP_ROWS, with quality scores on most."""
    with ShardWriter(path) as w:
        for start in range(0, len(texts), ROW_GROUP_ROWS):
            rows = range(start, min(len(texts), start + ROW_GROUP_ROWS))
            w.write_table(
                pa.table(
                    {
                        "id": [f"lang=en/part-00000.parquet#{i}" for i in rows],
                        "text": texts[rows.start : rows.stop],
                        "source": ["web"] * len(rows),
                        "url": pa.nulls(len(rows), pa.string()),
                        "metadata": [
                            "{}" if i % 5 == 0 else json.dumps({"quality_score": (i * 7919 % 1000) / 1000})
                            for i in rows
                        ],
                    },
                    schema=DOC_SCHEMA,
                )
            )
    return path


@pytest.fixture(scope="module")
def pool() -> list[str]:
    return sentence_pool()


@pytest.fixture(scope="module")
def shard(pool, tmp_path_factory) -> Path:
    """1,000 short documents (5% planted near-copies) and some without shingles, spread over row
    groups."""
    texts = short_docs(1000, seed=11, pool=pool)
    for i in range(3, len(texts), 97):
        texts[i] = ("", "  ", "!!! ...", "-")[i % 4]  # no word characters: the empty signature
    return _write_shard(tmp_path_factory.mktemp("sig_in") / "part-00007.parquet", texts)


def _run(fn, shard_path: Path, out: Path, shard_index: int = 7) -> tuple[dict, dict[str, bytes]]:
    cfg = MinHashConfig()
    bands, rows = cfg.bands_rows()
    rec = fn(str(shard_path), shard_index, cfg, bands, rows, str(out), {"input": "x"})
    work = out / "_work" / "minhash"
    name = shard_path.stem
    files = {
        kind: (work / kind / f"{name}.{ext}").read_bytes()
        for kind, ext in (("sig", "npy"), ("nodes", "parquet"), ("bands", "0000.arrow"))
    }
    rec = {k: v for k, v in rec.items() if k not in ("seconds", "outputs")}
    rec["band_runs"] = [Path(p).relative_to(out) for p in rec["band_runs"]]  # the same in any output
    return rec, files


@pytest.mark.parametrize(
    "text_bytes,batch_rows",
    [(steps.SIG_BATCH_TEXT_BYTES, steps.SIG_BATCH_ROWS), (20_000, 37), (1, 1)],
    ids=["default", "batches-across-row-groups", "one-row-group-per-read"],
)
def test_same_files_as_reading_the_whole_shard(shard, tmp_path, monkeypatch, text_bytes, batch_rows):
    want_rec, want = _run(_signature_shard_whole, shard, tmp_path / "whole")
    monkeypatch.setattr(steps, "SIG_BATCH_TEXT_BYTES", text_bytes)
    monkeypatch.setattr(steps, "SIG_BATCH_ROWS", batch_rows)
    got_rec, got = _run(steps.signature_shard, shard, tmp_path / "streamed")
    assert got_rec == want_rec
    assert want_rec["num_without_shingles"] >= 10 and want_rec["num_band_rows"] > 0
    for kind in want:
        assert got[kind] == want[kind], kind
    assert np.load(tmp_path / "streamed" / "_work" / "minhash" / "sig" / f"{shard.stem}.npy").shape == (
        1000,
        MinHashConfig().num_perm,
    )


def test_node_file_written_in_row_groups_keeps_its_rows(shard, tmp_path, monkeypatch):
    """Node files are written NODE_GROUP_ROWS rows at a time: Parquet's default row group, so a
    file is the same as one write of all its rows; smaller here, to cut this shard."""
    _run(_signature_shard_whole, shard, tmp_path / "whole")
    monkeypatch.setattr(steps, "NODE_GROUP_ROWS", 300)
    monkeypatch.setattr(steps, "SIG_BATCH_ROWS", 128)
    _, got = _run(steps.signature_shard, shard, tmp_path / "streamed")
    path = Path("_work") / "minhash" / "nodes" / f"{shard.stem}.parquet"
    meta = pq.ParquetFile(tmp_path / "streamed" / path).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [300, 300, 300, 100]
    assert pq.read_table(tmp_path / "streamed" / path).equals(pq.read_table(tmp_path / "whole" / path))


def test_band_runs_of_what_the_budget_holds_give_the_same_candidates(shard, tmp_path, monkeypatch):
    """A shard's band keys go to one run per run of documents the task's budget holds: here 300
    (batches of 128), so 1,000 documents give 4 runs. Together they hold the rows of the one run
    written when all fit, and the candidates step finds the same pairs in them."""
    want_rec, _ = _run(steps.signature_shard, shard, tmp_path / "whole")
    monkeypatch.setattr(steps, "SIG_BATCH_ROWS", 128)
    monkeypatch.setattr(steps, "chunk_rows", lambda budget, bytes_per_row: 300)
    cfg = MinHashConfig()
    bands, rows = cfg.bands_rows()
    got_rec = steps.signature_shard(str(shard), 7, cfg, bands, rows, str(tmp_path / "runs"), {"input": "x"})
    assert len(got_rec["band_runs"]) == 4 and got_rec["num_band_rows"] == want_rec["num_band_rows"]
    assert got_rec["num_without_shingles"] == want_rec["num_without_shingles"]
    runs = [pa.ipc.open_file(p).read_all() for p in got_rec["band_runs"]]
    assert all(t.num_rows <= 300 * bands for t in runs)
    assert all(np.all(np.diff(t.column("key").to_numpy().astype(np.float64)) >= 0) for t in runs)
    order = [("key", "ascending"), ("band", "ascending"), ("node", "ascending")]
    (whole_run,) = [str(tmp_path / "whole" / p) for p in want_rec["band_runs"]]
    whole = pa.ipc.open_file(whole_run).read_all()
    assert pa.concat_tables(runs).sort_by(order).equals(whole.sort_by(order))
    monkeypatch.undo()  # the candidates step reads each set of runs in one chunk
    pairs = []
    for out, band_runs in (
        (tmp_path / "whole", [whole_run]),
        (tmp_path / "runs", got_rec["band_runs"]),
    ):
        rec = steps.candidate_partition(0, 1, band_runs, 1 << 30, str(out), "fp")
        table = pa.concat_tables([pa.ipc.open_file(p).read_all() for p in rec["runs"]])
        pairs.append(table.sort_by([("src", "ascending"), ("dst", "ascending")]))
    assert pairs[0].num_rows > 0 and pairs[0].equals(pairs[1])


def test_empty_shard(tmp_path):
    path = _write_shard(tmp_path / "part-00000.parquet", [])
    want_rec, want = _run(_signature_shard_whole, path, tmp_path / "whole", 0)
    got_rec, got = _run(steps.signature_shard, path, tmp_path / "streamed", 0)
    assert got_rec == want_rec and got == want
    assert got_rec["num_in"] == 0 and got_rec["num_band_rows"] == 0


def test_unreadable_shard_names_it(tmp_path):
    path = tmp_path / "part-00000.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot read Parquet shard .*part-00000.parquet"):
        _run(steps.signature_shard, path, tmp_path / "out")


class _QuickHasher:
    """MinHasher's interface and output shape, each signature derived from its text's hash (the
    memory test measures the step, not the hasher, whose memory is one batch's); it also samples
    Arrow's allocated bytes at every batch (buffers outside tracemalloc's view)."""

    arrow_peak = 0

    def __init__(self, num_perm: int, seed: int, ngram: int, mode: str):
        self.num_perm, self.scheme_id = num_perm, "quick"
        self._mult = np.arange(1, num_perm + 1, dtype=np.uint32) * np.uint32(2654435761)

    def signatures(self, texts: list[str]) -> np.ndarray:
        _QuickHasher.arrow_peak = max(_QuickHasher.arrow_peak, pa.total_allocated_bytes())
        h = np.fromiter((hash(t) & 0xFFFFFFFF for t in texts), np.uint32, len(texts))
        return h[:, None] * self._mult


def test_peak_memory_grows_by_the_band_run_not_the_text(pool, tmp_path, monkeypatch):
    """The step's peak memory on shards of n and 4n documents (tracemalloc: Python objects and numpy
    arrays; plus Arrow's bytes at each batch): the growth per extra document stays under the
    signature's bytes (num_perm x 4) plus a little, so it is not the text. Reading the whole shard
    measured 2,773 bytes a document of ~430 bytes here (the texts as Python strings, the
    signatures, the band table and its sort), streaming 342 (the band run: 20 bytes a band row)."""
    monkeypatch.setattr(steps, "MinHasher", _QuickHasher)
    n = 20_000
    docs = short_docs(4 * n, seed=1, pool=pool)
    small = _write_shard(tmp_path / "part-00001.parquet", docs[:n])
    large = _write_shard(tmp_path / "part-00002.parquet", docs)
    del docs
    cfg = MinHashConfig()
    bands, rows = cfg.bands_rows()

    def peak(path: Path, out: Path) -> int:
        gc.collect()
        arrow_start = _QuickHasher.arrow_peak = pa.total_allocated_bytes()
        tracemalloc.start()
        try:
            steps.signature_shard(str(path), 1, cfg, bands, rows, str(out), {})
            python_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return python_peak + _QuickHasher.arrow_peak - arrow_start

    growth = [peak(small, tmp_path / "small"), peak(large, tmp_path / "large")]
    per_row = (growth[1] - growth[0]) / (3 * n)
    bound = cfg.num_perm * 4 + SLACK_BYTES_PER_ROW
    print(f"peak growth {growth[0] / 2**20:.1f} / {growth[1] / 2**20:.1f} MiB: {per_row:.0f} B per document")
    assert per_row <= bound, f"{per_row:.0f} bytes per document, over {bound}"

"""Held-out split: route each document of a stage directory to train/ or heldout/, per source.

    split_heldout("runs/x/minhash", "runs/x/split", heldout_fraction=0.05, min_per_source=2, seed=0)
    # -> runs/x/split/train/{shards,manifest.json,stats.json}, runs/x/split/heldout/{...}

Within each source the documents are ranked by sha256(seed, id); the first
max(min_per_source, round(fraction * n)) are held out (never all of them: at least one stays for
training). The choice depends only on the ids, the seed and the counts, so it is the same for any
shard layout or worker count. Each side's documents are packed into shards of about
`target_shard_bytes` (`data_pipeline.pack`, on Ray), in input order, keeping language folders:
OUT/train/shards/part-NNNNN.parquet. stats.json accounts for every document: in = train + heldout.
The input is what every data stage takes: a stage directory, or files, folders and globs of raw
documents, which are first read into OUT/_work/input by the pipeline's `read` step (on Ray; the
work is removed after the split). It reads ids, then rewrites the shards per side into `_work/`,
then packs them, all cheap next to the filters.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from data_pipeline.inputs import carry_read_rejects, stage_dir_of_inputs
from data_pipeline.pack import (
    DEFAULT_TARGET_SHARD_BYTES,
    PackSource,
    ShardSizeConfig,
    arrow_bytes,
    pack_shards,
)
from data_pipeline.readers import InputConfig
from pretrain.core.done import remove_work
from pretrain.core.files import read_json, write_json
from pretrain.core.progress import Progress
from pretrain.core.runner import RayConfig
from pretrain.core.shards import (
    DOC_SCHEMA,
    list_shards,
    read_table,
    remove_unlisted,
    shard_relpath,
    write_manifest,
    write_table,
)
from pretrain.core.storage import stage_path, work_dir


def _rank_key(seed: int, doc_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{doc_id}".encode()).digest()


def heldout_ids(
    ids_by_source: dict[str, list[str]], fraction: float, min_per_source: int, seed: int
) -> set[str]:
    """The held-out ids: per source the lowest-ranked k, k = max(min, round(fraction * n)) < n."""
    out: set[str] = set()
    for ids in ids_by_source.values():
        n = len(ids)
        k = max(min_per_source if n > min_per_source else 0, round(fraction * n))
        k = min(k, n - 1)
        if k > 0:
            out.update(sorted(ids, key=lambda i: _rank_key(seed, i))[:k])
    return out


def split_heldout(
    inputs: str | Path | list[str],
    output_dir: str | Path,
    heldout_fraction: float,
    min_per_source: int,
    seed: int,
    ray: RayConfig | None = None,
    target_shard_bytes: int = DEFAULT_TARGET_SHARD_BYTES,
    target_shard_rows: int | None = None,
) -> dict[str, Any]:
    """Write output_dir/train and output_dir/heldout stage directories; return the stats.
    `inputs`: a stage directory, or raw files, folders and globs (read on `ray` first); the shards
    of each side are packed to `target_shard_bytes` / `target_shard_rows` (on `ray`)."""
    out = stage_path(output_dir)
    paths = [str(p) for p in inputs] if isinstance(inputs, list) else [str(inputs)]
    read_dir = work_dir(out) / "input"
    pack = ShardSizeConfig(
        ray=ray or RayConfig(),
        progress=False,
        target_shard_bytes=target_shard_bytes,
        target_shard_rows=target_shard_rows,
    )
    inp = stage_dir_of_inputs(InputConfig(paths=paths), read_dir, pack.ray)
    stats = _split(inp, out, heldout_fraction, min_per_source, seed, pack)
    if inp == read_dir:  # raw inputs: what the read step rejected is kept and counted
        read = read_json(read_dir / "stats.json")
        stats["read"] = read["stages"]["read"] | {"rejects": carry_read_rejects(read_dir, out)}
        write_json(out / "stats.json", stats)
    remove_work(out)
    return stats


def _split(
    inp: Path, out: Path, heldout_fraction: float, min_per_source: int, seed: int, pack: ShardSizeConfig
) -> dict[str, Any]:
    shards = list_shards(inp)
    if not shards:
        raise FileNotFoundError(f"no document shards under {inp}/shards")
    ids_by_source: dict[str, list[str]] = defaultdict(list)
    for path in shards:
        t = read_table(path, columns=["id", "source"])
        for doc_id, source in zip(t["id"].to_pylist(), t["source"].to_pylist()):
            ids_by_source[source].append(doc_id)
    dup = [i for i, c in Counter(i for ids in ids_by_source.values() for i in ids).items() if c > 1]
    if dup:
        raise ValueError(f"{inp}: document ids must be unique, {len(dup)} repeat (e.g. {dup[0]!r})")
    held = heldout_ids(ids_by_source, heldout_fraction, min_per_source, seed)
    held_arr = pa.array(sorted(held), pa.string())

    sources: dict[str, list[PackSource]] = {"train": [], "heldout": []}
    counts: dict[str, Counter] = {"in": Counter(), "train": Counter(), "heldout": Counter()}
    for path in shards:
        table = read_table(path).select(DOC_SCHEMA.names).cast(DOC_SCHEMA)
        mask = pc.is_in(table["id"], value_set=held_arr)
        for side, part in (("heldout", table.filter(mask)), ("train", table.filter(pc.invert(mask)))):
            rel = shard_relpath(inp, path)  # keeps language folders (lang=xx/)
            piece = work_dir(out) / "split" / side / rel
            entry = write_table(piece, part, DOC_SCHEMA)
            folder = rel.rpartition("/")[0]
            about = {"input": rel}
            sources[side].append(
                PackSource(str(piece), entry["rows"], arrow_bytes(part), entry["sha256"], folder, about)
            )
            counts[side].update(part["source"].to_pylist())
        counts["in"].update(table["source"].to_pylist())
    stats = {
        "heldout_fraction": heldout_fraction,
        "min_per_source": min_per_source,
        "seed": seed,
        "num_in": sum(counts["in"].values()),
        "num_train": sum(counts["train"].values()),
        "num_heldout": sum(counts["heldout"].values()),
        "per_source": {
            s: {k: counts[k][s] for k in ("in", "train", "heldout")} for s in sorted(counts["in"])
        },
    }
    assert stats["num_in"] == stats["num_train"] + stats["num_heldout"], stats
    for side in ("train", "heldout"):
        work = work_dir(out) / "pack" / side
        entries = pack_shards(sources[side], pack, out, out / side / "shards", work, Progress(enabled=False))
        remove_unlisted(out / side, {f"shards/{e['path']}" for e in entries}, kinds=("shards",))
        write_json(out / side / "stats.json", stats)
        write_manifest(out / side, split=side, shards=entries)
    write_json(out / "stats.json", stats)
    return stats

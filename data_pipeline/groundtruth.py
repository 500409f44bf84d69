"""Score a pipeline run against the generated corpus's ground truth (`truth.jsonl`).

    pretrain data score --corpus runs/corpus --run runs/data

Reports, per planted category, how many documents met their expected fate (kept, or rejected
by the expected stage and reason), PII recall and false positives, and toxicity precision/recall.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from pretrain.core.jsonl import read_jsonl


def load_truth(corpus_dir: str | Path) -> dict[str, dict]:
    """The corpus's truth rows by document id."""
    return {r["id"]: r for r in read_jsonl(Path(corpus_dir) / "truth.jsonl")}


def read_outputs(run_dir: str | Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """(kept docs by id, rejects by id), metadata decoded. Raises if any id is written twice."""
    run_dir = Path(run_dir)
    kept: dict[str, dict] = {}
    rejected: dict[str, dict] = {}
    for sub, target in (("shards", kept), ("rejects", rejected)):
        for f in sorted((run_dir / sub).rglob("*.parquet")):
            for row in pq.read_table(f).to_pylist():
                if row["id"] in kept or row["id"] in rejected:
                    raise ValueError(f"document {row['id']} written twice (second time in {f})")
                row["metadata"] = json.loads(row["metadata"])
                target[row["id"]] = row
    return kept, rejected


def _met(t: dict, kept: dict, rejected: dict) -> bool:
    if t["expect"] == "kept":
        return t["id"] in kept
    r = rejected.get(t["id"])
    return (
        r is not None
        and r["stage"] == t["expect"]["stage"]
        and t["expect"].get("reason") in (None, r["reason"])
    )


def score_run(corpus_dir: str | Path, run_dir: str | Path) -> dict[str, Any]:
    truth = load_truth(corpus_dir)
    kept, rejected = read_outputs(run_dir)
    per_cat: dict[str, Counter] = defaultdict(Counter)
    wrong = []
    for t in truth.values():
        ok = _met(t, kept, rejected)
        per_cat[t["category"]]["n"] += 1
        per_cat[t["category"]]["met"] += ok
        if not ok:
            r = rejected.get(t["id"])
            wrong.append(
                {
                    "id": t["id"],
                    "category": t["category"],
                    "expect": t["expect"],
                    "got": "kept" if t["id"] in kept else (f"{r['stage']}/{r['reason']}" if r else "missing"),
                }
            )
    # PII: every planted value gone from its kept doc, counts exact; no finds in other kept docs.
    pii_docs = [t for t in truth.values() if t["category"] == "pii" and t["id"] in kept]
    planted = sum(len(t["pii_values"]) for t in pii_docs)
    removed = sum(v not in kept[t["id"]]["text"] for t in pii_docs for _, v in t["pii_values"])
    counts_exact = sum(kept[t["id"]]["metadata"].get("pii") == t["pii"] for t in pii_docs)
    false_pos = [i for i, d in kept.items() if truth[i]["category"] != "pii" and d["metadata"].get("pii")]
    negatives_kept = sum(s in kept[i]["text"] for i in kept for s in truth[i].get("hard_negatives", []))
    negatives = sum(len(truth[i].get("hard_negatives", [])) for i in kept)
    # Toxicity, over the documents that reached that stage.
    reached = [
        t
        for t in truth.values()
        if t["id"] in kept or rejected.get(t["id"], {}).get("stage") in ("toxicity", "exact_dedup")
    ]
    predicted = {t["id"] for t in reached if rejected.get(t["id"], {}).get("stage") == "toxicity"}
    actual = {t["id"] for t in reached if t["category"] == "toxic"}
    tp = len(predicted & actual)
    return {
        "num_docs": len(truth),
        "num_met": sum(c["met"] for c in per_cat.values()),
        "categories": {k: dict(v) for k, v in sorted(per_cat.items())},
        "pii": {
            "planted_values": planted,
            "recall": removed / planted if planted else None,
            "docs_with_exact_counts": counts_exact,
            "num_pii_docs": len(pii_docs),
            "false_positive_docs": len(false_pos),
            "hard_negatives_kept": f"{negatives_kept}/{negatives}",
        },
        "toxicity": {
            "num_toxic": len(actual),
            "num_flagged": len(predicted),
            "precision": tp / len(predicted) if predicted else None,
            "recall": tp / len(actual) if actual else None,
        },
        "wrong": wrong,
    }


def print_score(score: dict[str, Any]) -> None:
    table = Table(
        title=f"ground truth: {score['num_met']}/{score['num_docs']} documents met their expected fate"
    )
    for col in ("category", "docs", "met"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat, c in score["categories"].items():
        table.add_row(cat, str(c["n"]), str(c["met"]))
    console = Console()
    console.print(table)
    p, t = score["pii"], score["toxicity"]
    console.print(
        f"PII: recall {p['recall'] or 0:.3f} over {p['planted_values']} planted values, "
        f"{p['false_positive_docs']} false-positive docs, hard negatives kept {p['hard_negatives_kept']}"
    )
    console.print(
        f"toxicity: precision {t['precision'] or 0:.3f}, recall {t['recall'] or 0:.3f} "
        f"({t['num_flagged']} flagged, {t['num_toxic']} toxic)"
    )
    for w in score["wrong"][:10]:
        console.print(f"  wrong: {w}")

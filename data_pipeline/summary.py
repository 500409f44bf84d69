"""Per-run summary: a rich table on the console and summary.md beside the shards.

Counts per stage and reason (in = kept + rejected), the input files skipped and why, a few example
rejects per reason and language, the source profiles, PII counts per type and throughput.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pretrain.core.files import write_text
from pretrain.core.storage import stage_path


def summary_markdown(stats: dict[str, Any]) -> str:
    lines = [
        "# Data pipeline summary",
        "",
        f"{stats['num_in']:,} documents in, {stats['num_kept']:,} kept, {stats['num_rejected']:,} rejected "
        f"({stats['num_shards']} shards, {stats['seconds']:.1f} s, {stats['docs_per_second'] or 0:,.0f} docs/s).",
        "",
        "| stage | in | kept | rejected | reasons |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, s in stats["stages"].items():
        reasons = ", ".join(f"{r}: {n:,}" for r, n in s["reasons"].items())
        lines.append(f"| {name} | {s['in']:,} | {s['kept']:,} | {s['rejected']:,} | {reasons} |")
    if stats.get("skipped_files"):
        lines += ["", "## Skipped input files", "", "| file | why |", "| --- | --- |"]
        lines += [f"| `{f['path']}` | {f['reason']} |" for f in stats["skipped_files"]]
    if stats.get("source_profiles"):
        lines += ["", "## Source profiles", "", "| source | profile |", "| --- | --- |"]
        lines += [f"| `{src}` | {p} |" for src, p in stats["source_profiles"].items()]
        lines.append("Other sources: prose.")
    if stats.get("rejected_by_language"):
        lines += ["", "## Rejected per language and rule", "", "| stage | language | reason | documents |",
                  "| --- | --- | --- | ---: |"]  # fmt: skip
        for stage, counts in stats["rejected_by_language"].items():
            for key, n in counts.items():
                lang, _, reason = key.partition("/")
                lines.append(f"| {stage} | {lang} | {reason} | {n:,} |")
    if stats.get("quality_model"):
        q = stats["quality_model"]
        lines += ["", "## Quality classifier", "", f"Model `{q['model']}`, threshold {q['threshold']}."]
        if "precision" in q:
            lines.append(f"On its held-out split ({q['num_heldout']:,} documents): precision {q['precision']:.3f}, "
                         f"recall {q['recall']:.3f} (positive class, score >= 0.5).")  # fmt: skip
    if stats.get("pii"):
        lines += ["", "## PII replaced", "", "| type | count |", "| --- | ---: |"]
        lines += [f"| {k} | {v:,} |" for k, v in stats["pii"].items()]
    if stats.get("examples"):
        lines += ["", "## Example rejects", ""]
        for key, exs in stats["examples"].items():
            lines.append(f"### {key}")
            for ex in exs:
                snippet = ex["text"].replace("\n", " ").replace("|", "\\|")[:120]
                lang = f"[{ex['language']}] " if "language" in ex else ""
                lines.append(f"- {lang}`{ex['id']}` ({ex['detail'][:100]}): {snippet}")
            lines.append("")
    return "\n".join(lines) + "\n"


def print_summary(stats: dict[str, Any]) -> None:
    table = Table(
        title=f"{stats['num_in']:,} in -> {stats['num_kept']:,} kept "
        f"({stats['docs_per_second'] or 0:,.0f} docs/s)"
    )
    for col in ("stage", "in", "kept", "rejected", "top reasons"):
        table.add_column(col, justify="right" if col in ("in", "kept", "rejected") else "left")
    for name, s in stats["stages"].items():
        top = sorted(s["reasons"].items(), key=lambda kv: -kv[1])[:4]
        table.add_row(
            name,
            f"{s['in']:,}",
            f"{s['kept']:,}",
            f"{s['rejected']:,}",
            ", ".join(f"{r}={n}" for r, n in top),
        )
    Console().print(table)


def write_summary(out_dir: str | Path, stats: dict[str, Any], print_table: bool = True) -> Path:
    path = stage_path(out_dir) / "summary.md"
    write_text(path, summary_markdown(stats))
    if print_table:
        print_summary(stats)
    return path

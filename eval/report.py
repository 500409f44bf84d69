"""Report of a run's scores: Markdown + HTML tables and one PNG per metric against tokens seen.

    paths = write_report("runs/x/eval/results.jsonl", "runs/x/eval")
    # {"markdown": .../report.md, "html": .../report.html, "plots": [.../plots/bits_per_byte.png, ...]}

Tables: one per task, a row per checkpoint (step, tokens seen) and a column per metric. Plots:
one per metric with a line per task (x = tokens seen, or step when a checkpoint has no count).
The newest checkpoint's generations (generations.jsonl beside results.jsonl) close the report.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from eval.results import GENERATIONS, read_rows
from pretrain.core.files import atomic_path

SKIP_TASKS = {"eval"}  # bookkeeping rows (scoring time), not scores


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:.4g}"
    return "" if v is None else str(v)


def _tables(rows: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[list[Any]]]]:
    """task -> (metric names, [[step, tokens_seen, value per metric], ...] sorted by step)."""
    by_task: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    metrics: dict[str, list[str]] = defaultdict(list)
    tokens: dict[int, Any] = {}
    for r in rows:
        if r["task"] in SKIP_TASKS:
            continue
        by_task[r["task"]].setdefault(r["step"], {})[r["metric"]] = r["value"]
        tokens[r["step"]] = r.get("tokens_seen")
        if r["metric"] not in metrics[r["task"]]:
            metrics[r["task"]].append(r["metric"])
    return {
        task: (
            metrics[task],
            [[s, tokens[s]] + [vals.get(m) for m in metrics[task]] for s, vals in sorted(steps.items())],
        )
        for task, steps in sorted(by_task.items())
    }


def _plot(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib  # heavy, optional (eval extra): only the plots need it

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt  # after use("Agg"), so no GUI backend is loaded

    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["task"] in SKIP_TASKS or not isinstance(r["value"], (int, float)):
            continue
        x = r.get("tokens_seen")
        series[r["metric"]][r["task"]].append((x if x is not None else r["step"], r["value"]))
    paths = []
    for metric, tasks in sorted(series.items()):
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        for task, pts in sorted(tasks.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=task)
        ax.set_xlabel("tokens seen")
        ax.set_ylabel(metric)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / "plots" / f"{metric}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        paths.append(path)
    return paths


def _latest_generations(results_path: Path) -> list[dict[str, Any]]:
    gens = read_rows(results_path.parent / GENERATIONS)
    if not gens:
        return []
    last = max(g["step"] for g in gens)
    return [g for g in gens if g["step"] == last]


def write_report(results_jsonl: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write report.md, report.html and plots/<metric>.png under out_dir; return their paths."""
    results_jsonl, out = Path(results_jsonl), Path(out_dir)
    rows = read_rows(results_jsonl)
    tables = _tables(rows)
    plots = _plot(rows, out)
    gens = _latest_generations(results_jsonl)
    steps = sorted({r["step"] for r in rows})

    md = [f"# Evaluation report\n\n{len(steps)} checkpoint(s), steps {steps}. Source: `{results_jsonl}`.\n"]
    page = [
        "<!doctype html><meta charset='utf-8'><title>Evaluation report</title>",
        "<style>body{font-family:sans-serif;max-width:60em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>",
        f"<h1>Evaluation report</h1><p>{len(steps)} checkpoint(s), steps {html.escape(str(steps))}.</p>",
    ]
    for task, (metrics, table) in tables.items():
        head = ["step", "tokens_seen"] + metrics
        md.append(f"## {task}\n\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        md.extend("| " + " | ".join(_fmt(v) for v in line) + " |" for line in table)
        md.append("")
        page.append(
            f"<h2>{html.escape(task)}</h2><table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
        )
        page.extend("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in line) + "</tr>" for line in table)
        page.append("</table>")
    if plots:
        md.append("## Plots\n")
        page.append("<h2>Plots</h2>")
        for p in plots:
            rel = p.relative_to(out).as_posix()
            md.append(f"![{p.stem}]({rel})")
            page.append(f"<img src='{rel}' alt='{p.stem}'>")
        md.append("")
    if gens:
        md.append(f"## Generations at step {gens[0]['step']}\n")
        page.append(f"<h2>Generations at step {gens[0]['step']}</h2><ul>")
        for g in gens:
            md.append(f"- **{g['mode']}** `{g['prompt']}` → {g['text']!r}")
            page.append(
                f"<li><b>{g['mode']}</b> <code>{html.escape(g['prompt'])}</code> → {html.escape(repr(g['text']))}</li>"
            )
        page.append("</ul>")
    paths = {"markdown": out / "report.md", "html": out / "report.html", "plots": plots}
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text("\n".join(md) + "\n", encoding="utf-8")
    with atomic_path(paths["html"]) as tmp:
        tmp.write_text("\n".join(page) + "\n", encoding="utf-8")
    return paths

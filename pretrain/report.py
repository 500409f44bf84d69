"""The run report of `pretrain run`: run_dir/report/{report.md, report.html, facts.json, *.png}.

    facts = write_run_report("runs/tiny", records)   # also the last job of `pretrain run`

Everything comes from files the jobs wrote (stats.json, manifests, tokenizer report,
metrics.jsonl, eval results) and the job records the caller passes ({job: run_dir/jobs/<job>.json
contents or None}, in run order), so the report can be rebuilt at any time. facts.json
holds the key numbers the CI smoke test asserts (counts add up, loss falls, eval rows exist).
The report is a list of blocks rendered twice, to Markdown and to HTML, so both say the same.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from eval.report import write_report
from pretrain.core.files import read_json, write_json
from pretrain.core.jsonl import read_jsonl

Block = tuple  # ("h2", text) | ("p", text) | ("table", headers, rows) | ("img", file, alt) | ("code", text)


def _read_json(path: Path) -> dict[str, Any] | None:
    return read_json(path) if path.exists() else None


def metrics_by_step(metrics_jsonl: Path) -> list[dict[str, Any]]:
    """The last row logged for each step (a resumed or rolled-back run logs some steps twice)."""
    rows = {rec["step"]: rec for rec in read_jsonl(metrics_jsonl, missing_ok=True)}
    return [rows[s] for s in sorted(rows)]


def _document_flow(run: Path) -> tuple[list[list[Any]], dict[str, Any]]:
    """One row per (stage, reason) from the data, MinHash and split stats; and the totals."""
    rows: list[list[Any]] = []
    data = _read_json(run / "data" / "stats.json") or {}
    for stage in data.get("stage_order", []):
        s = data["stages"].get(stage, {})
        rows.append([f"data/{stage}", s.get("in"), s.get("kept"), s.get("rejected"), ""])
        rows += [["", "", "", n, f"{stage}/{r}"] for r, n in sorted(s.get("reasons", {}).items())]
    mh = _read_json(run / "minhash" / "stats.json") or {}
    for stage, s in mh.get("stages", {}).items():
        rows.append([stage, s.get("in"), s.get("kept"), s.get("rejected"), ""])
        rows += [["", "", "", n, f"{stage}/{r}"] for r, n in sorted(s.get("reasons", {}).items())]
    split = _read_json(run / "split" / "stats.json") or {}
    if split:
        rows.append(
            ["split", split["num_in"], split["num_train"], 0, f"{split['num_heldout']} held out for eval"]
        )
    totals = {
        "docs_in": data.get("num_in"),
        "docs_after_data": data.get("num_kept"),
        "docs_rejected_data": data.get("num_rejected"),
        "docs_after_minhash": mh.get("num_kept"),
        "docs_rejected_minhash": mh.get("num_rejected"),
        "docs_train": split.get("num_train"),
        "docs_heldout": split.get("num_heldout"),
    }
    return rows, totals


def _pyplot():
    import matplotlib  # heavy, optional (eval extra): only the plots need it

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt  # after use("Agg"), so no GUI backend is loaded

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def _plot_training(metrics: list[dict[str, Any]], out: Path) -> Path | None:
    if not metrics:
        return None
    plt = _pyplot()
    tokens = [m["tokens"] for m in metrics]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot(tokens, [m["loss"] for m in metrics], lw=1)
    ax1.set_ylabel("train loss (nats)")
    ax2.plot(tokens, [m["lr"] for m in metrics], lw=1, color="tab:orange")
    ax2.set_ylabel("learning rate")
    ax2.set_xlabel("tokens")
    for prev, cur in zip(metrics, metrics[1:]):
        if cur["phase"] != prev["phase"]:  # phase boundary
            for ax in (ax1, ax2):
                ax.axvline(prev["tokens"], color="gray", ls="--", lw=0.8)
            ax1.annotate(cur["phase"], (prev["tokens"], ax1.get_ylim()[1]), fontsize=8, va="top")
    return _save(fig, out / "training.png")


def _plot_clusters(hist: dict[str, int], out: Path) -> Path | None:
    if not hist:
        return None
    plt = _pyplot()
    sizes = sorted(hist, key=int)
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar([str(s) for s in sizes], [hist[s] for s in sizes])
    ax.set_xlabel("near-duplicate cluster size (documents)")
    ax.set_ylabel("clusters")
    return _save(fig, out / "dedup_clusters.png")


def build_report(
    run_dir: str | Path, job_records: dict[str, dict[str, Any] | None] | None = None
) -> tuple[list[Block], dict[str, Any]]:
    run = Path(run_dir)
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [("h1", f"Run report: {run}")]
    facts: dict[str, Any] = {"run_dir": str(run)}

    rows, totals = _document_flow(run)
    facts["documents"] = totals
    blocks += [("h2", "Documents per stage"), ("table", ["stage", "in", "kept", "rejected", "reason"], rows)]

    mh = (_read_json(run / "minhash" / "stats.json") or {}).get("minhash", {})
    hist = mh.get("cluster_size_histogram", {})
    facts["dedup_clusters"] = hist
    blocks += [
        ("h2", "Near-duplicate clusters"),
        (
            "p",
            f"MinHash {mh.get('bands')} bands x {mh.get('rows')} rows, threshold {mh.get('threshold')}: "
            f"{mh.get('num_clusters', 0)} clusters over {mh.get('num_clustered_docs', 0)} documents.",
        ),
    ]
    if (png := _plot_clusters(hist, out)) is not None:
        blocks.append(("img", png.name, "cluster size histogram"))

    pii = (_read_json(run / "data" / "stats.json") or {}).get("pii", {})
    facts["pii"] = pii
    blocks += [("h2", "PII replaced, per type"), ("table", ["type", "count"], sorted(pii.items()))]

    tok = _read_json(run / "tokenizer" / "report.json") or {}
    enc = _read_json(run / "encode" / "stats.json") or {}
    facts["tokenizer"] = {
        "vocab_size": tok.get("vocab_size"),
        "heldout_bytes_per_token": tok.get("heldout_bytes_per_token"),
        "num_tokens": enc.get("num_tokens"),
    }
    blocks += [
        ("h2", "Tokenizer"),
        (
            "p",
            f"vocab {tok.get('vocab_size')}, held-out bytes per token {tok.get('heldout_bytes_per_token')}, "
            f"{enc.get('num_tokens')} training tokens encoded.",
        ),
        (
            "table",
            ["source", "held-out bytes/token", "encoded tokens", "encoded bytes/token"],
            [
                [
                    s,
                    v.get("bytes_per_token"),
                    enc.get("sources", {}).get(s, {}).get("num_tokens"),
                    enc.get("sources", {}).get(s, {}).get("bytes_per_token"),
                ]
                for s, v in sorted(tok.get("sources", {}).items())
            ],
        ),
    ]

    metrics = metrics_by_step(run / "train" / "metrics.jsonl")
    if metrics:
        first, last = metrics[0], metrics[-1]
        k = max(1, len(metrics) // 10)  # compare averages: single steps are noisy
        facts["train"] = {
            "steps": len(metrics),
            "first_loss": first["loss"],
            "final_loss": last["loss"],
            "first_losses_mean": sum(m["loss"] for m in metrics[:k]) / k,
            "last_losses_mean": sum(m["loss"] for m in metrics[-k:]) / k,
            "tokens": last["tokens"],
            "skipped_steps": sum(1 for m in metrics if m.get("skipped")),
            "phases": list(dict.fromkeys(m["phase"] for m in metrics)),
        }
        blocks += [
            ("h2", "Training"),
            (
                "p",
                f"{len(metrics)} steps, {last['tokens']:,} tokens; loss {first['loss']:.3f} -> {last['loss']:.3f}; "
                f"phases {' -> '.join(facts['train']['phases'])}.",
            ),
        ]
        if (png := _plot_training(metrics, out)) is not None:
            blocks.append(("img", png.name, "loss and LR against tokens, phase boundaries dashed"))

    results = run / "eval" / "results.jsonl"
    if results.exists():
        ev = write_report(results, out / "eval")
        eval_rows = read_jsonl(results)
        facts["eval"] = {
            "rows": len(eval_rows),
            "checkpoints": sorted({r["step"] for r in eval_rows}),
            "tasks": sorted({r["task"] for r in eval_rows}),
        }
        blocks += [("h2", "Eval"), ("p", f"{len(eval_rows)} result rows; full eval report: eval/report.md")]
        blocks += [("table", *_eval_table(eval_rows))]
        for png in ev.get("plots", []):
            blocks.append(("img", Path(png).relative_to(out).as_posix(), Path(png).stem))
    hf = run / "eval" / "hf"
    facts["export"] = {"dir": str(hf), "exists": (hf / "config.json").exists()}

    job_rows = [
        [name, rec.get("status"), round(rec.get("seconds", 0.0), 1)]
        for name, rec in (job_records or {}).items()
        if rec is not None
    ]
    data = _read_json(run / "data" / "stats.json") or {}
    throughput = {
        "data docs/s": data.get("docs_per_second"),
        "minhash docs/s": (_read_json(run / "minhash" / "stats.json") or {}).get("docs_per_second"),
        "encode tokens/s": enc.get("tokens_per_second"),
        "train tokens/s": round(sum(m["tokens_per_s"] for m in metrics[-20:]) / len(metrics[-20:]), 1)
        if metrics
        else None,
    }
    facts["throughput"] = throughput
    blocks += [
        ("h2", "Jobs and throughput"),
        ("table", ["job", "status", "seconds"], job_rows),
        ("table", ["figure", "value"], sorted(throughput.items())),
    ]
    config = run / "config.yaml"
    if config.exists():
        blocks += [("h2", "Config"), ("code", config.read_text())]
    return blocks, facts


def _eval_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Rows: (task, metric); columns: one per checkpoint step."""
    steps = sorted({r["step"] for r in rows})
    cells: dict[tuple[str, str], dict[int, Any]] = {}
    for r in rows:
        if isinstance(r.get("value"), (int, float)):
            cells.setdefault((r["task"], r["metric"]), {})[r["step"]] = r["value"]
    body = [[t, m, *[_fmt(v.get(s)) for s in steps]] for (t, m), v in sorted(cells.items())]
    return ["task", "metric", *[f"step {s}" for s in steps]], body


def _fmt(v: Any) -> Any:
    return round(v, 4) if isinstance(v, float) else ("" if v is None else v)


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "table":
            headers, rows = b[1], b[2]
            out.append("| " + " | ".join(map(str, headers)) + " |")
            out.append("|" + " --- |" * len(headers))
            out += ["| " + " | ".join(str(_fmt(c)) for c in r) + " |" for r in rows]
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1]})")
        elif kind == "code":
            out.append("```yaml\n" + b[1].rstrip() + "\n```")
        out.append("")
    return "\n".join(out)


def render_html(blocks: list[Block]) -> str:
    e = html.escape
    out = [
        "<!doctype html><meta charset='utf-8'><title>run report</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}pre{background:#f6f6f6;padding:8px}</style>",
    ]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{e(str(b[1]))}</{kind}>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in b[1]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(str(_fmt(c)))}</td>" for c in r) + "</tr>" for r in b[2]]
            out.append("</table>")
        elif kind == "img":
            out.append(f"<p><img src='{e(b[1])}' alt='{e(b[2])}'></p>")
        elif kind == "code":
            out.append(f"<pre>{e(b[1])}</pre>")
    return "\n".join(out) + "\n"


def write_run_report(
    run_dir: str | Path, job_records: dict[str, dict[str, Any] | None] | None = None
) -> dict[str, Any]:
    """Write report.md, report.html, facts.json (and the PNGs) under run_dir/report; return facts.
    `job_records`: {job: its record or None} in run order, for the jobs table (none: no table rows)."""
    blocks, facts = build_report(run_dir, job_records)
    out = Path(run_dir) / "report"
    (out / "report.md").write_text(render_markdown(blocks))
    (out / "report.html").write_text(render_html(blocks))
    write_json(out / "facts.json", facts)
    return facts

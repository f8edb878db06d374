"""`python -m krony.report <sweep or run dirs> [--out DIR]`: a markdown table and PNG plots.

Reads every run directory below the given paths (a directory with a TensorBoard event file):
its `summary.json` (hparams and final metrics, written at the end of training), its curves from
the event file, and `results.json` (the end-of-training evaluation) or else the newest
`eval-paper.json` from `python -m krony.eval`. A sweep started again leaves `skipped.txt` or
`resumed.txt` where a job ran elsewhere: the report follows them to that directory. Writes
`report.md`, `loss_vs_tokens.png` and `ppl_vs_params.png`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from krony.train.resume import POINTERS
from krony.train.resume import read_pointer as follow_pointer

PUBLISHED: list[dict[str, Any]] = [
    # paper protocol: WikiText-103, WikiText-2, LAMBADA perplexity
    {"model": "GPT-2 (124M)", "params": 124_439_808, "wikitext103": 29.16, "wikitext2": 24.67, "lambada": 45.28},
    {"model": "DistilGPT2", "params": 81_912_576, "wikitext103": 44.53, "wikitext2": 36.48, "lambada": 76.00},
    {"model": "KronyPT-81M (v1)", "params": 81_972_576, "wikitext103": 41.98, "wikitext2": 34.99, "lambada": 64.92},
    {"model": "KronyPT-81M (later)", "params": 81_972_576, "wikitext103": 42.74, "wikitext2": 35.75, "lambada": 61.02},
    {"model": "KronyPT-96M prune", "params": 96_128_304, "wikitext103": 38.22, "wikitext2": 32.19, "lambada": 54.52},
]
"""Published figures to plot beside a sweep; the authors picked checkpoints per benchmark on the
test sets, our runs pick them on validation only."""


@dataclass
class Run:
    """What the report knows about one run directory."""

    path: Path
    name: str
    hparams: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """tag -> [(tokens seen, value)] for train/loss and val/loss."""
    eval: dict[str, dict[str, Any]] = field(default_factory=dict)


def find_runs(paths: Sequence[str | Path]) -> list[Path]:
    """Run directories (holding a TensorBoard event file) at or below `paths`, and those the
    skip / resume pointers below them lead to, sorted."""
    found = set()
    for p in map(Path, paths):
        if not p.exists():
            raise ValueError(f"no such directory: {p}")
        for ev in p.rglob("events.out.tfevents.*"):
            found.add(ev.parent.resolve())
        for pointer in (q for name in POINTERS for q in p.rglob(name)):
            target = follow_pointer(pointer)
            if target is not None and target.is_dir() and any(target.glob("events.out.tfevents.*")):
                found.add(target.resolve())
    if not found:
        raise ValueError(f"no run directories (with TensorBoard event files) under {', '.join(map(str, paths))}")
    return sorted(found)


def load_run(path: Path) -> Run:
    """Summary, curves and evaluation results of one run directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").exists() else {}
    # sweeps: sweeps/<time>/<run name>; single runs: runs/<run name>/<time>
    name = summary.get("run_name") or (path.parent.name if path.name[:4].isdigit() else path.name)
    run = Run(path, name, summary.get("hparams", {}), summary.get("metrics", {}))
    ea = EventAccumulator(str(next(path.glob("events.out.tfevents.*"))), size_guidance={"scalars": 0})
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    step_tokens = {e.step: e.value for e in ea.Scalars("train/tokens")} if "train/tokens" in tags else {}
    for tag in ("train/loss", "val/loss"):
        if tag in tags:
            run.curves[tag] = [(step_tokens.get(e.step, float(e.step)), e.value) for e in ea.Scalars(tag)]
    for tag in tags:
        if tag.startswith(("model/", "hp/")) and tag not in run.metrics:
            run.metrics[tag] = ea.Scalars(tag)[-1].value
    results = path / "results.json" if (path / "results.json").exists() else path / "eval-paper.json"
    if results.exists():
        run.eval = json.loads(results.read_text()).get("results", {})
    return run


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def table(runs: list[Run]) -> str:
    """Markdown table: one row per run, then the published reference rows."""
    evals = sorted({d for r in runs for d in r.eval})
    head = ["run", "scheme", "init", "factors", "scalars", "params (Table 1)", "params (no output emb.)",
            "best val loss", "best val ppl", *[f"{d} ppl" for d in evals]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in runs:
        h, m = r.hparams, r.metrics
        cells = [r.name, h.get("scheme", "-"), h.get("init", "-"), h.get("factors", "-"), h.get("scalars", "-"),
                 _fmt(int(m["model/params"])) if "model/params" in m else "-",
                 _fmt(int(m["model/params_no_output_embedding"])) if "model/params_no_output_embedding" in m else "-",
                 _fmt(m.get("hp/best_val_loss"), 4), _fmt(m.get("hp/best_val_ppl")),
                 *[_fmt(r.eval.get(d, {}).get("ppl")) for d in evals]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines.append("")
    lines.append("Published (paper protocol, checkpoints chosen per benchmark on the test sets by the authors):")
    lines.append("")
    lines.append("| model | params | wikitext103 | wikitext2 | lambada |")
    lines.append("| --- | --- | --- | --- | --- |")
    for p in PUBLISHED:
        lines.append(f"| {p['model']} | {p['params']:,} | {p['wikitext103']} | {p['wikitext2']} | {p['lambada']} |")
    return "\n".join(lines)


MARKERS = "os^vD<>pPX*h"


def _style(i: int) -> dict[str, Any]:
    """A distinct colour and marker per run, so runs are told apart by the legend, not by labels."""
    import matplotlib.pyplot as plt

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {"color": colors[i % len(colors)], "marker": MARKERS[(i // len(colors)) % len(MARKERS)]}


def _legend_outside(fig, ax, note: str = "") -> None:
    """Legend to the right of the axes (it never covers a point or a curve), and a note below."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False)
    if note:
        fig.text(0.01, 0.01, note, fontsize=7, va="bottom", ha="left", wrap=True)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))


def plot_loss(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, r in enumerate(runs):
        style = _style(i)
        if "train/loss" in r.curves:
            xs, ys = zip(*r.curves["train/loss"])
            ax.plot(xs, ys, color=style["color"], alpha=0.8, label=f"{r.name} train")
        if "val/loss" in r.curves:
            vx, vy = zip(*r.curves["val/loss"])
            ax.plot(vx, vy, "--", marker=style["marker"], color=style["color"], label=f"{r.name} val")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("loss against tokens")
    _legend_outside(fig, ax)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_ppl(runs: list[Run], path: Path, dataset: str | None = None) -> str:
    """Perplexity against parameters: evaluation ppl on `dataset` when the runs have it (with the
    published points), else best validation ppl. One legend entry per run (no labels on the
    points, so none overlap); runs with nothing to plot are named under the plot. Returns what
    was plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [d for d in ("wikitext103", "wikitext2", "lambada") if any(d in r.eval for r in runs)]
    dataset = dataset or (evals[0] if evals else None)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    missing = []
    for i, r in enumerate(runs):
        n = r.metrics.get("model/params")
        y = r.eval.get(dataset, {}).get("ppl") if dataset else r.metrics.get("hp/best_val_ppl")
        if n and y:
            ax.scatter(n / 1e6, y, label=r.name, **_style(i))
        else:
            missing.append(r.name)
    what = f"{dataset} perplexity (paper protocol)" if dataset else "best validation perplexity"
    if dataset:
        for j, p in enumerate(PUBLISHED):
            ax.scatter(p["params"] / 1e6, p[dataset], marker="x", color=f"{0.15 * j:.2f}", label=f"{p['model']} (published)")
    ax.set_xlabel("parameters (millions, Table-1 convention)")
    ax.set_ylabel(what)
    ax.set_yscale("log")
    ax.set_title("perplexity against parameters")
    _legend_outside(fig, ax, f"not shown, no {'evaluation on ' + dataset if dataset else 'validation'}: {', '.join(missing)}" if missing else "")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return what


def write_report(paths: Sequence[str | Path], out: str | Path | None = None) -> Path:
    """Collect the runs under `paths` and write report.md and the plots into `out`."""
    runs = [load_run(p) for p in find_runs(paths)]
    out = Path(out) if out else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot_loss(runs, out / "loss_vs_tokens.png")
    what = plot_ppl(runs, out / "ppl_vs_params.png")
    no_eval = [r.name for r in runs if not r.eval]
    note = f"Runs without an evaluation (no results.json or eval-paper.json): {', '.join(no_eval)}\n\n" if no_eval else ""
    text = (f"# Report: {len(runs)} runs\n\n{table(runs)}\n\n{note}"
            f"![loss against tokens](loss_vs_tokens.png)\n\n![{what} against parameters](ppl_vs_params.png)\n")
    (out / "report.md").write_text(text)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m krony.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="sweep or run directories")
    p.add_argument("--out", help="output directory (default: <first path>/report)")
    args = p.parse_args(argv)
    try:
        out = write_report(args.paths, args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m krony.report <sweep or run dirs> [--out DIR]`: a markdown table and PNG plots.

Reads every run directory below the given paths (a directory with a TensorBoard event file):
its `summary.json` (hparams and final metrics, written at the end of training), its curves from
the event file, and `results.json` (the end-of-training evaluation) or else the newest
`eval-paper.json` from `python -m krony.eval`. A sweep started again leaves `skipped.txt` or
`resumed.txt` where a job ran elsewhere: the report follows them to that directory. Writes
`report.md` (every run with its parameters in each counting convention and its forward FLOPs per
token; when the runs hold several structures, a table grouping them by budget against the
Kronecker run), `loss_vs_tokens.png` and `ppl_vs_params.png` (one line per structure, init and
factors through its budgets; `--params non_embedding` counts parameters without the embeddings).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from krony.config import CONVENTIONS, STRUCTURE_NAMES
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


def params(run: Run, convention: str = "table1") -> int | None:
    """The run's parameter count under `convention`, as it logged it (None: not logged)."""
    v = run.metrics.get("model/params" if convention == "table1" else f"model/params_{convention}")
    return int(v) if v is not None else None


def structure(run: Run) -> str:
    """kronecker | lowrank | monarch for compressed runs (runs from before structures: kronecker), else the kind."""
    kind = run.hparams.get("kind", "krony")
    return run.hparams.get("structure", "kronecker") if kind == "krony" else kind


def series(run: Run) -> str:
    """What a run is apart from its budget: structure (and FLOP matching), init, factors, scalars (one line in the plot)."""
    if structure(run) in ("dense", "distil"):
        return run.name
    h = run.hparams
    flops = " flops-matched" if h.get("structure_match") == "flops" else ""
    return f"{structure(run)}{flops} {h.get('init', '-')} r{h.get('factors', 1)}{' scalars' if h.get('scalars') else ''}"


def table(runs: list[Run]) -> str:
    """Markdown table: one row per run, then the published reference rows."""
    evals = sorted({d for r in runs for d in r.eval})
    head = ["run", "scheme", "structure", "init", "factors", "scalars", "params (Table 1)", "params (no output emb.)",
            "params (non-embedding)", "FLOPs/token", "best val loss", "best val ppl", *[f"{d} ppl" for d in evals]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in runs:
        h, m = r.hparams, r.metrics
        cells = [r.name, h.get("scheme", "-"), structure(r), h.get("init", "-"), h.get("factors", "-"), h.get("scalars", "-"),
                 *[_fmt(params(r, c)) for c in CONVENTIONS], _fmt_flops(m.get("model/flops_per_token")),
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


def _fmt_flops(v: float | None) -> str:
    return "-" if v is None else f"{v / 1e6:,.2f}M"


def budget_table(runs: list[Run]) -> str:
    """Markdown table of the compressed runs grouped by budget (their scheme), one row per
    structure, with each row's parameters, FLOPs and losses against the Kronecker run of the same
    budget, init and factors; empty when the runs have a single structure."""
    compressed = [r for r in runs if structure(r) not in ("dense", "distil")]
    if len({structure(r) for r in compressed}) < 2:
        return ""
    evals = sorted({d for r in compressed for d in r.eval})
    head = ["budget", "structure", "run", "params (non-embedding)", "vs Kronecker", "FLOPs/token", "vs Kronecker",
            "best val loss", "vs Kronecker", *[f"{d} ppl" for d in evals]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    budgets: dict[str, list[Run]] = {}
    for r in compressed:
        budgets.setdefault(str(r.hparams.get("scheme", "-")), []).append(r)
    rank = {name: i for i, name in enumerate(STRUCTURE_NAMES)}
    for scheme, group in sorted(budgets.items(), key=lambda kv: min(params(r) or 0 for r in kv[1])):
        group.sort(key=lambda r: (rank.get(structure(r), len(rank)), r.name))
        for r in group:
            ref = _kronecker_reference(r, group)
            n, f, loss = params(r, "non_embedding"), r.metrics.get("model/flops_per_token"), r.metrics.get("hp/best_val_loss")
            cells = [scheme, structure(r), r.name,
                     _fmt(n), _diff(n, params(ref, "non_embedding") if ref else None),
                     _fmt_flops(f), _diff(f, ref.metrics.get("model/flops_per_token") if ref else None),
                     _fmt(loss, 4), _diff(loss, ref.metrics.get("hp/best_val_loss") if ref else None, relative=False),
                     *[_fmt(r.eval.get(d, {}).get("ppl")) for d in evals]]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def _kronecker_reference(run: Run, group: list[Run]) -> Run | None:
    """The Kronecker run of `group` (one budget) to compare `run` with: same init, factors and
    scalars when there is one, else any (low-rank and Monarch never take prune); None for the
    reference itself."""
    kron = [k for k in group if structure(k) == "kronecker"]
    same = [k for k in kron if all(k.hparams.get(f) == run.hparams.get(f) for f in ("init", "factors", "scalars"))]
    ref = (same or kron or [None])[0]
    return None if ref is run else ref


def _diff(a: float | None, b: float | None, relative: bool = True) -> str:
    if a is None or b is None:
        return "-"
    return f"{(a - b) / b:+.1%}" if relative else f"{a - b:+.3f}"


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


def plot_ppl(runs: list[Run], path: Path, dataset: str | None = None, convention: str = "table1") -> str:
    """Perplexity against parameters (counted by `convention`): evaluation ppl on `dataset` when
    the runs have it (with the published points, Table-1 convention only), else best validation
    ppl. One line per series (structure, init, factors, scalars) through its budgets, one legend
    entry each, no labels on the points; runs with nothing to plot are named under the plot.
    Returns what was plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = [d for d in ("wikitext103", "wikitext2", "lambada") if any(d in r.eval for r in runs)]
    dataset = dataset or (evals[0] if evals else None)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    missing, lines = [], {}
    for r in runs:
        n = params(r, convention)
        y = r.eval.get(dataset, {}).get("ppl") if dataset else r.metrics.get("hp/best_val_ppl")
        if n and y:
            lines.setdefault(series(r), []).append((n / 1e6, y))
        else:
            missing.append(r.name)
    for i, (label, points) in enumerate(lines.items()):
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, linestyle="-" if len(points) > 1 else "none", label=label, **_style(i))
    what = f"{dataset} perplexity (paper protocol)" if dataset else "best validation perplexity"
    if dataset and convention == "table1":
        for j, p in enumerate(PUBLISHED):
            ax.scatter(p["params"] / 1e6, p[dataset], marker="x", color=f"{0.15 * j:.2f}", label=f"{p['model']} (published)")
    ax.set_xlabel(f"parameters (millions, {CONVENTION_NAMES[convention]})")
    ax.set_ylabel(what)
    ax.set_yscale("log")
    ax.set_title("perplexity against parameters")
    _legend_outside(fig, ax, f"not shown, no {'evaluation on ' + dataset if dataset else 'validation'}: {', '.join(missing)}" if missing else "")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return what


CONVENTION_NAMES = {"table1": "Table-1 convention", "no_output_embedding": "without the output embedding",
                    "non_embedding": "non-embedding"}


def write_report(paths: Sequence[str | Path], out: str | Path | None = None, convention: str = "table1") -> Path:
    """Collect the runs under `paths` and write report.md and the plots into `out` (perplexity
    against parameters counted by `convention`)."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; valid choices: {', '.join(CONVENTIONS)}")
    runs = [load_run(p) for p in find_runs(paths)]
    out = Path(out) if out else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot_loss(runs, out / "loss_vs_tokens.png")
    what = plot_ppl(runs, out / "ppl_vs_params.png", convention=convention)
    no_eval = [r.name for r in runs if not r.eval]
    note = f"Runs without an evaluation (no results.json or eval-paper.json): {', '.join(no_eval)}\n\n" if no_eval else ""
    by_budget = budget_table(runs)
    by_budget = f"## By budget\n\nEach structure against the Kronecker run of its budget (same init).\n\n{by_budget}\n\n" if by_budget else ""
    text = (f"# Report: {len(runs)} runs\n\n{table(runs)}\n\n{by_budget}{note}"
            f"![loss against tokens](loss_vs_tokens.png)\n\n![{what} against parameters](ppl_vs_params.png)\n")
    (out / "report.md").write_text(text)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m krony.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="sweep or run directories")
    p.add_argument("--out", help="output directory (default: <first path>/report)")
    p.add_argument("--params", default="table1", choices=CONVENTIONS,
                   help="how the perplexity plot counts parameters (non_embedding for small models)")
    args = p.parse_args(argv)
    try:
        out = write_report(args.paths, args.out, args.params)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print((out / "report.md").read_text())
    print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

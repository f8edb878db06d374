"""The report's structure comparison: runs grouped by budget against the Kronecker run, and the
perplexity plot with one line per structure (on runs made up here; tests/test_run.py reports a
real sweep)."""

from pathlib import Path


from krony.report import Run, budget_table, plot_ppl, series, table


def run(name: str, scheme: str, structure: str, non_emb: int, flops: float, loss: float, init: str = "vanloan") -> Run:
    hparams = {"kind": "krony", "scheme": scheme, "structure": structure, "init": init, "factors": 1, "scalars": False}
    metrics = {"model/params": non_emb + 1_000_000.0, "model/params_no_output_embedding": non_emb + 100_000.0,
               "model/params_non_embedding": float(non_emb), "model/flops_per_token": flops, "hp/best_val_loss": loss,
               "hp/best_val_ppl": 2.718281828 ** loss}
    return Run(Path(name), name, hparams, metrics)


RUNS = [
    run("64x32-vanloan-r1", "64x32", "kronecker", 300_000, 2.0e6, 7.30),
    run("64x32-lowrank-vanloan-r1", "64x32", "lowrank", 297_000, 1.5e6, 7.20),
    run("128x64-vanloan-r1", "128x64", "kronecker", 330_000, 2.2e6, 7.10),
    run("128x64-monarch-vanloan-r1", "128x64", "monarch", 333_300, 2.4e6, 7.25),
    run("128x64-prune-r1", "128x64", "kronecker", 330_000, 2.2e6, 7.00, init="prune"),
    Run(Path("teacher"), "teacher", {"kind": "dense"}, {"model/params": 2e6, "hp/best_val_loss": 7.0, "hp/best_val_ppl": 1096.6}),
]


def cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def test_runs_grouped_by_budget_against_the_kronecker_run_of_the_same_init():
    rows = [cells(line) for line in budget_table(RUNS).splitlines()[2:]]
    assert [row[2] for row in rows] == [  # smaller budget first; kronecker, lowrank, monarch within one
        "64x32-vanloan-r1", "64x32-lowrank-vanloan-r1", "128x64-prune-r1", "128x64-vanloan-r1", "128x64-monarch-vanloan-r1"]
    assert rows[1][3:9] == ["297,000", "-1.0%", "1.50M", "-25.0%", "7.2000", "-0.100"]
    # against 128x64-vanloan-r1, not the prune run
    assert rows[4][3:9] == ["333,300", "+1.0%", "2.40M", "+9.1%", "7.2500", "+0.150"]
    assert rows[0][4] == "-"  # the reference itself
    assert budget_table([r for r in RUNS if r.hparams.get("structure") == "kronecker"]) == ""  # one structure: no table


def test_table_shows_every_convention_and_flops():
    head, _, first = table(RUNS).splitlines()[:3]
    assert "params (non-embedding) | FLOPs/token" in head
    assert first.startswith("| 64x32-vanloan-r1 | 64x32 | kronecker | vanloan | 1 | False | 1,300,000 | 400,000 | 300,000 | 2.00M |")


def test_plot_draws_one_line_per_structure(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", lambda ax, *a, **k: drawn.append((a, k)) or original(ax, *a, **k))
    what = plot_ppl(RUNS, tmp_path / "p.png", convention="non_embedding")
    assert what == "best validation perplexity" and (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    lines = {k["label"]: (a[0], k["linestyle"]) for a, k in drawn}
    assert set(lines) == {series(r) for r in RUNS if r.hparams.get("kind") == "krony"}
    assert lines["kronecker vanloan r1"] == ((0.3, 0.33), "-")  # two budgets, joined, in millions of non-embedding parameters
    assert lines["lowrank vanloan r1"][1] == "none"  # one budget: a point
    assert "teacher" not in lines  # no non-embedding count logged: named under the plot instead
    flops = run("64x32-lowrank-flops-vanloan-r1", "64x32", "lowrank", 400_000, 2.0e6, 7.1)
    flops.hparams["structure_match"] = "flops"
    assert series(flops) == "lowrank flops-matched vanloan r1" != series(RUNS[1])

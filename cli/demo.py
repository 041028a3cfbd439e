"""`hmt demo`: the whole pipeline offline on the built-in phantom (or on your class-folder data)."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from heatmap_templates.demo import DEFAULT_DEMO_DIR, DemoSettings, run_demo
from hmt_cli.main import app
from hmt_cli.output import echo_skipped
from hmt_cli.progress import progress_bar


def _show_auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


@app.command("demo")
def demo(
    data: Path | None = typer.Option(None, "--data", help="Run on your own class-folder data instead of the phantom."),
    out: Path = typer.Option(DEFAULT_DEMO_DIR, "--out", "-o", help="Folder for everything the demo writes."),
    n_per_class: int = typer.Option(DemoSettings.n_per_class, "--n-per-class", min=10, help="Phantoms per class."),
    size: int = typer.Option(DemoSettings.size, "--size", min=64, help="Phantom size in px (the model uses at most 128)."),
    epochs: int = typer.Option(DemoSettings.epochs, "--epochs", min=1, help="Maximum training epochs (early stopping)."),
    seed: int = typer.Option(DemoSettings.seed, "--seed", help="Seed for the phantom, the split and training."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Synthesise phantoms, train the small CNN, extract heatmaps, build every class's template,
    find the strategies within each class, compare held-out images, draw the figures, write the report and score the templates against the ground truth.

    Example: hmt demo            (or: hmt demo --data my_xrays/ --out templates_out/my_demo)
    """
    settings = DemoSettings(n_per_class=n_per_class, size=size, epochs=epochs, seed=seed)
    show_steps = not as_json
    summary = run_demo(out, data=data, settings=settings,
                       on_step=(lambda message: typer.echo(f"[hmt demo] {message}", err=True)) if show_steps else None,
                       progress=progress_bar(as_json))
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
        return
    typer.echo(f"demo finished in {sum(summary.seconds.values()):.0f} s; everything is in {summary.out_dir}")
    typer.echo(f"  data       {summary.data}")
    accuracy = "n/a" if summary.test_accuracy is None else f"{summary.test_accuracy:.3f}"
    typer.echo(f"  model      {summary.model} (test accuracy {accuracy})")
    typer.echo(f"  heatmaps   {summary.heatmaps}")
    members = ", ".join(f"{name} {count}" for name, count in summary.template_members.items())
    typer.echo(f"  templates  {summary.templates} (members: {members})")
    typer.echo("  strategies " + (", ".join(f"{name} {k}" for name, k in summary.strategies.items()) or "none (too few members)"))
    typer.echo(f"  figures    {summary.out_dir / 'figures'} ({len(summary.figures)} files)")
    typer.echo(f"  report     {summary.report} (open it in a browser)")
    if summary.ground_truth_auc is not None:
        typer.echo("ground-truth check (template as a pixel classifier of the phantom's lesion map, ROC AUC):")
        for name, scores in summary.ground_truth_auc.items():
            if scores.get("auc_frame") is None:
                typer.echo(f"  {name:<9} n/a ({'no template' if not scores.get('members') else 'no lesions to find'})")
            else:
                typer.echo(f"  {name:<9} whole frame {_show_auc(scores['auc_frame'])}, inside lungs {_show_auc(scores.get('auc_lungs'))}")
    typer.echo("held-out images compared with the templates:")
    for item in summary.comparisons:
        flag = "  ATYPICAL" if item.get("atypical") else ""
        best = item.get("best_match")
        typer.echo(f"  {Path(item['path']).name:<18} true {item.get('true')!s:<9} predicted {item['predicted']:<9} "
                   f"best template {best!s:<9} r={item.get('predicted_correlation') or 0:.2f}{flag}")
    echo_skipped(summary.skipped)

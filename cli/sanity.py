"""`hmt sanity`: does each template depend on the model? Model-parameter randomisation."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from heatmap_templates.analysis.sanity import DEFAULT_SAMPLE, FLAG_SPEARMAN, VARIANTS, run_sanity
from heatmap_templates.templates.build import DEFAULT_OUT
from heatmap_templates.templates.templates_file import save_check
from hmt_cli.choices import registry_option
from hmt_cli.main import app
from hmt_cli.output import command_line
from hmt_cli.progress import progress_bar


@app.command("sanity")
def sanity_command(
    templates: Path = typer.Argument(DEFAULT_OUT, help="Templates file from `hmt build-templates`."),
    heatmaps: Path | None = typer.Option(None, "--heatmaps", help="Heatmap store the templates were built from (default: the one the file records)."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Model file (default: the one the templates file records)."),
    class_names: list[str] = typer.Option([], "--class", "-c", help="Class to check (repeatable; default: every class)."),
    sample: int = typer.Option(DEFAULT_SAMPLE, "--sample", min=2, help="Members per class whose maps are recomputed at each step."),
    variant: str = registry_option("cascading", "--variant", VARIANTS, "Randomisation"),
    shuffled_model: Path | None = typer.Option(None, "--shuffled-model", help="Also compare the templates of a model trained on shuffled labels (hmt train --shuffle-labels): data randomisation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the new weights."),
    unsafe_load: bool = typer.Option(False, "--unsafe-load", help="Allow code in Lambda layers when loading the model (trusted files only)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
) -> None:
    """Re-initialise the model's layers from the head down (on a copy; the model file is untouched) and watch each
    template: Spearman rank correlation and SSIM with the trained model's template of the same members, per step.
    A template that stays similar after every layer is randomised reflects the images, not the model (flagged).
    Results are stored in the templates file (hmt figures draws them).

    Example: hmt sanity templates_out/templates.h5 --sample 64 --json
    """
    result = run_sanity(templates, heatmaps, model=model, classes=class_names or None, sample=sample, variant=variant,
                        seed=seed, shuffled_model=shuffled_model, unsafe_load=unsafe_load, progress=progress_bar(as_json))
    save_check(templates, "sanity", result.to_dict(), command=command_line())
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    names = list(result.similarity)
    typer.echo(f"{variant} randomisation, {', '.join(f'{n} {result.sample[n]}' for n in names)} members sampled; "
               "Spearman (SSIM) with the trained model's template:")
    width = max(len(step) for step in result.steps)
    typer.echo("  " + "step".ljust(width) + "  " + "  ".join(name[:16].rjust(16) for name in names))
    for number, step in enumerate(result.steps):
        cells = []
        for name in names:
            entry = result.similarity[name][number]
            if entry["spearman"] is None:
                cells.append(("all zero" if entry["all_zero"] else "constant").rjust(16))
            else:
                cells.append(f"{entry['spearman']:6.3f} ({entry['ssim']:5.3f})".rjust(16))
        typer.echo("  " + step.ljust(width) + "  " + "  ".join(cells))
    if result.data_randomisation is not None:
        typer.echo("  shuffled-label model: " + ", ".join(
            f"{name} {_shown(entry['spearman'])}" for name, entry in result.data_randomisation.items()))
    if result.flagged:
        typer.echo(f"FLAGGED: {', '.join(result.flagged)}: |Spearman| >= {FLAG_SPEARMAN} with every layer randomised; "
                   "such a template reflects the images, not what the model learnt")
    else:
        typer.echo(f"no template stays similar (|Spearman| >= {FLAG_SPEARMAN}) once the model is randomised: they depend on the model")
    typer.echo(f"stored in {templates}; draw with: hmt figures {templates}")


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"

"""`hmt strategies`: the strategies within each class (clusters of its members' heatmaps), added to the templates file."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from heatmap_templates.analysis.similarity import SIMILARITIES
from heatmap_templates.analysis.strategies import DEFAULT_MAX_K, MIN_STRATEGY_MEMBERS, StrategySettings
from heatmap_templates.analysis.strategy_search import add_strategies, skipped_classes
from heatmap_templates.errors import HmtError
from heatmap_templates.numeric.metrics import lung_field_energy
from heatmap_templates.templates.build import DEFAULT_OUT
from heatmap_templates.templates.templates_file import read_templates
from hmt_cli.choices import registry_option
from hmt_cli.main import app
from hmt_cli.output import command_line
from hmt_cli.progress import progress_bar


def parse_k(value: str) -> int | None:
    """``auto`` (the eigengap chooses) or a number of strategies."""
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1:
        raise HmtError(f"--k must be auto or a number of strategies >= 1, got {value!r}")
    return int(value)


@app.command("strategies")
def strategies_command(
    templates: Path = typer.Argument(DEFAULT_OUT, help="Templates file from `hmt build-templates`."),
    heatmaps: Path | None = typer.Option(None, "--heatmaps", help="Heatmap store the templates were built from (default: the one the file records)."),
    class_names: list[str] = typer.Option([], "--class", "-c", help="Class to analyse (repeatable; default: every class)."),
    k: str = typer.Option("auto", "--k", help="auto (the eigengap of the affinity graph's spectrum chooses) or a number of strategies."),
    max_k: int = typer.Option(DEFAULT_MAX_K, "--max-k", min=1, help="Most strategies the eigengap may choose."),
    similarity: str = registry_option(StrategySettings.similarity, "--similarity", SIMILARITIES, "Similarity between maps (distance = 1 - similarity)"),
    seed: int = typer.Option(StrategySettings.seed, "--seed", help="Seed of k-means and of the stability resamples."),
    as_json: bool = typer.Option(False, "--json", help="Print the strategies as JSON on stdout."),
) -> None:
    """Cluster each class's member heatmaps (registered and normalised, as in its template) into strategies: spectral
    clustering of a nearest-neighbour graph (SpRAy), the number chosen by the eigengap. Adds the strategies to the
    templates file (atomically) for `hmt figures`, `hmt compare` and `hmt report`.

    Example: hmt strategies templates_out/templates.h5 --class covid --json
    """
    settings = StrategySettings(k=parse_k(k), max_k=max_k, similarity=similarity, seed=seed)
    results = add_strategies(templates, heatmaps, class_names or None, settings, command=command_line(),
                             progress=progress_bar(as_json))
    lungs = read_templates(templates).lung_mask
    skipped = {} if class_names else skipped_classes(templates)
    if as_json:
        typer.echo(json.dumps({"templates": str(templates), "classes": {
            name: {**result.to_dict(), "clusters": [
                {**cluster, "lung_field_energy": _energy(strategy.mean, lungs)}
                for cluster, strategy in zip(result.to_dict()["clusters"], result.strategies, strict=True)]}
            for name, result in results.items()},
            "skipped": {name: f"{count} members; strategies need at least {MIN_STRATEGY_MEMBERS}" for name, count in skipped.items()}},
            indent=2))
        return
    for name, result in results.items():
        stability = result.stability.get("mean_ari")
        spread = result.stability.get("ari_ci")
        shown = "n/a" if stability is None else (f"{stability:.2f} +- {result.stability['std_ari']:.2f}"
                                                 + (f" [{spread[0]:.2f}, {spread[1]:.2f}]" if spread else ""))
        typer.echo(f"{name}: {result.k} strateg{'y' if result.k == 1 else 'ies'} ({result.chosen_by}; "
                   f"stability, adjusted Rand index over {result.stability['resamples']} resamples: {shown}"
                   f"{' (mean +- sd [2.5th, 97.5th percentiles])' if spread else ''})")
        for number, strategy in enumerate(result.strategies, start=1):
            consistency = "n/a" if strategy.consistency is None else f"{strategy.consistency:.3f}"
            energy = _energy(strategy.mean, lungs)
            typer.echo(f"  strategy {number}: {strategy.size} members, consistency {consistency}, "
                       f"lung-field energy {'n/a' if energy is None else f'{energy:.3f}'}")
    for name, count in skipped.items():
        typer.echo(f"note: {name}: {count} members, too few for strategies (at least {MIN_STRATEGY_MEMBERS}); skipped")
    typer.echo(f"added to {templates}; draw them with: hmt figures {templates}")


def _energy(mean, lungs) -> float | None:
    """Share of a prototype's mass inside the reference lungs (None without a lung mask)."""
    return None if lungs is None else round(float(lung_field_energy(mean, lungs)), 4)

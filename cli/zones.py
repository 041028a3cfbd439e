"""`hmt zones`: where, in the radiologist's words, each template's (and strategy's) evidence lies."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from heatmap_templates.analysis.zone_report import run_zones
from heatmap_templates.analysis.zones import LUNG_ZONES, ZONE_NAMES
from heatmap_templates.templates.build import DEFAULT_OUT
from heatmap_templates.templates.templates_file import read_templates, save_zones
from hmt_cli.main import app
from hmt_cli.output import command_line, interval_text
from hmt_cli.progress import progress_bar


@app.command("zones")
def zones_command(
    templates: Path = typer.Argument(DEFAULT_OUT, help="Templates file from `hmt build-templates`."),
    heatmaps: Path | None = typer.Option(None, "--heatmaps", help="Heatmap store the templates were built from: intervals over patients, and the strategies' zones (without it: intervals from the templates' bootstrap replicates)."),
    truth: Path | None = typer.Option(None, "--truth", help="A phantom set (`hmt synth` output) whose canonical frame the templates are in: zones from its exact anatomy instead of the reference's segmentation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    as_json: bool = typer.Option(False, "--json", help="Print the zone table as JSON on stdout."),
) -> None:
    """Partition the template frame into anatomical zones (each lung's upper, middle and lower thirds, central and
    peripheral; mediastinum, upper body, chest wall, below the diaphragm, outside the body, the image border) and report,
    per class and strategy, each zone's share of the map's energy, its area and the enrichment (share / area; 1 = what a
    uniform map puts there), with 95 % intervals. Stored in the templates file (hmt figures and hmt report show it).

    Example: hmt zones templates_out/templates.h5 --heatmaps templates_out/heatmaps.h5 --json
    """
    anatomy = {}
    if truth is not None:
        from heatmap_templates.synth.ground_truth import canonical_anatomy

        frame = read_templates(templates).reference_image
        if frame is not None:
            anatomy = dict(zip(("lungs", "body"), canonical_anatomy(truth, frame.shape), strict=True))
    record, atlas = run_zones(templates, heatmaps, seed=seed, progress=progress_bar(as_json), **anatomy)
    save_zones(templates, record, atlas.labels, ZONE_NAMES, command=command_line())
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    for line in zone_lines(record):
        typer.echo(line)
    typer.echo(f"stored in {templates}; draw with: hmt figures {templates}")


def _enrichment(row: dict) -> str:
    return interval_text(row["enrichment"], row["enrichment_ci"], 2)


def zone_lines(record: dict) -> list[str]:
    """The zone table: one column per class (and strategy), enrichment with its interval, one row per zone."""
    columns = {name: entry for name, entry in record["classes"].items()}
    for name, strategies in record.get("strategies", {}).items():
        columns |= {f"{name} s{number}": entry for number, entry in strategies.items()}
    areas = record["atlas"]["areas"]
    lines = [f"zones ({record['atlas']['source']} atlas): enrichment = share of the map's energy / share of the frame "
             "(1: as a uniform map), 95 % interval"]
    header = "  zone                       area  " + "  ".join(f"{name[:20]:>20}" for name in columns)
    lines.append(header)
    for zone in ZONE_NAMES:
        cells = "  ".join(f"{_enrichment(entry['zones'][zone]):>20}" for entry in columns.values())
        lines.append(f"  {zone:<24} {areas[zone]:6.3f}  {cells}")
    for name, entry in columns.items():
        lung = {zone: entry["zones"][zone] for zone in LUNG_ZONES if entry["zones"][zone]["enrichment"] is not None}
        top = max(lung, key=lambda zone: lung[zone]["enrichment"]) if lung else None
        energy = sum(entry["zones"][zone]["share"] for zone in LUNG_ZONES)
        lines.append(f"  {name}: {energy:.2f} of the energy in the lungs; most enriched lung zone {top} ({entry['members']} members;"
                     f" intervals: {entry.get('interval', 'unknown')})")
    return lines

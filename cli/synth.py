"""`hmt synth`: write the synthetic chest phantom data set with its ground truth."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from heatmap_templates.errors import HmtError
from heatmap_templates.synth import (
    CLASSES,
    DEFAULT_N_PER_CLASS,
    DEFAULT_POSE_SPREAD,
    DEFAULT_PREVALENCE,
    DEFAULT_PREVIEW_EXAMPLES,
    DEFAULT_SHORTCUT_STYLE,
    DEFAULT_SIZE,
    LESIONS,
    SHORTCUTS,
    synthesize_dataset,
    synthesize_multi_label,
    write_preview_grid,
)
from hmt_cli.choices import registry_option
from hmt_cli.main import app
from hmt_cli.progress import progress_bar


@app.command("synth")
def synth(
    out_dir: Path = typer.Argument(..., help="Output folder: new, empty, or a previous `hmt synth` output holding nothing else (replaced whole)."),
    n_per_class: int = typer.Option(DEFAULT_N_PER_CLASS, "--n-per-class", "-n", help="Images per class."),
    size: int = typer.Option(DEFAULT_SIZE, "--size", help="Image side in pixels (square images)."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes bit-identical files."),
    classes: str = typer.Option(",".join(CLASSES), "--classes", help=LESIONS.help_text("Comma-separated subset of the phantom classes")),
    preview: Path | None = typer.Option(None, "--preview", help="Also write a grid PNG of examples and probability maps."),
    preview_examples: int = typer.Option(DEFAULT_PREVIEW_EXAMPLES, "--preview-examples", help="Examples per class in the preview grid."),
    pose_spread: float = typer.Option(DEFAULT_POSE_SPREAD, "--pose-spread", help="Multiplies the random pose's shift, rotation and log-scale ranges (0 to 4; 1 = default, larger gives registration more to correct)."),
    workers: int | None = typer.Option(None, "--workers", help="Worker processes (default: CPU count, at most 8); output is identical for any number."),
    multi_label: bool = typer.Option(False, "--multi-label", help="Images that carry several lesion types at once (each with chance --prevalence) in images/, with one 0/1 column per lesion type in manifest.csv (read it with --labels); --n-per-class counts images per lesion type."),
    prevalence: float = typer.Option(DEFAULT_PREVALENCE, "--prevalence", help="With --multi-label: the chance of each lesion type."),
    shortcut: list[str] = typer.Option([], "--shortcut", help="CLASS:FRACTION (repeatable): burn a shortcut into that fraction of the class's images (which ones: ground_truth/shortcuts.csv)."),
    shortcut_style: str = registry_option(DEFAULT_SHORTCUT_STYLE, "--shortcut-style", SHORTCUTS, "Kind of planted shortcut"),
    shortcut_lesions: float = typer.Option(1.0, "--shortcut-lesions", help="Scale (0 to 1) of the lesions of the images that carry a shortcut: below 1 they are faint (0: none), so the shortcut is the easiest sign of their class."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write a class-per-folder synthetic chest X-ray phantom set with lesion masks, poses and lesion-probability maps.

    Classes: covid (peripheral lower-zone ground glass), bacteria (one lobar consolidation), virus (perihilar streaks), normal (none). Ground truth goes to OUT/ground_truth/ (see its README.md).

    Example: hmt synth data/phantom --n-per-class 200 --size 256 --seed 0 --preview grid.png  (add --pose-spread 2.5 for harder poses)

    Planted shortcut: hmt synth data/shortcut --shortcut covid:0.5 (half the covid images carry a side marker;
    add --shortcut-lesions 0 to leave those images without lesions, so the marker is their only sign of covid)

    Multi-label: hmt synth data/findings --multi-label --classes bacteria,covid,virus, then
    hmt train data/findings/manifest.csv --multi-label --labels bacteria,covid,virus
    """
    chosen = [label.strip() for label in classes.split(",") if label.strip()]
    if preview_examples < 1:
        raise HmtError(f"--preview-examples must be at least 1, got {preview_examples}")
    if multi_label:
        findings = [name for name in chosen if LESIONS[name] is not None]  # a multi-label image carries lesion types
        summary = synthesize_multi_label(out_dir, n_images=n_per_class * len(findings), size=size, seed=seed, findings=findings,
                                         prevalence=prevalence, pose_spread=pose_spread, progress=progress_bar())
        if preview is not None:
            raise HmtError("--preview draws class-folder phantom sets; leave it out with --multi-label")
    else:
        summary = synthesize_dataset(out_dir, n_per_class=n_per_class, size=size, seed=seed, classes=chosen,
                                     progress=progress_bar(), workers=workers, pose_spread=pose_spread,
                                     shortcuts=_shortcuts(shortcut), shortcut_style=shortcut_style,
                                     shortcut_lesions=shortcut_lesions)
    preview_path = write_preview_grid(out_dir, preview, preview_examples) if preview is not None else None
    if as_json:
        result = summary.to_json()
        result["preview"] = str(preview_path) if preview_path is not None else None
        typer.echo(json.dumps(result, indent=2))
        return
    total = summary.n_per_class if multi_label else sum(summary.counts.values())
    typer.echo(f"wrote {total} phantoms ({', '.join(f'{k} {v}' for k, v in summary.counts.items())}) "
               f"at {size} px to {out_dir} in {summary.seconds:.1f} s; ground truth in {out_dir / 'ground_truth'}")
    if preview_path is not None:
        typer.echo(f"preview grid: {preview_path}")


def _shortcuts(values: list[str]) -> dict[str, float]:
    """``--shortcut CLASS:FRACTION`` values as a mapping (a class given twice is refused)."""
    shortcuts: dict[str, float] = {}
    for value in values:
        label, _, fraction = value.partition(":")
        try:
            share = float(fraction)
        except ValueError:
            raise HmtError(f"--shortcut {value}: expected CLASS:FRACTION, e.g. covid:0.5") from None
        if label in shortcuts:
            raise HmtError(f"--shortcut names {label} twice")
        shortcuts[label.strip()] = share
    return shortcuts

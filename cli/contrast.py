"""`hmt contrast`: is the difference between two groups of maps real? Pixel-wise permutation inference."""
from __future__ import annotations

import json
from pathlib import Path

import typer

from heatmap_templates.analysis.contrast import ContrastSettings, run_contrast, treat_null
from heatmap_templates.analysis.contrast_groups import FORMS
from heatmap_templates.numeric.permutation import CORRECTIONS, DEFAULT_ALPHA, DEFAULT_PERMUTATIONS, TAILS
from heatmap_templates.templates.build import DEFAULT_OUT
from heatmap_templates.templates.templates_file import save_contrast
from hmt_cli.choices import registry_option
from hmt_cli.main import app
from hmt_cli.output import command_line, interval_text
from hmt_cli.progress import progress_bar


@app.command("contrast")
def contrast_command(
    templates: Path = typer.Argument(DEFAULT_OUT, help="Templates file from `hmt build-templates`."),
    group_a: str = typer.Argument(..., help="First group: " + ", ".join(FORMS) + "."),
    group_b: str | None = typer.Argument(None, help="Second group (same forms); with --other it only names the other store's class."),
    heatmaps: Path | None = typer.Option(None, "--heatmaps", help="Heatmap store the templates were built from (default: the one the file records)."),
    other: Path | None = typer.Option(None, "--other", help="A second store of the same images (another model or CAM method): a paired contrast of per-image differences."),
    columns: Path | None = typer.Option(None, "--columns", help="CSV with a path column and any others (site, view, sex, patient_id) for column:COL=VALUE@CLASS groups."),
    tail: str = registry_option("two-sided", "--tail", TAILS, "Alternative hypothesis"),
    permutations: int = typer.Option(DEFAULT_PERMUTATIONS, "--permutations", min=1, help="Random relabellings (every one when there are fewer)."),
    correction: str = registry_option("maxt", "--correction", CORRECTIONS, "Multiple-comparison correction"),
    alpha: float = typer.Option(DEFAULT_ALPHA, "--alpha", help="Significance level of the corrected p-values."),
    resolution: int | None = typer.Option(None, "--resolution", help="Rows of the contrast grid (default: the CAM grid)."),
    min_difference: float = typer.Option(0.0, "--min-difference", help="Significant only where the group means differ by more than this (TREAT's interval null), in the prepared maps' units (minmax: a share of each map's range); 0 tests 'not equal'."),
    null_check: int = typer.Option(0, "--null-check", min=0, help="Also run N random halvings of the first group against itself: the share with any significant pixel should be close to alpha."),
    seed: int = typer.Option(0, "--seed", help="Seed of the permutations."),
    name: str | None = typer.Option(None, "--name", help="Name the contrast is stored under (default: 'A vs B')."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Compare two groups of maps pixel by pixel (Welch's t; paired with --other), with permutation p-values corrected
    for the whole map (max-T by default, TFCE, or FDR), Cohen's d, and a table of significant clusters. Maps are
    prepared as the build prepares them (registered, normalised) and averaged to the CAM grid. Stored in the templates
    file (hmt figures and hmt report show it).

    Example: hmt contrast templates_out/templates.h5 class:covid class:normal --tail greater --null-check 20

    With large groups almost any difference is significant; --min-difference 0.25 asks where the maps differ by more
    than a quarter of their range.
    """
    settings = ContrastSettings(tail=tail, correction=correction, permutations=permutations, alpha=alpha, resolution=resolution,
                                null_check=null_check, seed=seed, min_difference=min_difference)
    result = run_contrast(templates, group_a, group_b, heatmaps=heatmaps, other=other, columns=columns, settings=settings,
                          name=name, progress=progress_bar(as_json))
    test = result.test
    save_contrast(templates, result.name, result.to_dict(),
                  {"t": test.t, "p": test.p, "p_uncorrected": test.p_uncorrected, "effect": test.effect, "tfce": test.tfce},
                  command=command_line())
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    for line in contrast_lines(result.to_dict()):
        typer.echo(line)
    typer.echo(f"stored in {templates} as {result.name!r}; draw with: hmt figures {templates}")


def contrast_lines(record: dict) -> list[str]:
    """A contrast as readable lines: the groups, the test, the clusters and the null check."""
    settings = record["settings"]
    kind = "paired (per-image differences, sign flips)" if record["paired"] else "Welch's t, labels shuffled"
    exact = "every relabelling" if record["exact"] else f"{record['permutations']} permutations"
    margin = settings.get("min_difference") or 0.0  # contrasts stored before the interval null lack it
    null = f"H0: {treat_null(settings['tail'], margin)} (TREAT)" if margin else "H0: no difference"
    lines = [f"{record['name']}: {record['group_a']} ({record['n_a']} maps, {record['patients_a']} patients, {record['classes'][0]} map)"
             + ("" if record["paired"] else f" vs {record['group_b']} ({record['n_b']} maps, {record['patients_b']} patients, "
                                             f"{record['classes'][1]} map)"),
             f"  {kind}, {settings['tail']}, {null}, {settings['correction']} correction, {exact}, grid {record['shape'][0]} x "
             f"{record['shape'][1]}; smallest p {record['min_p']:.4f}, max |t| {record['max_abs_t']:.2f}"]
    clusters = record["clusters"]
    if not clusters:
        lines.append(f"  no pixel significant at alpha {settings['alpha']:g}")
    else:
        lines.append(f"  {len(clusters)} significant cluster(s) at alpha {settings['alpha']:g}:")
        lines.append("    direction  extent    peak (row, col of frame)  peak t   mean d     p       zone")
        for cluster in clusters:
            y, x = cluster["peak_frame"]
            lines.append(f"    {cluster['direction']:<9}  {cluster['extent_percent']:5.1f} %   ({y:.2f}, {x:.2f})"
                         f"               {cluster['peak_t']:6.2f}  {cluster['mean_effect']:6.2f}  {cluster['p']:.4f}  "
                         f"{cluster.get('zone') or '- (run hmt zones)'}")
    check = record.get("null_check")
    if check:
        lines.append(f"  null check: {check['with_significant_pixels']} of {check['runs']} random halvings of the first group "
                     f"had a significant pixel ({interval_text(check['share'], check['share_ci'])}; expected about "
                     f"{check['alpha']:g})")
    lines += [f"  note: {note}" for note in record.get("notes", [])]
    return lines


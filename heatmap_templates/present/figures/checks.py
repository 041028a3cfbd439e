"""Figures of the checks stored in a templates file: randomisation (`hmt sanity`) and deletion faithfulness."""
from __future__ import annotations

import textwrap

import numpy as np
from matplotlib.figure import Figure
from scipy import ndimage

from heatmap_templates.analysis.contrast import treat_null
from heatmap_templates.present.figures.strategies import strategy_colour
from heatmap_templates.present.figures.style import COLUMN_WIDTHS


def sanity_figure(result: dict, width: str) -> Figure:
    """Spearman (solid) and SSIM (dashed) of each class's template with the trained model's, against the number of
    randomised steps (0: the trained model), one colour per class; the flag lines at plus and minus the threshold."""
    figure = Figure(figsize=(COLUMN_WIDTHS[width] * 0.6, 2.6), layout="constrained")
    axis = figure.subplots()
    steps = ["trained"] + list(result["steps"])
    positions = np.arange(len(steps))
    for number, (name, entries) in enumerate(result["similarity"].items()):
        colour = strategy_colour(number)
        for key, style in (("spearman", "-"), ("ssim", "--")):
            values = [1.0] + [np.nan if entry[key] is None else entry[key] for entry in entries]
            axis.plot(positions, values, style, color=colour, marker="o" if key == "spearman" else None, markersize=3,
                      label=f"{name} ({'Spearman' if key == 'spearman' else 'SSIM'})")
        zero = [i + 1 for i, entry in enumerate(entries) if entry.get("all_zero")]
        if zero:
            axis.plot(zero, [0.0] * len(zero), "x", color=colour, label=f"{name}: all-zero maps")
    for sign in (1.0, -1.0):  # flagged where |Spearman| stays at or above the threshold
        axis.axhline(sign * result.get("flag_spearman", 0.5), color="0.5", linewidth=0.6)
    axis.set_xticks(positions, steps, rotation=45, ha="right")
    axis.set_ylim(-1.05, 1.05)
    axis.set_ylabel("similarity to the trained template")
    axis.set_title(f"{result['variant']} randomisation, head to input")
    axis.legend(fontsize=6, frameon=False, loc="lower left")
    return figure


CURVE_STYLES = {"heatmap": ("-", "o"), "template": ("--", "s"), "random": (":", "^"), "smooth": ("-.", "v"),
                "moved_heatmap": ((0, (1, 1)), "D"), "moved_template": ((0, (3, 1, 1, 1)), "P")}  # line and marker, not colour alone
REGION_LABELS = {"outside_lungs": "outside\nremoved", "lungs": "lungs\nremoved", "lungs_area_elsewhere": "lungs' area\nelsewhere"}


def _values(points: list | None) -> np.ndarray:
    return np.array([np.nan if value is None else value for value in points or []], np.float64)


def deletion_figure(result: dict, width: str) -> Figure:
    """Mean probability of the predicted class against the removed share, per ranking (most relevant first; least
    relevant first as a thin line of the same colour) and baseline; the fixed regions as bars with 95 % intervals."""
    figure = Figure(figsize=(COLUMN_WIDTHS[width] * 0.8, 2.6), layout="constrained")
    curves, bars = figure.subplots(1, 2, width_ratios=(2, 1))
    for number, (name, curve) in enumerate(result["curves"].items()):
        line, marker = CURVE_STYLES.get(name, ("-", "o"))
        colour = strategy_colour(number)
        fractions = np.asarray(curve.get("fractions", result["fractions"])) * 100
        area = "" if curve.get("area") is None else f"area {curve['area']:.2f}, "
        curves.plot(fractions, _values(curve["probability"]), linestyle=line, marker=marker, markersize=3, color=colour,
                    label=f"{name} ({area}n={curve['n']})")
        if curve.get("lerf"):
            curves.plot(fractions, _values(curve["lerf"]["probability"]), linestyle=line, linewidth=0.7, marker=marker,
                        markersize=2, markerfacecolor="none", color=colour, label=f"{name}, least relevant first")
    curves.set_xlabel("pixels removed (%)")
    curves.set_ylabel("probability of the predicted class")
    curves.set_ylim(0, 1.02)
    curves.set_title(f"deletion ({result['removal']})")
    curves.legend(fontsize=5, frameon=False)
    regions = result.get("regions", {})
    names = [name for name in REGION_LABELS if name in regions]
    heights = [regions[name]["probability"] for name in names]
    errors = None
    if all(regions[name].get("drop_ci") and regions[name]["drop_ci"][0] is not None for name in names) and names:
        # mean probability = mean original - mean drop: the drop's interval, mirrored
        errors = np.array([[regions[n]["drop_ci"][1] - regions[n]["drop"], regions[n]["drop"] - regions[n]["drop_ci"][0]]
                           for n in names]).T
    bars.bar(range(len(names)), heights, yerr=errors, capsize=2, color="0.6")
    bars.set_xticks(range(len(names)), [REGION_LABELS[name] for name in names], fontsize=6)
    bars.set_ylim(0, 1.02)
    bars.set_title("regions")
    return figure


CONTRAST_CMAP = "RdBu_r"  # ColorBrewer's diverging red-blue: colour-blind safe, 0 white


def contrast_figure(record: dict, reference: np.ndarray | None, width: str) -> Figure:
    """A contrast's t-map over the reference chest (diverging, symmetric about 0), significant clusters outlined (black,
    p < alpha), and beside it Cohen's d; the peak of each cluster marked with its number as in the table."""
    maps = record["maps"]
    t, p, effect = (np.asarray(maps[name], np.float64) for name in ("t", "p", "effect"))
    alpha = record["settings"]["alpha"]
    figure = Figure(figsize=(COLUMN_WIDTHS[width] * 0.8, 2.6), layout="constrained")
    axes = figure.subplots(1, 2)
    for axis, values, label in ((axes[0], t, "t (A - B)"), (axes[1], effect, "Cohen's d (A - B)")):
        limit = max(float(np.abs(values).max()), 1e-9)
        height, width_px = values.shape
        extent = (0.0, float(width_px), float(height), 0.0)
        if reference is not None:
            axis.imshow(reference, cmap="gray", extent=extent, interpolation="bilinear")
        image = axis.imshow(values, cmap=CONTRAST_CMAP, vmin=-limit, vmax=limit, extent=extent, interpolation="nearest",
                            alpha=0.65 if reference is not None else None)
        significant = p < alpha
        if significant.any():
            axis.contour(np.arange(width_px) + 0.5, np.arange(height) + 0.5, significant.astype(float), levels=[0.5],
                         colors="black", linewidths=1.0)
        figure.colorbar(image, ax=axis, shrink=0.8).set_label(label)
        axis.set_axis_off()
    for number, cluster in enumerate(record.get("clusters", []), start=1):
        y, x = cluster["peak"]
        axes[0].annotate(str(number), (x + 0.5, y + 0.5), color="black", fontsize=7, ha="center", va="center",
                         bbox={"boxstyle": "circle,pad=0.15", "facecolor": "white", "linewidth": 0.5})
    groups = record["group_a"] + (f" vs {record['group_b']}" if record.get("group_b") and not record.get("paired") else "")
    margin = record["settings"].get("min_difference") or 0.0
    beyond = f", H0: {treat_null(record['settings']['tail'], margin)}" if margin else ""
    axes[0].set_title(f"{textwrap.fill(groups, 48)}\n{record['settings']['correction']}{beyond}, p < {alpha:g}: {len(record.get('clusters', []))} cluster(s)",
                      fontsize=7)
    axes[1].set_title(f"n = {record['n_a']}" + ("" if record.get("paired") else f" vs {record['n_b']}"), fontsize=7)
    return figure


ZONE_SHORT = {"mediastinum": "MED", "upper_body": "UB", "chest_wall": "CW", "below_diaphragm": "BD", "outside_body": "OUT",
              "border": "BRD"}  # lung zones: initials, e.g. RLP = right lower peripheral
ZONE_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")  # Okabe-Ito


def zones_figure(record: dict, reference: np.ndarray | None, width: str) -> Figure:
    """The zone atlas over the reference chest (zone outlines and short labels; the patient's right on the image's
    left), and per class (and strategy) the enrichment of each zone with its 95 % interval (1: a uniform map)."""
    from matplotlib.colors import ListedColormap

    labels = np.asarray(record["atlas_labels"])
    names = list(record["names"])
    columns = dict(record["classes"])
    for name, strategies in record.get("strategies", {}).items():
        columns |= {f"{name} s{number}": entry for number, entry in strategies.items()}
    figure = Figure(figsize=(COLUMN_WIDTHS[width], 3.2), layout="constrained")
    atlas_axis, bars = figure.subplots(1, 2, width_ratios=(1, 2.2))
    if reference is not None:
        atlas_axis.imshow(reference, cmap="gray", extent=(0, labels.shape[1], labels.shape[0], 0))
    cycle = ListedColormap([ZONE_COLOURS[i % len(ZONE_COLOURS)] for i in range(len(names))])
    atlas_axis.imshow(labels, cmap=cycle, vmin=-0.5, vmax=len(names) - 0.5, alpha=0.35, interpolation="nearest",
                      extent=(0, labels.shape[1], labels.shape[0], 0))
    for index in np.unique(labels):
        atlas_axis.contour((labels == index).astype(float), levels=[0.5], colors="black", linewidths=0.4,
                           extent=(0, labels.shape[1], 0, labels.shape[0]), origin="upper")
        inside = ndimage.distance_transform_edt(np.pad(labels == index, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(np.argmax(inside), inside.shape)  # the zone's most interior pixel: a ring's label on the ring
        atlas_axis.text(x + 0.5, y + 0.5, ZONE_SHORT.get(names[index], "".join(p[0] for p in names[index].split("_")).upper()),
                        fontsize=4, ha="center", va="center")
    atlas_axis.set_title(f"zones ({record['atlas']['source']}); R = patient's right", fontsize=7)
    atlas_axis.set_axis_off()
    positions = np.arange(len(names))
    step = 0.8 / max(len(columns), 1)
    for number, (name, entry) in enumerate(columns.items()):
        values = np.array([np.nan if entry["zones"][z]["enrichment"] is None else entry["zones"][z]["enrichment"] for z in names])
        low = np.array([np.nan if entry["zones"][z]["enrichment_ci"][0] is None else entry["zones"][z]["enrichment_ci"][0] for z in names])
        high = np.array([np.nan if entry["zones"][z]["enrichment_ci"][1] is None else entry["zones"][z]["enrichment_ci"][1] for z in names])
        errors = np.nan_to_num(np.vstack([values - low, high - values]), nan=0.0)
        bars.bar(positions - 0.4 + step * (number + 0.5), np.nan_to_num(values), step, yerr=errors, capsize=1,
                 color=ZONE_COLOURS[number % len(ZONE_COLOURS)], label=name, error_kw={"linewidth": 0.5})
    bars.axhline(1.0, color="0.4", linewidth=0.6, linestyle="--")
    bars.set_xticks(positions, [n.replace("_", " ") for n in names], rotation=60, ha="right", fontsize=5)
    bars.set_ylabel("enrichment (share / area)")
    bars.legend(fontsize=5, frameon=False, ncols=2)
    return figure

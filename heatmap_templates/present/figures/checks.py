"""Figures of the checks stored in a templates file: randomisation (`hmt sanity`) and deletion faithfulness."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from heatmap_templates.present.figures.strategies import strategy_colour
from heatmap_templates.present.figures.style import COLUMN_WIDTHS

RANKING_STYLES = {"heatmap": ("-", "o"), "template": ("--", "s"), "random": (":", "^")}  # line and marker, not colour alone


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


def deletion_figure(result: dict, width: str) -> Figure:
    """Mean probability of the predicted class against the removed share, per ranking; the fixed regions as bars."""
    figure = Figure(figsize=(COLUMN_WIDTHS[width] * 0.75, 2.4), layout="constrained")
    curves, bars = figure.subplots(1, 2, width_ratios=(2, 1))
    fractions = np.asarray(result["fractions"]) * 100
    for number, (name, curve) in enumerate(result["curves"].items()):
        line, marker = RANKING_STYLES.get(name, ("-", "o"))
        curves.plot(fractions, curve["probability"], line, marker=marker, markersize=3, color=strategy_colour(number),
                    label=f"{name} (area {curve['area']:.2f}, n={curve['n']})")
    curves.set_xlabel("pixels removed (%)")
    curves.set_ylabel("probability of the predicted class")
    curves.set_ylim(0, 1.02)
    curves.set_title(f"deletion ({result['removal']})")
    curves.legend(fontsize=6, frameon=False)
    regions = result.get("regions", {})
    names = [name for name in ("outside_lungs", "lungs") if name in regions]
    labels = {"outside_lungs": "outside\nremoved", "lungs": "lungs\nremoved"}
    bars.bar(range(len(names)), [regions[name]["probability"] for name in names], color="0.6")
    bars.set_xticks(range(len(names)), [labels[name] for name in names])
    bars.set_ylim(0, 1.02)
    bars.set_title("regions")
    return figure

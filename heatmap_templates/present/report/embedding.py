"""A class's strategies drawn as inline SVG: the members' spectral embedding and the Laplacian's smallest eigenvalues.

The embedding has one point per clustered member at its 2-D spectral coordinates (scaled into the plot), coloured by
strategy with the figures' colour-blind-safe palette and a marker shape per strategy, so that colour is never the only
cue. It is built to stay small beside a large table: one ``<g>`` per strategy carries the colour, every point is a
``<use>`` of its strategy's marker at coordinates rounded to 1 decimal, no per-point style; 1219 points take about
60 kB. A point names its table row (``data-r``); the page's script (:mod:`.assets`) shows the row's thumbnail and
numbers on hover or focus, and on click or Enter opens the enlarged view or goes to the row. Beside it the spectrum:
the smallest eigenvalues of the members' graph Laplacian with the chosen K marked (the eigengap that chose it).
No script, font or file is fetched: the SVG is plain markup inside the page.
"""
from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np

from heatmap_templates.present.figures.style import CATEGORICAL_COLOURS

WIDTH, HEIGHT = 360, 296
PLOT = (22.0, 8.0, 352.0, 246.0)  # left, top, right, bottom of the points' frame
INSET = 6.0  # points keep this far from the frame, so that no marker is cut
MARKERS = (  # one shape per strategy (then they repeat), centred on (0, 0); {} is its id
    '<circle id="{}" r="3.2"/>', '<rect id="{}" x="-2.8" y="-2.8" width="5.6" height="5.6"/>', '<path id="{}" d="M0-3.8L3.4 2.2H-3.4Z"/>',
    '<path id="{}" d="M0-3.9L3.9 0 0 3.9-3.9 0Z"/>', '<path id="{}" d="M0 3.8L3.4-2.2H-3.4Z"/>',
    '<path id="{}" d="M-1.3-3.8h2.6v2.5h2.5v2.6h-2.5v2.5h-2.6v-2.5h-2.5v-2.6h2.5Z"/>',
)
SPECTRUM_WIDTH = 220
SPECTRUM_PLOT = (36.0, 22.0, 212.0, 246.0)
INK, MUTED, LINE = "#1b1b1b", "#555", "#d0d0d0"


def strategy_colour(label: int) -> str:
    """The colour of strategy ``label`` (0-based), as the strategies figure draws it."""
    return CATEGORICAL_COLOURS[label % len(CATEGORICAL_COLOURS)]


def _short(value: float) -> str:
    """A coordinate with one decimal, without a trailing ``.0``."""
    text = f"{value:.1f}"
    text = text[:-2] if text.endswith(".0") else text
    return "0" if text == "-0" else text


def scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """``values`` mapped linearly from their range onto [low, high] (all to the middle when they are equal)."""
    values = np.asarray(values, dtype=np.float64)
    if not values.size:
        return values
    lowest, highest = float(values.min()), float(values.max())
    if highest - lowest <= 0:
        return np.full(values.shape, (low + high) / 2.0)
    return low + (values - lowest) / (highest - lowest) * (high - low)


FAN_STEP = 3.4  # px: coincident points fan out on a sunflower spiral, the i-th at FAN_STEP * sqrt(i) from their place
GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))


def fan_out(xs: np.ndarray, ys: np.ndarray, box: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Points drawn at one place (within half a pixel) fanned out around it on a sunflower spiral (Vogel 1979), in
    their order, inside ``box`` (left, top, right, bottom); single points stay. Members that the graph joins only to
    each other share their spectral coordinates (an eigenvector is constant on a component), and stacked points could
    not be hovered one by one."""
    xs, ys = np.array(xs, dtype=np.float64), np.array(ys, dtype=np.float64)
    places: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        places.setdefault((int(round(x * 2)), int(round(y * 2))), []).append(i)
    for members in places.values():
        if len(members) < 2:
            continue
        steps = np.arange(len(members))
        radius, angle = FAN_STEP * np.sqrt(steps), steps * GOLDEN_ANGLE
        centre_x, centre_y = xs[members[0]], ys[members[0]]
        xs[members] = np.clip(centre_x + radius * np.cos(angle), box[0], box[2])
        ys[members] = np.clip(centre_y + radius * np.sin(angle), box[1], box[3])
    return xs, ys


def _defs(prefix: str, k: int) -> str:
    """Each strategy's marker, named ``prefix`` + its number (ids unique in the page: one embedding per class)."""
    return "<defs>" + "".join(MARKERS[j % len(MARKERS)].format(f"{prefix}{j + 1}") for j in range(k)) + "</defs>"


def _legend(prefix: str, counts: Sequence[int]) -> str:
    """One entry per strategy under the plot: its marker in its colour and its number of points."""
    start = PLOT[0] + 52
    step = (PLOT[2] - start) / max(1, len(counts))
    parts = [f'<text x="{PLOT[0]:g}" y="288" fill="{MUTED}">strategy</text>']
    for j, count in enumerate(counts):
        x = start + j * step + 6
        parts.append(f'<g fill="{strategy_colour(j)}"><use href="#{prefix}{j + 1}" x="{_short(x)}" y="284"/></g>'
                     f'<text x="{_short(x + 7)}" y="288">{j + 1} ({count})</text>')
    return '<g class="legend">' + "".join(parts) + "</g>"


def embedding_svg(name: str, class_index: int, points: Sequence[Sequence], k: int) -> str:
    """The spectral embedding of class ``name`` (column ``class_index`` of the store): ``points`` are [row or None,
    x, y, strategy (0-based)], one per clustered member; ``k`` strategies."""
    prefix = f"e{class_index}-"
    data = np.asarray([[p[1], p[2]] for p in points], dtype=np.float64).reshape(-1, 2)
    xs = scale(data[:, 0], PLOT[0] + INSET, PLOT[2] - INSET)
    ys = scale(data[:, 1], PLOT[3] - INSET, PLOT[1] + INSET)  # up is larger, as in the strategies figure
    xs, ys = fan_out(xs, ys, (PLOT[0] + INSET, PLOT[1] + INSET, PLOT[2] - INSET, PLOT[3] - INSET))
    groups: list[list[str]] = [[] for _ in range(k)]
    for (row, _, _, label), x, y in zip(points, xs, ys, strict=True):
        reference = "" if row is None else f' data-r="{int(row)}"'
        groups[int(label)].append(f'<use href="#{prefix}{int(label) + 1}" x="{_short(x)}" y="{_short(y)}"{reference}/>')
    label = f"Spectral embedding of the {len(points)} clustered members of {name}, by strategy"
    left, top, right, bottom = PLOT
    return (f'<svg class="embedding" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="group" '
            f'aria-label="{escape(label)}" data-k="{class_index}" font-size="11" fill="{INK}"><title>{escape(label)}</title>'
            f'{_defs(prefix, k)}<rect x="{left:g}" y="{top:g}" width="{right - left:g}" height="{bottom - top:g}" fill="none" '
            f'stroke="{LINE}"/><text x="{(left + right) / 2:g}" y="262" text-anchor="middle" fill="{MUTED}">spectral coordinate 1'
            f'</text><text transform="translate(14 {(top + bottom) / 2:g}) rotate(-90)" text-anchor="middle" fill="{MUTED}">'
            f'spectral coordinate 2</text>'
            + "".join(f'<g data-s="{j + 1}" fill="{strategy_colour(j)}" stroke="#fff" stroke-width=".6">{"".join(uses)}</g>'
                      for j, uses in enumerate(groups))
            + _legend(prefix, [len(uses) for uses in groups]) + "</svg>")


def spectrum_svg(name: str, eigenvalues: Sequence[float], k: int, chosen_by: str) -> str:
    """The smallest Laplacian eigenvalues as bars, the first ``k`` dark, a dashed line after the K-th: the gap."""
    values = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    left, top, right, bottom = SPECTRUM_PLOT
    highest = float(values.max()) if values.size and values.max() > 0 else 1.0
    slot = (right - left) / max(1, len(values))
    label = (f"Smallest eigenvalues of {name}'s member graph Laplacian: "
             + ", ".join(f"{v:.3f}" for v in values) + f"; K = {k} ({chosen_by})")
    parts = [f'<svg class="spectrum" viewBox="0 0 {SPECTRUM_WIDTH} {HEIGHT}" width="{SPECTRUM_WIDTH}" height="{HEIGHT}" '
             f'role="img" aria-label="{escape(label)}" font-size="11" fill="{INK}"><title>{escape(label)}</title>',
             f'<path d="M{left:g} {top:g}V{bottom:g}H{right:g}" fill="none" stroke="{LINE}"/>',
             f'<text x="{left - 4:g}" y="{bottom:g}" text-anchor="end">0</text>',
             f'<text x="{left - 4:g}" y="{top + 4:g}" text-anchor="end">{highest:.2f}</text>']
    for i, value in enumerate(values):
        height = max(value / highest * (bottom - top), 1.0)  # a zero still shows as a line
        x = left + i * slot + slot * 0.2
        parts.append(f'<rect x="{_short(x)}" y="{_short(bottom - height)}" width="{_short(slot * 0.6)}" height="{_short(height)}" '
                     f'fill="{INK if i < k else LINE}"><title>eigenvalue {i + 1}: {value:.3f}</title></rect>'
                     f'<text x="{_short(x + slot * 0.3)}" y="{bottom + 14:g}" text-anchor="middle">{i + 1}</text>')
    if 0 < k < len(values):
        x = left + k * slot
        anchor, shift = ("end", -3) if x > (left + right) / 2 else ("start", 3)  # the label stays inside the picture
        parts.append(f'<path d="M{_short(x)} {top:g}V{bottom:g}" stroke="{strategy_colour(0)}" stroke-dasharray="4 3"/>'
                     f'<text x="{_short(x + shift)}" y="{top - 8:g}" text-anchor="{anchor}">K = {k} ({escape(chosen_by)})</text>')
    parts.append(f'<text x="{(left + right) / 2:g}" y="280" text-anchor="middle" fill="{MUTED}">eigenvalue (smallest first)</text>')
    return "".join(parts) + "</svg>"


def embedding_block(name: str, class_index: int, points: Sequence[Sequence], k: int, eigenvalues: Sequence[float],
                    chosen_by: str) -> str:
    """The embedding and the spectrum side by side, with a caption that says how to explore them."""
    how = "given" if chosen_by == "given" else "chosen by the largest relative gap between consecutive eigenvalues"
    return (f'<figure class="embedding-figure"><div class="plots">{embedding_svg(name, class_index, points, k)}'
            f"{spectrum_svg(name, eigenvalues, k, chosen_by) if len(eigenvalues) else ''}</div>"
            f"<figcaption>Left: the {len(points)} clustered members of {escape(name)} at their spectral coordinates (colour and "
            f"shape: strategy; members at one place are fanned out around it). Right: the smallest eigenvalues of the members' graph Laplacian; K = {k} {how}. Hover or "
            "focus a point (Tab to the plot, then the arrow keys) for its image and numbers; click or Enter enlarges an "
            "image shown in a gallery, or goes to its row in the table.</figcaption></figure>")

"""Strategies against planted ground truth, and on real chest X-rays (issue 13).

One command, one run:

1. **Planted shortcut.** Phantoms of four classes, half of the covid images carrying a side marker
   (`hmt synth --shortcut covid:0.5`); the `small` CNN trained with the default recipe. Does the model use
   the marker? Heatmap energy inside the marker (its box dilated by one CAM cell, and by 0-4 cells) on tagged vs untagged
   covid images, and the covid accuracy on 60 fresh tagged phantoms when the very same images are rendered
   without the marker. Run once with the tagged images' lesions as in every image and once without them
   (``--shortcut-lesions 1 0``: the marker is then their only sign of covid). Then templates in the canonical frame and `hmt strategies` (K by the eigengap):
   adjusted Rand index between the covid strategies and the planted tags, and the share of each
   prototype's mass on the marker (beside the class template's and the marker region's area share).
2. **No planted shortcut.** The same phantoms without markers, a model trained on them, and the K the
   eigengap chooses for each class, whatever it is.
3. **cxr4** (``--cxr4-model``, an hmt model trained on ../shared/data/cxr4): templates of its training part and
   the strategies of each class: size, consistency, lung-field energy of each prototype; figures.

    .venv/bin/python benchmarks/bench_strategies.py [--size 128 --n-per-class 150] [--cam-methods gradcampp layercam ...]
        [--cxr4-model M.keras] [--out strategies.json]

With ``--cam-methods`` the planted runs' strategies are also rebuilt from other CAM methods' maps of the same model,
with each prototype's mass on the marker by dilation: whether another method localises the shortcut more sharply.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
from sklearn.metrics import adjusted_rand_score

from heatmap_templates.analysis.strategy_search import add_strategies
from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.data.preprocess import quantise, to_model_input
from heatmap_templates.explain.cam_methods import DEFAULT_METHOD, METHODS
from heatmap_templates.explain.heatmaps import extract_heatmaps
from heatmap_templates.model.model_file import load_model, save_model
from heatmap_templates.model.training import TrainConfig, train
from heatmap_templates.numeric.metrics import lung_field_energy
from heatmap_templates.store import open_heatmaps
from heatmap_templates.synth import (
    SHORTCUTS,
    mass_share,
    phantom_seed,
    read_shortcuts,
    render_phantom,
    shortcut_region,
    synthesize_dataset,
)
from heatmap_templates.synth.render import streams
from heatmap_templates.templates.build import BuildConfig, build_templates
from heatmap_templates.templates.prepare import registrar_for
from heatmap_templates.templates.templates_file import read_templates

CLASSES = ("bacteria", "covid", "normal", "virus")
FRESH_TAGGED = 60  # fresh tagged covid phantoms on which the marker's removal is tried
DILATIONS = (0, 1, 2, 3, 4)  # CAM cells by which the marker's box is dilated when its share of a map's mass is measured
ROOT = Path(__file__).resolve().parents[1]


def train_and_template(data: Path, out: Path, size: int) -> dict:
    """Default-recipe `small` model, its store, and every class's template in the canonical frame, with strategies."""
    result = train(load_dataset(data), TrainConfig(backbone="small", input_size=size, batch_size=16))
    model = save_model(result.model, result.info, out / "model.keras")
    return {**template_with(model, data, out, DEFAULT_METHOD), "result": result}


def template_with(model: Path, data: Path, out: Path, method: str) -> dict:
    """The model's heatmaps by CAM ``method``, every class's template in the canonical frame, and the strategies."""
    suffix = "" if method == DEFAULT_METHOD else f"_{method}"
    store, templates = out / f"heatmaps{suffix}.h5", out / f"templates{suffix}.h5"
    extract_heatmaps(model, load_dataset(data), store, method=method)
    build_templates(store, None, templates, config=BuildConfig(reference=str(data / "ground_truth" / "canonical_chest.png")))
    return {"model": model, "store": store, "templates": templates, "strategies": add_strategies(templates)}


def would_be_marker(seed: int, index: int, size: int) -> np.ndarray:
    """Where image ``index`` of covid would carry the marker (the same draw whether it carries it or not)."""
    rng = streams(phantom_seed(seed, "covid", index))["shortcut"]
    return SHORTCUTS["marker"].draw(rng, size)[1]


def shortcut_use(data: Path, trained: dict, size: int, seed: int, lesion_scale: float, n_per_class: int) -> dict:
    """Energy of covid maps on the marker (tagged vs untagged), and covid accuracy on fresh tagged phantoms (lesions
    scaled by ``lesion_scale`` as the tagged images' were) with the marker and with the very same images without it."""
    reader = open_heatmaps(trained["store"])
    k = reader.class_names.index("covid")
    tagged = read_shortcuts(data)
    raw_side = next(reader.iter_raw(1)).shape[-1]
    cell = max(1, size // raw_side)
    import cv2

    energies = {True: [], False: []}  # per map: its energy share on the marker dilated by each of DILATIONS cells
    root = data.resolve()
    covid = [i for i, path in enumerate(reader.paths) if Path(path).parent.name == "covid"]
    for batch_start in range(0, len(covid), 64):
        indices = covid[batch_start:batch_start + 64]
        (batch,) = reader.iter_batches(len(indices), indices)
        for path, maps in zip(batch.paths, batch.maps_for(k), strict=True):
            relative = Path(path).resolve().relative_to(root).as_posix()
            marker = would_be_marker(seed, int(Path(path).stem.split("_")[-1]), size).astype(np.uint8)
            energies[tagged[relative]].append([
                mass_share(np.clip(maps, 0, None), cv2.dilate(marker, np.ones((2 * r * cell + 1,) * 2, np.uint8)) > 0)
                for r in DILATIONS])
    model, info = load_model(trained["model"])
    # Fresh covid phantoms (indices after the data set's: never seen in training), each rendered as a tagged image
    # would be (lesions scaled) with the marker and without it.
    fresh = range(n_per_class, n_per_class + FRESH_TAGGED)
    with_marker, without_marker = [], []
    for index in fresh:
        for shortcut, sink in (("marker", with_marker), (None, without_marker)):
            image = render_phantom(phantom_seed(seed, "covid", index), "covid", size, shortcut=shortcut, lesion_scale=lesion_scale).image
            probabilities = model.predict_on_batch(to_model_input(quantise(image)[None], info.channels, info.preprocessing))
            sink.append(int(np.argmax(probabilities[0]) == info.class_names.index("covid")))
    return {
        "marker_energy_tagged": {"mean": float(np.mean(energies[True], axis=0)[DILATIONS.index(1)]), "n": len(energies[True]),
                                 "by_dilation": np.mean(energies[True], axis=0).round(4).tolist()},
        "marker_energy_untagged": {"mean": float(np.mean(energies[False], axis=0)[DILATIONS.index(1)]), "n": len(energies[False]),
                                   "by_dilation": np.mean(energies[False], axis=0).round(4).tolist()},
        "dilations_in_cells": list(DILATIONS),
        "fresh_tagged_images": len(fresh),
        "accuracy_tagged_with_marker": float(np.mean(with_marker)),
        "accuracy_tagged_marker_removed": float(np.mean(without_marker)),
        "cam_cell_px": cell,
    }


def strategy_truth(data: Path, trained: dict, size: int, cell: int) -> dict:
    """ARI of the covid strategies against the planted tags; each prototype's mass on the marker region."""
    result = trained["strategies"]["covid"]
    file = read_templates(trained["templates"])
    template = file.templates["covid"]
    tagged = read_shortcuts(data)
    root = data.resolve()
    planted = np.array([tagged[Path(m.path).resolve().relative_to(root).as_posix()] for m in template.members])
    registrar = registrar_for(file.settings.registration, file.reference_image, file.lung_mask)
    # The marker region dilated by each of DILATIONS CAM cells: a last-layer unit sees the marker from a few cells away
    # (its receptive field), so even a map of a model that looks only at the marker is a blob several cells wide.
    regions = [shortcut_region(data, template.members, registrar, (size, size), r * cell) for r in DILATIONS]
    region, support = regions[DILATIONS.index(1)], regions[DILATIONS.index(2)]

    def profile(values: np.ndarray) -> list[float]:
        return [round(mass_share(values, each), 4) for each in regions]

    return {
        "k": result.k, "chosen_by": result.chosen_by, "eigenvalues": [round(float(v), 4) for v in result.eigenvalues],
        "ari_with_planted": float(adjusted_rand_score(planted, result.labels)), "stability": result.stability,
        "strategies": [{"size": s.size, "tagged": int(planted[result.labels == j].sum()),
                        "mass_on_marker": mass_share(s.mean, region), "mass_on_marker_two_cells": mass_share(s.mean, support),
                        "mass_by_dilation": profile(s.mean), "consistency": s.consistency}
                       for j, s in enumerate(result.strategies)],
        "template_mass_on_marker": mass_share(template.mean, region), "marker_region_area_share": float(region.mean()),
        "marker_two_cell_area_share": float(support.mean()),
        "dilations_in_cells": list(DILATIONS), "area_share_by_dilation": [round(float(each.mean()), 4) for each in regions],
        "tagged_members": int(planted.sum()), "members": len(planted),
    }


def eigengap_choices(trained: dict) -> dict:
    return {name: {"k": result.k, "sizes": [s.size for s in result.strategies],
                   "eigenvalues": [round(float(v), 4) for v in result.eigenvalues], "stability": result.stability}
            for name, result in trained["strategies"].items()}


def cxr4_strategies(model: Path, out: Path) -> dict:
    """Strategies of every class of a cxr4 model's training part (templates as benchmarks/real_data_report.py builds them)."""
    from heatmap_templates.model.model_file import read_model_info
    from heatmap_templates.present.figures import template_figures

    data = ROOT.parent / "shared" / "data" / "cxr4"
    info = read_model_info(model)
    manifest = out / "train.csv"
    manifest.write_text("path,label\n" + "".join(f"{(data / p).resolve()},{Path(p).parts[0]}\n" for p in info.split["train"]))
    store = out / "heatmaps_train.h5"
    extract_heatmaps(model, manifest, store)
    templates = out / "templates.h5"
    build_templates(store, None, templates)
    found = add_strategies(templates)
    file = read_templates(templates)
    figures = template_figures(templates, out / "figures", formats=("png",), dpi=150)
    return {"figures": [str(path) for path in figures.files if "strategies" in path.name], "classes": {
        name: {"k": result.k, "eigenvalues": [round(float(v), 4) for v in result.eigenvalues], "stability": result.stability,
               "template_lung_field_energy": float(lung_field_energy(file.templates[name].mean, file.lung_mask)),
               "strategies": [{"size": s.size, "consistency": s.consistency,
                               "lung_field_energy": float(lung_field_energy(s.mean, file.lung_mask))} for s in result.strategies]}
        for name, result in found.items()}, "lung_area_share": float(np.mean(file.lung_mask))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n-per-class", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shortcut-lesions", type=float, nargs="+", default=[1.0, 0.0],
                        help="lesion scale of the tagged covid images, one planted run each (1: as every image, 0: none)")
    parser.add_argument("--cam-methods", nargs="*", default=[], choices=[m for m in METHODS.names() if m != DEFAULT_METHOD],
                        help="also rebuild the planted runs' strategies from these CAM methods' maps (same model)")
    parser.add_argument("--skip-plain", action="store_true", help="leave out the phantoms without a planted shortcut")
    parser.add_argument("--cxr4-model", type=Path, default=None)
    parser.add_argument("--work", type=Path, default=None, help="keep the data, models and figures here")
    parser.add_argument("--out", type=Path, default=Path("strategies.json"))
    args = parser.parse_args()
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="hmt_strategies_"))
    report: dict = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
                    "size": args.size, "n_per_class": args.n_per_class, "work": str(work)}
    report["planted"] = {}
    for lesion_scale in args.shortcut_lesions:  # the tagged images' lesions as in every image (1), faint, or none (0)
        planted = work / f"planted_lesions_{lesion_scale:g}"
        synthesize_dataset(planted / "data", n_per_class=args.n_per_class, size=args.size, seed=args.seed, classes=CLASSES,
                           shortcuts={"covid": 0.5}, shortcut_lesions=lesion_scale)
        trained = train_and_template(planted / "data", planted, args.size)
        found = {"shortcut_lesions": lesion_scale, "test_accuracy": trained["result"].test_report["accuracy"],
                 "use": shortcut_use(planted / "data", trained, args.size, args.seed, lesion_scale, args.n_per_class)}
        found["strategies"] = strategy_truth(planted / "data", trained, args.size, found["use"]["cam_cell_px"])
        found["other_cam_methods"] = {}
        for method in args.cam_methods:  # the same model, its maps by another CAM method: is the shortcut sharper?
            other = template_with(trained["model"], planted / "data", planted, method)
            truth = strategy_truth(planted / "data", other, args.size, found["use"]["cam_cell_px"])
            found["other_cam_methods"][method] = {"ari_with_planted": truth["ari_with_planted"], "k": truth["k"],
                                                  "mass_by_dilation": [each["mass_by_dilation"] for each in truth["strategies"]]}
        found["every_class"] = eigengap_choices(trained)
        report["planted"][f"lesions_{lesion_scale:g}"] = found
        print(json.dumps(found, indent=2), flush=True)
    if args.skip_plain:
        return _finish(report, args, started, work)
    plain = work / "plain"
    synthesize_dataset(plain / "data", n_per_class=args.n_per_class, size=args.size, seed=args.seed, classes=CLASSES)
    plain_trained = train_and_template(plain / "data", plain, args.size)
    report["plain"] = {"test_accuracy": plain_trained["result"].test_report["accuracy"], "every_class": eigengap_choices(plain_trained)}
    print(json.dumps(report["plain"], indent=2), flush=True)
    _finish(report, args, started, work)


def _finish(report: dict, args: argparse.Namespace, started: float, work: Path) -> None:
    """The cxr4 part (with --cxr4-model), then the report written."""
    if args.cxr4_model is not None:
        (work / "cxr4").mkdir(exist_ok=True)
        report["cxr4"] = cxr4_strategies(args.cxr4_model, work / "cxr4")
        print(json.dumps(report["cxr4"], indent=2), flush=True)
    report["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

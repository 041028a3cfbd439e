"""Contamination curve: from which share of tagged covid images on does each detector find a planted shortcut?

As Sun et al. (MICCAI 2023) planted tags into 0-100 % of CheXpert positives, the phantom's side marker
(``--style``, default ``marker``: burned on the detector near the upper left corner, so it does not follow the pose)
is planted on 0, 10, 25, 50, 75 and 90 % of the covid images (``--levels``), the tagged images keeping their
lesions, plus one row at 50 % whose tagged images have no lesions (``--lesion-free-level``: the marker is then their
only sign of covid). The same ``--seed`` at every level: the phantoms are the same images and the tagged sets are
nested (an image tagged at 10 % is tagged at 25 % too). At each level the `small` CNN is trained once (CPU), its
Grad-CAM maps extracted, templates built in the canonical frame, and five detectors read:

1. **strategies** of the covid template (``find_strategies``, K by the eigengap): finds = K >= 2 and the adjusted Rand
   index between the strategy labels and the tags >= 0.5 (no tags at level 0: K only, ARI undefined).
2. **marker energy**: each covid member's registered, normalised map (positive part), its share inside the marker
   region of the template frame, mean with a 95 % bootstrap interval; the same share for the normal members' maps;
   finds = covid's interval low > normal's interval high. The marker is not at one fixed place (its box moves by up
   to 2.5 % of the side from image to image), so the region is the mean of the covid members' marker masks, each
   dilated by ``--marker-dilation`` CAM cells and moved into the template frame with the member's registration,
   kept where it is >= 0.5. Every covid member's mask is where the marker is or would be (the draw comes from the
   image's own shortcut stream whether it carries the marker or not; for tagged members it is exactly its
   ``ground_truth/shortcut_masks`` file, checked), so the region is the same at every level, level 0 included.
3. **contrast** tagged vs untagged covid images (`hmt contrast`'s `run_contrast`, groups
   ``column:tag=1,label=covid@covid`` and ``column:tag=0,label=covid@covid`` of a CSV of the tags, one-sided
   greater, max-T, ``--permutations``): finds = a significant cluster (A > B) whose peak lies on the marker region
   moved to the contrast grid. At level 0, where nobody is tagged, the tags are the images that *would* carry the
   marker at 50 % (a random half of covid): the false-alarm row.
4. **deletion**: for tagged covid images, the drop of the covid probability when the marker (its mask dilated by one
   pixel for the burn-in's blur) is removed (ROAD imputation) minus the mean drop over ``--draws`` random smooth
   regions of the same area inside the body and off the marker (smoothness one CAM cell); mean of the per-image
   difference with its interval; finds = interval low > 0. The images: ``--deletion-images fresh`` (default) the
   first ``--deletion-n`` fresh tagged phantoms of item 5 (same number at every level); ``test`` the tagged covid
   test images of the data set (few at low levels; level 0, with none, uses the fresh ones).
5. **accuracy** (covid recall) on ``--fresh`` fresh covid phantoms (``--fresh-seed``) rendered with the marker and
   the very same images without it, lesions scaled as the tagged images' are; finds = the paired bootstrap interval
   of the per-image correctness difference (with - without) lies above 0.

Level 0 is each detector's false-alarm row. "Smallest contamination each detector finds" reads the rows whose tagged
images keep their lesions. Outputs: the JSON of all numbers (``--out``), a figure (``--figure``, default beside it)
and a markdown table printed at the end; results go in benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_contamination.py [--size 96 --n-per-class 120 --epochs 20]
        [--levels 0,10,25,50,75,90 --lesion-free-level 50] [--work DIR] [--out contamination.json]

Smoke test: ``--size 48 --n-per-class 12 --epochs 1 --levels 0,50 --fresh 20 --deletion-n 6``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2
import numpy as np
from sklearn.metrics import adjusted_rand_score

from heatmap_templates.analysis.contrast import ContrastSettings, run_contrast
from heatmap_templates.analysis.deletion_regions import smooth_random_region
from heatmap_templates.analysis.faithfulness import REMOVALS
from heatmap_templates.analysis.prior_masks import LungMasks
from heatmap_templates.analysis.strategies import MIN_STRATEGY_MEMBERS, StrategySettings, find_strategies
from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.data.preprocess import load_model_image, quantise, unit_pixels
from heatmap_templates.explain.heatmaps import extract_heatmaps
from heatmap_templates.model.evaluation import predict_probabilities
from heatmap_templates.model.heads import predicted_classes
from heatmap_templates.model.model_file import ModelInfo, save_model
from heatmap_templates.model.training import TrainConfig, train
from heatmap_templates.numeric.bootstrap import mean_interval
from heatmap_templates.numeric.resample import downsample
from heatmap_templates.present.figures.style import COLUMN_WIDTHS, publication_style, save_deterministic
from heatmap_templates.store import open_heatmaps
from heatmap_templates.synth import (
    CANONICAL_CHEST_FILE,
    DEFAULT_SHORTCUT_STYLE,
    GROUND_TRUTH_DIR,
    SHORTCUTS,
    carries_shortcut,
    mass_share,
    phantom_seed,
    read_shortcuts,
    render_phantom,
    shortcut_mask,
    synthesize_dataset,
)
from heatmap_templates.synth.dataset import BODY_MASKS_DIR
from heatmap_templates.synth.render import streams
from heatmap_templates.templates.build import BuildConfig, build_templates
from heatmap_templates.templates.prepare import member_alignment, prepared_member_maps, registrar_for
from heatmap_templates.templates.templates_file import read_templates

CLASSES = ("bacteria", "covid", "normal", "virus")
TAGGED, CONTROL = "covid", "normal"  # the class that carries the marker; the untagged class it is compared with
DETECTORS = ("strategies", "energy", "contrast", "deletion", "accuracy")
ARI_FINDS = 0.5
MIN_IMAGES = 5  # an interval over fewer rows is reported but not judged (a bootstrap of one or two rows is no interval)
ROAD_DILATION_PX = 1  # the burn-in is softened by a 0.7-px blur: the removed marker takes its one-pixel fringe along
COLOURS = {"covid": "#0072B2", "normal": "#E69F00", "with": "#009E73", "without": "#D55E00"}  # Okabe-Ito, colour-blind safe


@dataclass(frozen=True)
class Row:
    """One contamination level: the share of covid images tagged (%) and the tagged images' lesion scale."""

    percent: int
    lesions: float

    @property
    def key(self) -> str:
        return f"p{self.percent:02d}_lesions{self.lesions:g}"


@dataclass
class Trained:
    """One level's model and the files made from it."""

    model: object  # keras.Model
    info: ModelInfo
    data: Path
    store: Path
    templates: Path
    test_accuracy: float | None
    seconds: float


@dataclass
class Fresh:
    """Fresh covid phantoms: with the marker, the same images without it (uint8), the marker and body masks."""

    with_marker: np.ndarray
    without_marker: np.ndarray
    markers: np.ndarray
    bodies: np.ndarray


def interval(values, seed: int = 0) -> dict:
    """Mean of ``values`` with its 95 % bootstrap interval (JSON form)."""
    return mean_interval(np.asarray(values, np.float64), seed=seed).to_dict()


def above(record: dict, bound: float | None, *others: dict) -> bool | None:
    """Whether ``record``'s interval lies above ``bound`` (None: an interval missing or over too few rows)."""
    if bound is None or record["ci"][0] is None or any(r["n"] < MIN_IMAGES for r in (record, *others)):
        return None
    return bool(record["ci"][0] > bound)


def image_index(path: str) -> int:
    return int(Path(path).stem.split("_")[-1])


def would_be_marker(seed: int, style: str, index: int, size: int) -> np.ndarray:
    """Where covid image ``index`` carries the marker or would carry it (the same draw of its own shortcut stream)."""
    return SHORTCUTS[style].draw(streams(phantom_seed(seed, TAGGED, index))["shortcut"], size)[1]


def to_shape(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A boolean mask at the model input's shape (nearest neighbour)."""
    if mask.shape == tuple(shape):
        return np.asarray(mask, bool)
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    if pixels <= 0:
        return np.asarray(mask, bool)
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * pixels + 1,) * 2, np.uint8)) > 0


# --------------------------------------------------------------------------- one level: data, model, templates


def train_level(row: Row, folder: Path, args: argparse.Namespace, *, attention_prior: str | None = None,
                outside_lungs_augment: float = 0.0, method: str | None = None) -> Trained:
    """Phantoms with the marker on ``row.percent`` % of covid, the `small` model (with ``attention_prior``: trained
    against explanations outside each image's lung fields), its heatmaps (CAM ``method``) and templates."""
    started = time.perf_counter()
    data = folder / "data"
    shortcuts = {TAGGED: row.percent / 100.0} if row.percent else {}
    synthesize_dataset(data, n_per_class=args.n_per_class, size=args.size, seed=args.seed, classes=CLASSES,
                       shortcuts=shortcuts, shortcut_style=args.style, shortcut_lesions=row.lesions)
    dataset = load_dataset(data)
    config = TrainConfig(backbone="small", input_size=args.size, batch_size=args.batch_size, epochs=args.epochs,
                         seed=args.seed, attention_prior=attention_prior, outside_lungs_augment=outside_lungs_augment)
    result = train(dataset, config, masks=LungMasks(data) if config.uses_masks else None)
    model_path = save_model(result.model, result.info, folder / "model.keras")
    store, templates = folder / "heatmaps.h5", folder / "templates.h5"
    extract_heatmaps(model_path, dataset, store, method=method)
    build_templates(store, None, templates,
                    config=BuildConfig(reference=str(data / GROUND_TRUTH_DIR / CANONICAL_CHEST_FILE)))
    accuracy = (result.test_report or {}).get("accuracy")
    return Trained(result.model, result.info, data, store, templates, accuracy, time.perf_counter() - started)


def member_maps(trained: Trained, name: str) -> tuple[list, np.ndarray] | None:
    """A class template's members and their registered, normalised maps of that class (None without a template)."""
    file = read_templates(trained.templates)
    template = file.templates.get(name)
    if template is None or not template.count:
        return None
    reader = open_heatmaps(trained.store)
    registrar = registrar_for(file.settings.registration, file.reference_image, file.lung_mask)
    k = reader.class_names.index(name)
    maps = np.concatenate([maps for _, maps in prepared_member_maps(reader, template, registrar, file.settings.normalisation, k)])
    return list(template.members), maps


def marker_region(trained: Trained, members: list, args: argparse.Namespace, cell: int) -> tuple[np.ndarray, dict]:
    """The marker region in the template frame (see the module docstring), and the check of the masks it uses."""
    file = read_templates(trained.templates)
    registrar = registrar_for(file.settings.registration, file.reference_image, file.lung_mask)
    shape = trained.info.input_size
    root = trained.data.resolve()
    tags = read_shortcuts(trained.data)
    total = np.zeros(registrar.reference.shape, np.float64)
    used = checked = mismatched = 0
    for member in members:
        alignment = member_alignment(member, shape)
        if alignment is None:
            continue
        mask = would_be_marker(args.seed, args.style, image_index(member.path), args.size)
        relative = Path(member.path).resolve().relative_to(root).as_posix()
        if tags.get(relative):
            written = shortcut_mask(root, relative)
            checked += 1
            mismatched += int(written is None or not np.array_equal(written, mask))
        total += registrar.warp(dilate(to_shape(mask, shape), args.marker_dilation * cell).astype(np.float32), alignment)
        used += 1
    region = total >= 0.5 * used if used else np.zeros(registrar.reference.shape, bool)
    return region, {"members": used, "tagged_masks_checked": checked, "tagged_masks_differing": mismatched,
                    "area_share": float(region.mean())}


# --------------------------------------------------------------------------- detectors 1 and 2


def strategies_readout(trained: Trained, members: list, maps: np.ndarray, tagged: np.ndarray) -> dict:
    """Covid strategies (K by the eigengap) and their adjusted Rand index with the tags."""
    if len(members) < MIN_STRATEGY_MEMBERS:
        return {"k": None, "ari": None, "finds": None, "note": f"{len(members)} covid members: too few to cluster"}
    lungs = read_templates(trained.templates).lung_mask
    result = find_strategies(TAGGED, maps, [m.path for m in members], StrategySettings(), lungs)
    sizes = [s.size for s in result.strategies]
    tagged_per = [int(tagged[result.labels == j].sum()) for j in range(result.k)]
    if not tagged.any():
        return {"k": result.k, "sizes": sizes, "ari": None, "finds": None, "note": "no tagged members: ARI undefined"}
    ari = float(adjusted_rand_score(tagged.astype(int), result.labels))
    return {"k": result.k, "sizes": sizes, "tagged_per_strategy": tagged_per, "ari": ari,
            "stability": result.stability, "finds": bool(result.k >= 2 and ari >= ARI_FINDS)}


def energy_readout(trained: Trained, covid: tuple[list, np.ndarray], tagged: np.ndarray, args: argparse.Namespace,
                   cell: int) -> dict:
    """Share of covid members' and normal members' map mass inside the marker region, with intervals."""
    members, maps = covid
    region, about = marker_region(trained, members, args, cell)
    shares = np.array([mass_share(np.clip(each, 0, None), region) for each in maps])
    normal = member_maps(trained, CONTROL)
    control = np.array([mass_share(np.clip(each, 0, None), region) for each in normal[1]]) if normal else np.zeros(0)
    covid_ci, normal_ci = interval(shares), interval(control)
    finds = above(covid_ci, normal_ci["ci"][1], normal_ci)
    return {"covid": covid_ci, "normal": normal_ci, "region": {**about, "dilation_cells": args.marker_dilation},
            "covid_tagged_mean": float(shares[tagged].mean()) if tagged.any() else None,
            "covid_untagged_mean": float(shares[~tagged].mean()) if (~tagged).any() else None, "finds": finds}


def contrast_readout(trained: Trained, folder: Path, region: np.ndarray, percent: int, args: argparse.Namespace) -> dict:
    """Tagged against untagged covid images, pixel by pixel (``hmt contrast``): does a significant cluster peak on the
    marker region? At level 0, the would-be tags of 50 % (a random half) give the false-alarm row."""
    tags = read_shortcuts(trained.data)
    table = folder / "tags.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "tag"])
        for relative, flag in tags.items():
            label = relative.split("/")[0]
            tag = flag if percent else (label == TAGGED and carries_shortcut(args.seed, TAGGED, image_index(relative), 0.5))
            writer.writerow([str(trained.data / relative), label, int(bool(tag))])
    settings = ContrastSettings(tail="greater", permutations=args.permutations, seed=args.seed)
    result = run_contrast(trained.templates, f"column:tag=1,label={TAGGED}@{TAGGED}", f"column:tag=0,label={TAGGED}@{TAGGED}",
                          heatmaps=trained.store, columns=table, settings=settings)
    on_marker = downsample(region.astype(np.float64), result.test.t.shape) > 0
    hits = [c for c in result.clusters if c["direction"] == "a > b" and on_marker[tuple(c["peak"])]]
    return {"n_tagged": result.n[0], "n_untagged": result.n[1], "clusters": result.clusters, "clusters_on_marker": len(hits),
            "min_p": float(result.test.p.min()), "max_t": float(result.test.t.max()),
            "marker_cells": int(on_marker.sum()), "grid": list(result.test.t.shape),
            "tags": "real" if percent else "would-be tags of 50 % (nobody tagged)", "finds": bool(hits)}


# --------------------------------------------------------------------------- detectors 4 and 5


def fresh_phantoms(seed: int, count: int, size: int, style: str, lesions: float) -> Fresh:
    """``count`` fresh covid phantoms rendered with the marker and identically without it (lesions scaled)."""
    tagged, plain, markers, bodies = [], [], [], []
    for index in range(count):
        marked = render_phantom(phantom_seed(seed, TAGGED, index), TAGGED, size, shortcut=style, lesion_scale=lesions)
        unmarked = render_phantom(phantom_seed(seed, TAGGED, index), TAGGED, size, shortcut=None, lesion_scale=lesions)
        assert marked.shortcut_mask is not None and marked.body_mask is not None  # rendered with a shortcut and a body
        tagged.append(quantise(marked.image))
        plain.append(quantise(unmarked.image))
        markers.append(marked.shortcut_mask)
        bodies.append(marked.body_mask)
    return Fresh(np.stack(tagged), np.stack(plain), np.stack(markers), np.stack(bodies))


def test_cases(trained: Trained) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tagged covid test images (uint8 at input size), their marker masks and body masks, from the data set."""
    shape = trained.info.input_size
    tags = read_shortcuts(trained.data)
    chosen = [p for p in trained.info.split.get("test", []) if Path(p).parts[0] == TAGGED and tags.get(p)]
    images, markers, bodies = [], [], []
    for relative in chosen:
        images.append(load_model_image(trained.data / relative, shape))
        marker = shortcut_mask(trained.data, relative)
        body = cv2.imread(str(trained.data / GROUND_TRUTH_DIR / BODY_MASKS_DIR / relative), cv2.IMREAD_GRAYSCALE)
        assert marker is not None and body is not None  # a tagged phantom has both
        markers.append(to_shape(marker, shape))
        bodies.append(to_shape(np.asarray(body) >= 128, shape))
    empty = np.zeros((0, *shape))
    return (np.stack(images) if images else empty.astype(np.uint8), np.stack(markers) if markers else empty.astype(bool),
            np.stack(bodies) if bodies else empty.astype(bool))


def deletion_readout(trained: Trained, images: np.ndarray, markers: np.ndarray, bodies: np.ndarray, cell: int,
                     args: argparse.Namespace) -> dict:
    """Per image: covid-probability drop when the marker is removed minus the mean drop of equal-area random smooth
    regions inside the body; mean with its interval."""
    k = trained.info.class_names.index(TAGGED)
    remove = REMOVALS[args.removal]
    rng = np.random.default_rng(args.seed)
    marker_drops, random_drops = [], []
    for image_u8, marker, body in zip(images, markers, bodies, strict=True):
        image = unit_pixels(image_u8)
        removed = dilate(marker, ROAD_DILATION_PX)
        variants = [image, remove(image, removed, rng)]
        for _ in range(args.draws):
            region = smooth_random_region(image.shape, int(removed.sum()), cell, body & ~removed, rng)
            variants.append(remove(image, region, rng))
        covid = predict_probabilities(trained.model, trained.info, np.stack(variants))[:, k]
        marker_drops.append(covid[0] - covid[1])
        random_drops.append(float(np.mean(covid[0] - covid[2:])))
    difference = np.subtract(marker_drops, random_drops)
    found = interval(difference)
    finds = above(found, 0.0)
    return {"difference": found, "marker_drop": interval(marker_drops), "random_drop": interval(random_drops),
            "draws": args.draws, "removal": args.removal, "cell_px": cell, "finds": finds}


def accuracy_readout(trained: Trained, fresh: Fresh) -> dict:
    """Covid recall on fresh phantoms with the marker and without it; the paired difference's interval."""
    k = trained.info.class_names.index(TAGGED)
    head = trained.info.head_kind
    correct = {}
    for key, images in (("with_marker", fresh.with_marker), ("without_marker", fresh.without_marker)):
        correct[key] = (predicted_classes(predict_probabilities(trained.model, trained.info, images), head) == k).astype(float)
    difference = interval(correct["with_marker"] - correct["without_marker"])
    finds = above(difference, 0.0)
    return {"with_marker": interval(correct["with_marker"]), "without_marker": interval(correct["without_marker"]),
            "difference": difference, "finds": finds}


# --------------------------------------------------------------------------- the run


def run_level(row: Row, work: Path, args: argparse.Namespace, fresh_cache: dict[float, Fresh]) -> dict:
    """Train once at this level and read every detector."""
    folder = work / row.key
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder}: exists and is not empty; choose a new --work folder")
    folder.mkdir(parents=True, exist_ok=True)
    trained = train_level(row, folder, args)
    started = time.perf_counter()
    raw_side = next(open_heatmaps(trained.store).iter_raw(1)).shape[-1]
    cell = max(1, int(trained.info.input_size[0]) // raw_side)
    record: dict = {"percent": row.percent, "shortcut_lesions": row.lesions, "test_accuracy": trained.test_accuracy,
                    "train_and_template_seconds": round(trained.seconds, 1), "cam_cell_px": cell}
    covid = member_maps(trained, TAGGED)
    tags = read_shortcuts(trained.data)
    root = trained.data.resolve()
    tagged = np.array([tags.get(Path(m.path).resolve().relative_to(root).as_posix(), False) for m in covid[0]]) \
        if covid else np.zeros(0, bool)
    record["covid_members"], record["tagged_members"] = len(tagged), int(tagged.sum())
    record["tagged_images"] = sum(1 for path, flag in tags.items() if flag and path.startswith(f"{TAGGED}/"))
    record["strategies"] = strategies_readout(trained, *covid, tagged) if covid else {"finds": None, "note": "no covid template"}
    record["energy"] = energy_readout(trained, covid, tagged, args, cell) if covid else {"finds": None, "note": "no covid template"}
    region = marker_region(trained, covid[0], args, cell)[0] if covid else None
    record["contrast"] = contrast_readout(trained, folder, region, row.percent, args) if region is not None else \
        {"finds": None, "note": "no covid template"}
    if row.lesions not in fresh_cache:
        fresh_cache[row.lesions] = fresh_phantoms(args.fresh_seed, args.fresh, args.size, args.style, row.lesions)
    fresh = fresh_cache[row.lesions]
    if args.deletion_images == "test" and row.percent:
        images, markers, bodies = test_cases(trained)
        source = "tagged covid test images"
    else:
        n = args.deletion_n
        images, markers, bodies = fresh.with_marker[:n], fresh.markers[:n], fresh.bodies[:n]
        source = "fresh tagged covid phantoms"
    record["deletion"] = {**deletion_readout(trained, images, markers, bodies, cell, args), "images": source} \
        if len(images) else {"finds": None, "note": "no tagged covid test image", "images": source}
    record["accuracy"] = {**accuracy_readout(trained, fresh), "fresh_images": args.fresh, "fresh_seed": args.fresh_seed}
    record["detector_seconds"] = round(time.perf_counter() - started, 1)
    return record


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96, help="phantom side and model input (px)")
    parser.add_argument("--n-per-class", type=int, default=120)
    parser.add_argument("--permutations", type=int, default=1000, help="permutations of the tagged-vs-untagged contrast")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="the phantoms' and training's seed (the same at every level)")
    parser.add_argument("--levels", default="0,10,25,50,75,90", help="percentages of tagged covid images, comma-separated")
    parser.add_argument("--lesion-free-level", type=int, default=50,
                        help="one extra row at this percentage whose tagged images have no lesions (-1: none)")
    parser.add_argument("--style", default=DEFAULT_SHORTCUT_STYLE, choices=SHORTCUTS.names())
    parser.add_argument("--marker-dilation", type=int, default=1, help="CAM cells by which the marker region is dilated")
    parser.add_argument("--fresh", type=int, default=200, help="fresh covid phantoms, with and without the marker")
    parser.add_argument("--fresh-seed", type=int, default=1000)
    parser.add_argument("--deletion-images", choices=("fresh", "test"), default="fresh")
    parser.add_argument("--deletion-n", type=int, default=40, help="fresh tagged phantoms in the deletion test")
    parser.add_argument("--draws", type=int, default=8, help="random smooth regions per image")
    parser.add_argument("--removal", default="road", choices=REMOVALS.names())
    parser.add_argument("--work", type=Path, default=None, help="keep data, models and templates here (default: a new temp folder)")
    parser.add_argument("--out", type=Path, default=Path("contamination.json"))
    parser.add_argument("--figure", type=Path, default=None, help="the figure (.png, .pdf or .svg; default: --out as .png)")
    return parser.parse_args()


def rows_of(args: argparse.Namespace) -> list[Row]:
    rows = [Row(int(level), 1.0) for level in args.levels.split(",") if level.strip()]
    if args.lesion_free_level > 0:
        rows.append(Row(args.lesion_free_level, 0.0))
    return rows


def main() -> None:
    args = parse_args()
    import tensorflow as tf

    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="hmt_contamination_"))
    report: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
                               f"{platform.python_version()}, TF {tf.__version__}",
                    "settings": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
                    "work": str(work), "rows": []}
    fresh_cache: dict[float, Fresh] = {}
    for row in rows_of(args):
        print(f"level {row.percent} % (tagged lesions {row.lesions:g}) ...", flush=True)
        record = run_level(row, work, args, fresh_cache)
        report["rows"].append(record)
        args.out.write_text(json.dumps(report, indent=2))  # the rows so far, should a later level fail
        print(json.dumps(record, indent=1), flush=True)
    report["smallest_found"] = smallest_found(report["rows"])
    report["seconds"] = round(time.perf_counter() - started, 1)
    args.out.write_text(json.dumps(report, indent=2))
    figure_path = args.figure or args.out.with_suffix(".png")
    contamination_figure(report["rows"], figure_path)
    print(f"wrote {args.out} and {figure_path}\n")
    print(markdown_table(report))


# --------------------------------------------------------------------------- table and figure


def smallest_found(rows: list[dict]) -> dict:
    """Per detector, the smallest contamination (rows with lesions kept, level > 0) at which it finds the shortcut."""
    kept = sorted((r for r in rows if r["shortcut_lesions"] == 1.0 and r["percent"] > 0), key=lambda r: r["percent"])
    return {name: next((r["percent"] for r in kept if r[name].get("finds")), None) for name in DETECTORS}


def _ci(record: dict | None, digits: int = 3) -> str:
    if not record or record.get("value") is None:
        return "n/a"
    low, high = record["ci"]
    span = "" if low is None else f" [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{record['value']:.{digits}f}{span} (n={record['n']})"


def _finds(value: bool | None) -> str:
    return "n/a" if value is None else ("**yes**" if value else "no")


def readouts(row: dict) -> dict[str, str]:
    """Each detector's readout of one row as table text."""
    strategies, energy, deletion, accuracy = (row[name] for name in ("strategies", "energy", "deletion", "accuracy"))
    ari = "n/a" if strategies.get("ari") is None else f"{strategies['ari']:.2f}"
    return {
        "strategies": f"K={strategies.get('k', 'n/a')}, ARI {ari}" + (f" ({strategies['note']})" if "note" in strategies else ""),
        "energy": energy.get("note") or f"covid {_ci(energy['covid'])} vs normal {_ci(energy['normal'])}",
        "contrast": contrast_text(row["contrast"]),
        "deletion": deletion.get("note") or f"{_ci(deletion['difference'])}" + (" (test images)" if deletion["images"].endswith("test images") else ""),
        "accuracy": f"{_ci(accuracy['with_marker'], 2)} / {_ci(accuracy['without_marker'], 2)}; "
                    f"diff {_ci(accuracy['difference'], 2)}",
    }


def contrast_text(record: dict) -> str:
    if "note" in record:
        return record["note"]
    peaks = [c for c in record["clusters"] if c["direction"] == "a > b"]
    best = f"; strongest A > B cluster p {peaks[0]['p']:.4f}, {peaks[0]['extent_percent']:.1f} % of the frame" if peaks else ""
    return (f"{record['n_tagged']} vs {record['n_untagged']} images, {len(record['clusters'])} cluster(s), "
            f"{record['clusters_on_marker']} peaking on the marker{best}")


def markdown_table(report: dict) -> str:
    titles = {"strategies": "strategies (K, ARI with tags)", "energy": "marker energy share",
              "contrast": "contrast tagged vs untagged", "deletion": "deletion: marker drop - random drop",
              "accuracy": "covid recall with / without marker"}
    header = ["contamination", "tagged lesions", "test acc."] + [part for name in DETECTORS for part in (titles[name], "finds")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        text = readouts(row)
        accuracy = "n/a" if row["test_accuracy"] is None else f"{row['test_accuracy']:.3f}"
        cells = [f"{row['percent']} %" + (" (false alarms)" if row["percent"] == 0 else ""),
                 "kept" if row["shortcut_lesions"] == 1.0 else f"x{row['shortcut_lesions']:g}", accuracy]
        cells += [part for name in DETECTORS for part in (text[name], _finds(row[name].get("finds")))]
        lines.append("| " + " | ".join(cells) + " |")
    smallest = report["smallest_found"]
    lines.append("")
    lines.append("smallest contamination each detector finds (tagged lesions kept): " + "; ".join(
        f"{name} {'none' if smallest[name] is None else f'{smallest[name]} %'}"
        for name in DETECTORS))
    return "\n".join(lines)


def _point(record: dict | None) -> tuple[float, float, float]:
    """(value, lower error, upper error) of an interval record, NaN where unknown."""
    if not record or record.get("value") is None:
        return np.nan, 0.0, 0.0
    low, high = record["ci"]
    value = record["value"]
    return value, 0.0 if low is None else value - low, 0.0 if high is None else high - value


def _series(axis, rows: list[dict], pick, colour: str, marker: str, label: str) -> None:
    """One readout against contamination: the rows with lesions kept joined by a line, the lesion-free row as an open
    marker of the same colour, a little to the right."""
    for lesion_free in (False, True):
        chosen = sorted((r for r in rows if (r["shortcut_lesions"] < 1.0) == lesion_free), key=lambda r: r["percent"])
        if not chosen:
            continue
        points = np.array([_point(pick(r)) for r in chosen])
        x = np.array([r["percent"] for r in chosen], float) + (2.0 if lesion_free else 0.0)
        axis.errorbar(x, points[:, 0], yerr=points[:, 1:].T, color=colour, marker=marker, capsize=2,
                      markerfacecolor="white" if lesion_free else colour, linestyle="none" if lesion_free else "-",
                      label=None if lesion_free else label)


def contamination_figure(rows: list[dict], path: Path) -> Path:
    """One panel per detector: its readout against the share of tagged covid images; the sixth panel the key."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    levels = sorted({r["percent"] for r in rows})
    with publication_style():
        figure = Figure(figsize=(COLUMN_WIDTHS["double"], 4.4), layout="constrained")
        axes = figure.subplots(2, 3, sharex=True).ravel()
        strategies, energy, contrast, deletion, accuracy, key = axes
        _series(strategies, rows, lambda r: {"value": r["strategies"].get("ari"), "ci": [None, None]},
                COLOURS["covid"], "o", "ARI of the covid strategies with the tags")
        for r in rows:
            if r["strategies"].get("k") is not None:
                strategies.annotate(f"K={r['strategies']['k']}", (r["percent"] + (2.0 if r["shortcut_lesions"] < 1 else 0.0),
                                    0.97 if r["shortcut_lesions"] == 1.0 else 0.9), ha="center", fontsize=6)
        strategies.axhline(ARI_FINDS, color="0.5", linewidth=0.6, linestyle="--")
        strategies.set(title="1 strategies", ylabel="ARI with the tags (n/a at 0 %)", ylim=(-0.1, 1.05))
        _series(energy, rows, lambda r: r["energy"].get("covid"), COLOURS["covid"], "o", "marker energy: covid members")
        _series(energy, rows, lambda r: r["energy"].get("normal"), COLOURS["normal"], "s", "marker energy: normal members")
        energy.set(title="2 marker energy", ylabel="share of map mass on the marker")
        _series(contrast, rows, lambda r: {"value": r["contrast"].get("max_t"), "ci": [None, None]}, COLOURS["covid"], "s",
                "contrast: largest t, tagged > untagged")
        for r in rows:
            if r["contrast"].get("finds") is not None:
                contrast.annotate("on marker" if r["contrast"]["finds"] else "no", (r["percent"], r["contrast"]["max_t"]),
                                  textcoords="offset points", xytext=(0, 5), ha="center", fontsize=5)
        contrast.set(title="3 contrast tagged vs untagged", ylabel="largest t (max-T test)")
        _series(deletion, rows, lambda r: r["deletion"].get("difference"), COLOURS["covid"], "D",
                "deletion: marker drop - random-region drop")
        deletion.axhline(0.0, color="0.5", linewidth=0.6)
        deletion.set(title="4 deletion", ylabel="covid probability drop difference")
        _series(accuracy, rows, lambda r: r["accuracy"]["with_marker"], COLOURS["with"], "o", "covid recall, with the marker")
        _series(accuracy, rows, lambda r: r["accuracy"]["without_marker"], COLOURS["without"], "^",
                "covid recall, the same images without it")
        accuracy.set(title="5 fresh phantoms", ylabel="covid recall", ylim=(-0.05, 1.05))
        for axis in axes[:5]:
            axis.set_xticks(levels)
            axis.set_xlim(min(levels) - 6, max(levels) + 8)
            axis.tick_params(labelbottom=True)
        figure.supxlabel("covid images carrying the marker (%)")
        handles = [h for axis in (strategies, energy, contrast, deletion, accuracy) for h in axis.get_legend_handles_labels()[0]]
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle="none",
                              label="open marker: tagged images without lesions"))
        key.axis("off")
        key.legend(handles=handles, loc="center", frameon=False, fontsize=6)
        return save_deterministic(figure, path, dpi=200)


if __name__ == "__main__":
    main()

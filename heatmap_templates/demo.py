"""The whole pipeline in one call, offline: the `hmt demo` command.

On the built-in phantom (default) it synthesises a data set, trains the compact ``small`` CNN,
extracts heatmaps of the images the model was trained on, builds a template for every class,
finds the strategies within each class, compares the held-out test images with the templates,
draws the figures, writes the study report and, because the phantom's lesions are known, scores
each disease template against the ground-truth lesion map.
With ``data=`` it runs the same stages on a user's class-folder data (no ground-truth check).

Example::

    summary = run_demo(Path("templates_out/demo"))
    print(summary.ground_truth_auc)
"""
from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from heatmap_templates.data.datasets import Dataset, load_dataset, relative_path
from heatmap_templates.errors import HmtError, Problem, display_path, problems_json
from heatmap_templates.files import ensure_folder, write_text
from heatmap_templates.progress import Progress

if TYPE_CHECKING:  # for annotations only: the stages' modules (TensorFlow among them) load when a stage runs
    from heatmap_templates.analysis.compare import ComparisonRun
    from heatmap_templates.explain.heatmaps import ExtractionSummary
    from heatmap_templates.model.training import TrainResult
    from heatmap_templates.templates.build import BuildSummary

DEFAULT_DEMO_DIR = Path("templates_out/demo")
COMPARED_IMAGES = 8


@dataclass
class DemoSettings:
    """Sizes chosen so the whole demo runs in a few minutes on a 2-core CPU."""

    n_per_class: int = 100
    size: int = 96
    epochs: int = 15
    seed: int = 0
    batch_size: int = 32
    sanity_sample: int = 8  # members per class whose maps the randomisation check recomputes
    deletion_sample: int = 16  # test images of the deletion test
    contrast_permutations: int = 1000


@dataclass
class DemoSummary:
    """Where everything went and what the checks scored."""

    out_dir: Path
    data: Path
    model: Path
    heatmaps: Path
    templates: Path
    figures: list[Path]
    report: Path  # index.html of the study report
    test_accuracy: float | None
    template_members: dict[str, int]
    strategies: dict[str, int]  # the number of strategies found in each class with enough members
    comparisons: list[dict]
    ground_truth_auc: dict[str, dict[str, float | None]] | None
    evidence: dict = field(default_factory=dict)  # the checks' headline numbers: sanity, deletion, zones, contrast
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "data": str(self.data),
            "model": str(self.model),
            "heatmaps": str(self.heatmaps),
            "templates": str(self.templates),
            "figures": [str(path) for path in self.figures],
            "report": str(self.report),
            "test_accuracy": self.test_accuracy,
            "template_members": dict(self.template_members),
            "strategies": dict(self.strategies),
            "comparisons": self.comparisons,
            "ground_truth_auc": self.ground_truth_auc,
            "evidence": self.evidence,
            "seconds": {step: round(value, 1) for step, value in self.seconds.items()},
            "skipped": problems_json(self.skipped),
        }


def _write_manifest(dataset: Dataset, relative_paths: set[str], path: Path) -> Path:
    """A CSV manifest (path,label) of the samples whose root-relative path is in ``relative_paths``."""
    rows = [(os.fspath(sample.path), sample.label) for sample in dataset.samples if relative_path(sample, dataset.root) in relative_paths]
    if not rows:
        raise HmtError(f"{display_path(path)}: no images to write into the manifest")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "label"])
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def run_demo(
    out_dir: str | os.PathLike = DEFAULT_DEMO_DIR,
    *,
    data: str | os.PathLike | None = None,
    settings: DemoSettings | None = None,
    on_step: Callable[[str], None] | None = None,
    progress: Progress | None = None,
) -> DemoSummary:
    """Run every stage of hmt (see the module docstring) and return where the outputs are."""
    from heatmap_templates.present.figures import template_figures
    from heatmap_templates.present.report import write_report

    settings = settings or DemoSettings()
    out_dir = Path(out_dir)
    ensure_folder(out_dir, out_dir)
    step = on_step or (lambda message: None)
    watch = _Stopwatch()

    if data is None:
        data_dir = _synthesise(out_dir / "data", settings, step=step, progress=progress)
        watch.lap("synth")
    else:
        data_dir = Path(data)
    dataset = load_dataset(data_dir)

    result, model_path = _train_small_cnn(dataset, out_dir, settings, step=step, progress=progress)
    watch.lap("train")

    heatmaps_path, extraction = _extract_held_in(dataset, result.info.split, model_path, out_dir, settings,
                                                 step=step, progress=progress)
    watch.lap("heatmaps")

    # On the phantom, templates are built in its canonical frame so they can be scored against the
    # ground-truth lesion maps; on user data the reference is built from the data.
    templates_path, build = _build_every_class(heatmaps_path, out_dir, settings, phantom=data_dir if data is None else None,
                                               step=step, progress=progress)
    watch.lap("templates")

    strategies = _find_strategies(templates_path, heatmaps_path, build.members, step=step, progress=progress)
    watch.lap("strategies")

    ground_truth = None
    if data is None:
        ground_truth = _score_ground_truth(templates_path, data_dir, step=step)
        watch.lap("ground truth")

    evidence = _evidence(dataset, result.info.split, templates_path, heatmaps_path, out_dir, settings,
                         phantom=data_dir if data is None else None, step=step, watch=watch)

    comparison, comparisons = _compare_test_images(dataset, result.info.split, templates_path, model_path, settings, step=step)
    watch.lap("compare")

    step("drawing the figures")
    figures = template_figures(templates_path, out_dir / "figures", formats=("png", "pdf"), dpi=200)
    watch.lap("figures")

    step("writing the report")
    report = write_report(templates_path, out_dir / "report", heatmaps=heatmaps_path, batch_size=settings.batch_size, progress=progress)
    watch.lap("report")

    return DemoSummary(
        out_dir=out_dir,
        data=data_dir,
        model=model_path,
        heatmaps=heatmaps_path,
        templates=templates_path,
        figures=figures.files,
        report=report.index,
        test_accuracy=None if result.test_report is None else float(result.test_report["accuracy"]),
        template_members=build.members,
        strategies=strategies,
        comparisons=comparisons,
        ground_truth_auc=ground_truth,
        evidence=evidence,
        seconds=watch.seconds,
        skipped=[*result.problems, *extraction.skipped, *comparison.skipped],
    )


class _Stopwatch:
    """The seconds of each stage (the summary's ``seconds``), each measured from the end of the one before."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._clock = time.perf_counter()

    def lap(self, name: str) -> None:
        """Record the time since the last lap under ``name``, so the stages' times add up to the whole run."""
        now = time.perf_counter()
        self.seconds[name] = now - self._clock
        self._clock = now


def _synthesise(data_dir: Path, settings: DemoSettings, *, step: Callable[[str], None], progress: Progress | None) -> Path:
    """Write the phantom data set (four classes, known lesions) the demo runs on when no data is given; its folder."""
    from heatmap_templates.synth import synthesize_dataset

    step(f"synthesising {4 * settings.n_per_class} phantoms at {settings.size} px into {data_dir}")
    synthesize_dataset(data_dir, n_per_class=settings.n_per_class, size=settings.size, seed=settings.seed, progress=progress)
    return data_dir


def _train_small_cnn(dataset: Dataset, out_dir: Path, settings: DemoSettings, *, step: Callable[[str], None],
                     progress: Progress | None) -> tuple[TrainResult, Path]:
    """Train the compact CNN and write it with its companions (history, evaluation, figures): the model every later stage uses."""
    from heatmap_templates.model.model_file import save_model
    from heatmap_templates.model.training import TrainConfig, train
    from heatmap_templates.model.training_files import save_training_outputs
    from heatmap_templates.present.figures import training_figures

    step(f"training the small CNN on {len(dataset.samples)} images ({', '.join(dataset.class_names)})")
    config = TrainConfig(backbone="small", input_size=min(settings.size, 128), epochs=settings.epochs,
                         seed=settings.seed, batch_size=settings.batch_size)
    result = train(dataset, config, progress=progress)
    model_path = out_dir / "model.keras"
    save_model(result.model, result.info, model_path)
    save_training_outputs(result, model_path)
    training_figures(result, model_path)
    return result, model_path


def _extract_held_in(dataset: Dataset, split: dict[str, list[str]], model_path: Path, out_dir: Path, settings: DemoSettings, *,
                     step: Callable[[str], None], progress: Progress | None) -> tuple[Path, ExtractionSummary]:
    """Heatmaps of the training and validation images only, so the test images stay unseen by the templates."""
    from heatmap_templates.explain.heatmaps import extract_heatmaps

    step("extracting Grad-CAM heatmaps of the training images")
    held_in = set(split.get("train", [])) | set(split.get("val", []))
    manifest = _write_manifest(dataset, held_in, out_dir / "templates_manifest.csv")
    heatmaps_path = out_dir / "heatmaps.h5"
    heatmaps_path.unlink(missing_ok=True)  # a fresh demo run trains a new model: an earlier run's maps are not its maps
    extraction = extract_heatmaps(model_path, manifest, heatmaps_path, batch_size=settings.batch_size, progress=progress)
    return heatmaps_path, extraction


def _build_every_class(heatmaps_path: Path, out_dir: Path, settings: DemoSettings, *, phantom: Path | None,
                       step: Callable[[str], None], progress: Progress | None) -> tuple[Path, BuildSummary]:
    """A fresh templates file with every class's template (in the phantom's canonical frame when ``phantom`` is its folder)."""
    from heatmap_templates.synth import CANONICAL_CHEST_FILE, GROUND_TRUTH_DIR
    from heatmap_templates.templates.build import BuildConfig, build_templates

    step("registering heatmaps and building a template for every class")
    templates_path = out_dir / "templates.h5"
    if templates_path.exists():
        templates_path.unlink()  # a fresh demo run rebuilds its templates rather than adding to them
    reference = None if phantom is None else str(phantom / GROUND_TRUTH_DIR / CANONICAL_CHEST_FILE)
    build = build_templates(heatmaps_path, None, templates_path,
                            config=BuildConfig(batch_size=settings.batch_size, reference=reference), progress=progress)
    return templates_path, build


def _find_strategies(templates_path: Path, heatmaps_path: Path, members: dict[str, int], *,
                     step: Callable[[str], None], progress: Progress | None) -> dict[str, int]:
    """The number of strategies found in each class with enough members to cluster (stored in the templates file)."""
    from heatmap_templates.analysis.strategies import MIN_STRATEGY_MEMBERS
    from heatmap_templates.analysis.strategy_search import add_strategies

    step("finding the strategies within each class")
    eligible = [name for name, count in members.items() if count >= MIN_STRATEGY_MEMBERS]
    return {name: result.k for name, result in add_strategies(templates_path, heatmaps_path, eligible, progress=progress).items()} \
        if eligible else {}


def _evidence(dataset: Dataset, split: dict[str, list[str]], templates_path: Path, heatmaps_path: Path, out_dir: Path,
              settings: DemoSettings, *, phantom: Path | None, step: Callable[[str], None], watch: _Stopwatch) -> dict:
    """The checks a reviewer asks for, at small settings, stored in the templates file so the report shows every
    section: zones, a contrast (virus > normal where both exist), model randomisation, and the deletion test."""
    from heatmap_templates.analysis.compare import evaluate_templates
    from heatmap_templates.analysis.contrast import ContrastSettings, run_contrast
    from heatmap_templates.analysis.sanity import run_sanity
    from heatmap_templates.analysis.zone_report import run_zones
    from heatmap_templates.analysis.zones import LUNG_ZONES, ZONE_NAMES
    from heatmap_templates.templates.templates_file import read_templates, save_check, save_contrast, save_zones

    evidence: dict = {}
    step("zones: where each template's energy lies")
    lungs = body_mask = None
    built = read_templates(templates_path)
    frame = built.reference_image
    if phantom is not None and frame is not None:
        from heatmap_templates.synth.ground_truth import canonical_anatomy

        lungs, body_mask = canonical_anatomy(phantom, frame.shape)
    record, atlas = run_zones(templates_path, heatmaps_path, seed=settings.seed, lungs=lungs, body=body_mask)
    save_zones(templates_path, record, atlas.labels, ZONE_NAMES, command="hmt demo")
    evidence["zones_lung_energy"] = {name: round(sum(entry["zones"][z]["share"] for z in LUNG_ZONES), 3)
                                     for name, entry in record["classes"].items()}
    watch.lap("zones")
    classes = set(built.templates)
    if {"virus", "normal"} <= {sample.label for sample in dataset.samples} and "virus" in classes:
        step("contrast: virus > normal, pixel by pixel")
        contrast = run_contrast(templates_path, "images:virus", "images:normal", heatmaps=heatmaps_path,
                                settings=ContrastSettings(tail="greater", permutations=settings.contrast_permutations, seed=settings.seed))
        test = contrast.test
        save_contrast(templates_path, contrast.name, contrast.to_dict(),
                      {"t": test.t, "p": test.p, "p_uncorrected": test.p_uncorrected, "effect": test.effect}, command="hmt demo")
        evidence["contrast"] = {"name": contrast.name, "clusters": len(contrast.clusters)}
        watch.lap("contrast")
    step("model randomisation (sanity)")
    sanity = run_sanity(templates_path, heatmaps_path, sample=settings.sanity_sample, seed=settings.seed)
    save_check(templates_path, "sanity", sanity.to_dict(), command="hmt demo")
    evidence["sanity_flagged"] = list(sanity.flagged)
    watch.lap("sanity")
    step("deletion test (faithfulness) on held-out test images")
    manifest = _write_manifest(dataset, set(split.get("test", [])), out_dir / "test.csv")
    body = None if phantom is None else phantom / "ground_truth" / "body"
    report = evaluate_templates(templates_path, manifest, faithfulness=True, deletion_sample=settings.deletion_sample,
                                body_masks=body if body is not None and body.is_dir() else None, seed=settings.seed)
    if report.faithfulness is not None:
        save_check(templates_path, "faithfulness", report.faithfulness | {"data": str(manifest)}, command="hmt demo")
        evidence["template_vs_smooth"] = report.faithfulness.get("ratios", {}).get("template_vs_smooth")
    watch.lap("deletion")
    return evidence


def _score_ground_truth(templates_path: Path, data_dir: Path, *, step: Callable[[str], None]) -> dict[str, dict]:
    """How well each template finds the phantom's known lesions (pixel ROC AUC per class): the demo's own check,
    stored in the templates file with the lesion maps at the templates' size, so the report shows each template beside
    the lesions it should find (the report reads the file, never the phantom)."""
    from heatmap_templates.synth import GROUND_TRUTH_CHECK, ground_truth_check
    from heatmap_templates.templates.templates_file import save_check

    step("scoring the templates against the phantom's ground-truth lesion maps")
    record, maps = ground_truth_check(templates_path, data_dir)
    save_check(templates_path, GROUND_TRUTH_CHECK, record, maps=maps, command="hmt demo")
    return {name: {key: entry.get(key) for key in ("members", "auc_frame", "auc_lungs")} for name, entry in record["classes"].items()}


def _compare_test_images(dataset: Dataset, split: dict[str, list[str]], templates_path: Path, model_path: Path,
                         settings: DemoSettings, *, step: Callable[[str], None]) -> tuple[ComparisonRun, list[dict]]:
    """Compare a few held-out test images, spread over the split, with the templates; the run and its rows with true labels."""
    from heatmap_templates.analysis.compare import Comparer

    labels = {relative_path(sample, dataset.root): sample.label for sample in dataset.samples}
    test_split = sorted(split.get("test", []))
    chosen = test_split[:: max(1, len(test_split) // COMPARED_IMAGES)][:COMPARED_IMAGES]
    step(f"comparing {len(chosen)} held-out test images with the templates")
    comparison = Comparer(templates_path, model=model_path).compare([dataset.root / path for path in chosen], batch_size=settings.batch_size)
    comparisons = [{"true": labels.get(chosen[item.position]), **item.to_dict()} for item in comparison.results]
    return comparison, comparisons

"""hmt: heatmap-template biomarker analysis for chest X-rays.

The package is in wings that follow the data's path, each importing only the wings below it (an
import-linter contract in pyproject.toml checks this; docs/architecture.md draws it):

- :mod:`.data` (decoding, data sets, image -> model input), :mod:`.model` (backbones, heads, training,
  evaluation), :mod:`.explain` (CAM engine and methods, extraction), :mod:`.templates` (registration,
  normalisation, statistics, the build and the templates file), :mod:`.analysis` (similarity, scoring,
  strategies, sanity, faithfulness), :mod:`.present` (figures, report);
- below :mod:`.data`: :mod:`.store` (HDF5 plumbing, the heatmap store, plain records), :mod:`.numeric`
  (Pearson, metrics, resampling) and the core (errors, registry, files, progress, executors);
- above :mod:`.present`: :mod:`.synth` (the phantom and its ground truth, scored with the stages below) and
  :mod:`.demo`.

The public API below is re-exported here lazily (PEP 562): ``import heatmap_templates`` imports neither
TensorFlow nor any wing; ``heatmap_templates.CamEngine`` imports the CAM engine on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from heatmap_templates._version import __version__
from heatmap_templates.errors import BadFileError, BadImageError, HmtError

# Public name -> the module (below heatmap_templates) that defines it.
_EXPORTS: dict[str, str] = {
    # data
    "load_dataset": "data.datasets", "split_dataset": "data.datasets", "check_dataset": "data.datasets",
    "decode_image": "data.decode", "load_model_image": "data.preprocess", "to_model_input": "data.preprocess",
    # model
    "TrainConfig": "model.training", "train": "model.training", "ModelInfo": "model.model_file",
    "save_model": "model.model_file", "load_model": "model.model_file", "evaluate": "model.evaluation",
    # explain
    "CamEngine": "explain.cam", "engine_for": "explain.engine_choice", "extract": "explain.heatmaps",
    "extract_heatmaps": "explain.heatmaps",
    # store
    "HeatmapWriter": "store", "HeatmapReader": "store", "open_heatmaps": "store", "HeatmapSettings": "store.settings",
    # templates
    "Registrar": "templates.registration", "prepare_maps": "templates.prepare", "ClassAccumulator": "templates.accumulator",
    "BuildConfig": "templates.build", "build_templates": "templates.build", "merge_template_files": "templates.build",
    "TemplateFile": "templates.templates_file", "TemplateSettings": "templates.template_settings",
    "read_templates": "templates.templates_file",
    "save_templates": "templates.templates_file",
    # analysis
    "TemplateScorer": "analysis.scoring", "Comparer": "analysis.compare", "evaluate_templates": "analysis.compare",
    "StrategySettings": "analysis.strategies", "find_strategies": "analysis.strategies",
    "add_strategies": "analysis.strategy_search", "run_sanity": "analysis.sanity", "run_deletion": "analysis.faithfulness",
    "ContrastSettings": "analysis.contrast", "run_contrast": "analysis.contrast", "permutation_test": "numeric.permutation",
    "bootstrap_interval": "numeric.bootstrap", "mean_interval": "numeric.bootstrap",
    # present
    "template_figures": "present.figures", "comparison_figure": "present.figures", "write_report": "present.report",
    # phantom and demo
    "synthesize_dataset": "synth", "ground_truth_localisation": "synth", "run_demo": "demo",
    # registries: every option that grows
    "INTENSITIES": "data.decode", "UNCERTAIN": "data.datasets", "PREPROCESSING": "data.preprocess",
    "BACKBONES": "model.backbones", "HEADS": "model.heads", "SCHEDULES": "model.recipe",
    "ATTENTION_PRIORS": "model.attention_prior",
    "METHODS": "explain.cam_methods", "SCORES": "explain.scores", "REGISTRATIONS": "templates.registration",
    "NORMALISATIONS": "templates.normalisation", "STATISTICS": "templates.statistics", "INCLUDES": "templates.members",
    "SIMILARITIES": "analysis.similarity", "VARIANTS": "analysis.sanity", "RANKINGS": "analysis.faithfulness",
    "REMOVALS": "analysis.faithfulness", "LESIONS": "synth.lesions", "SHORTCUTS": "synth.shortcuts",
    "GROUP_KINDS": "analysis.contrast_groups", "TAILS": "numeric.permutation", "CORRECTIONS": "numeric.permutation",
}
# The wings and packages, reachable as attributes (heatmap_templates.templates) without an import of their own.
_SUBPACKAGES = ("data", "model", "explain", "templates", "analysis", "present", "store", "numeric", "synth")

__all__ = ["__version__", "HmtError", "BadImageError", "BadFileError", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562) and cache the name here."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__, *_SUBPACKAGES})


if TYPE_CHECKING:  # what the type checker and editors see; nothing of this runs
    from heatmap_templates import analysis, data, explain, model, numeric, present, store, synth, templates
    from heatmap_templates.analysis.compare import Comparer, evaluate_templates
    from heatmap_templates.analysis.contrast import ContrastSettings, run_contrast
    from heatmap_templates.analysis.contrast_groups import GROUP_KINDS
    from heatmap_templates.analysis.faithfulness import RANKINGS, REMOVALS, run_deletion
    from heatmap_templates.analysis.sanity import VARIANTS, run_sanity
    from heatmap_templates.analysis.scoring import TemplateScorer
    from heatmap_templates.analysis.similarity import SIMILARITIES
    from heatmap_templates.analysis.strategies import StrategySettings, find_strategies
    from heatmap_templates.analysis.strategy_search import add_strategies
    from heatmap_templates.data.datasets import UNCERTAIN, check_dataset, load_dataset, split_dataset
    from heatmap_templates.data.decode import INTENSITIES, decode_image
    from heatmap_templates.data.preprocess import PREPROCESSING, load_model_image, to_model_input
    from heatmap_templates.demo import run_demo
    from heatmap_templates.explain.cam import CamEngine
    from heatmap_templates.explain.cam_methods import METHODS
    from heatmap_templates.explain.engine_choice import engine_for
    from heatmap_templates.explain.heatmaps import extract, extract_heatmaps
    from heatmap_templates.explain.scores import SCORES
    from heatmap_templates.model.attention_prior import ATTENTION_PRIORS
    from heatmap_templates.model.backbones import BACKBONES
    from heatmap_templates.model.evaluation import evaluate
    from heatmap_templates.model.heads import HEADS
    from heatmap_templates.model.model_file import ModelInfo, load_model, save_model
    from heatmap_templates.model.recipe import SCHEDULES
    from heatmap_templates.model.training import TrainConfig, train
    from heatmap_templates.numeric.bootstrap import bootstrap_interval, mean_interval
    from heatmap_templates.numeric.permutation import CORRECTIONS, TAILS, permutation_test
    from heatmap_templates.present.figures import comparison_figure, template_figures
    from heatmap_templates.present.report import write_report
    from heatmap_templates.store import HeatmapReader, HeatmapWriter, open_heatmaps
    from heatmap_templates.store.settings import HeatmapSettings
    from heatmap_templates.synth import ground_truth_localisation, synthesize_dataset
    from heatmap_templates.synth.lesions import LESIONS
    from heatmap_templates.synth.shortcuts import SHORTCUTS
    from heatmap_templates.templates.accumulator import ClassAccumulator
    from heatmap_templates.templates.build import BuildConfig, build_templates, merge_template_files
    from heatmap_templates.templates.members import INCLUDES
    from heatmap_templates.templates.normalisation import NORMALISATIONS
    from heatmap_templates.templates.prepare import prepare_maps
    from heatmap_templates.templates.registration import REGISTRATIONS, Registrar
    from heatmap_templates.templates.statistics import STATISTICS
    from heatmap_templates.templates.template_settings import TemplateSettings
    from heatmap_templates.templates.templates_file import TemplateFile, read_templates, save_templates

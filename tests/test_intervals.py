"""95 % intervals beside the reported numbers (accuracies, AUCs, F1s, template match, separation, lung-field energy),
each against an independent reference: SciPy's percentile bootstrap, the number recomputed by brute force on the
resampled rows, the template's bootstrap replicates recomputed by hand, hand-computed cases; and the reports keep
every earlier key with its value."""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import stats

from heatmap_templates.analysis.compare import _energy_report, separation_report, template_match_report
from heatmap_templates.data.datasets import Sample, patient_groups
from heatmap_templates.numeric import metrics
from heatmap_templates.numeric.bootstrap import bootstrap_interval
from heatmap_templates.present.report.html import classification_html
from heatmap_templates.templates.accumulator import ClassAccumulator, Member
from heatmap_templates.templates.statistics import bootstrap_weights
from heatmap_templates.templates.templates_file import read_templates, save_templates
from hmt_cli.train import report_lines

NAMES = ["bacteria", "covid", "normal"]
NEW_KEYS = ("_ci", "_dropped_resamples")


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (rounded: tied scores) that favour the true class, and the labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(NAMES), n)
    probs = rng.dirichlet(np.ones(len(NAMES)), n)
    probs[np.arange(n), labels] += rng.uniform(0.0, 0.6, n)
    return np.round(probs / probs.sum(axis=1, keepdims=True), 2), labels


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _class_auc(k: int, probs: np.ndarray, labels: np.ndarray) -> float:
    return _or_nan(metrics.roc_auc(probs[:, k], labels == k))


def _macro_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    defined = [a for a in metrics.one_vs_rest_auc(probs, labels) if a is not None]
    return float(np.mean(defined)) if defined else math.nan


def _macro_f1(probs: np.ndarray, labels: np.ndarray) -> float:
    matrix = metrics.confusion_matrix(labels, probs.argmax(axis=1), probs.shape[1])
    present = matrix.sum(axis=1) > 0
    return float(metrics.precision_recall_f1(matrix)[2][present].mean())


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == labels))


def _reading_auc(group: list[int], probs: np.ndarray, labels: np.ndarray) -> float:
    """AUC of the summed probability of the classes in ``group`` for an image being in the group."""
    return _or_nan(metrics.roc_auc(probs[:, group].sum(axis=1), np.isin(labels, group)))


def _abnormal_argmax_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean((probs.argmax(axis=1) != 2) == (labels != 2)))  # class 2 is normal


# --------------------------------------------------------------------------- classification reports


def test_the_accuracy_interval_matches_scipys_percentile_bootstrap() -> None:
    probs, labels = _data(150)
    report = metrics.classification_report(probs, labels, NAMES)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    theirs = stats.bootstrap((correct,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                             rng=np.random.default_rng(1)).confidence_interval
    low, high = report["accuracy_ci"]
    # two Monte Carlo estimates of the same percentiles (and steps of 1/150): equal within 0.02
    assert low == pytest.approx(theirs.low, abs=0.02) and high == pytest.approx(theirs.high, abs=0.02)
    assert low <= report["accuracy"] <= high
    assert report["bootstrap"] == {"confidence": 0.95, "resamples": 2000, "method": "percentile bootstrap", "unit": "image",
                                   "units": 150}


@pytest.mark.parametrize("by_patient", [False, True])
def test_every_classification_interval_equals_the_number_recomputed_on_the_resampled_rows(by_patient: bool) -> None:
    """The report computes a resample's AUC and F1 from weights on the rows; here each is recomputed from the resampled
    rows themselves (roc_auc's ranking, a new confusion matrix), over the same seeded resamples of the shared helper."""
    probs, labels = _data(60, seed=3)
    groups = [f"p{i // 3}" for i in range(60)] if by_patient else None
    report = metrics.classification_report(probs, labels, NAMES, groups=groups)

    def reference(statistic) -> list:
        return bootstrap_interval(statistic, probs, labels, groups=groups).ci

    for k, name in enumerate(NAMES):
        assert report["per_class"][name]["auc_ci"] == pytest.approx(reference(partial(_class_auc, k)), abs=1e-12)
        assert report["per_class"][name]["n"] == 60
    assert report["macro"]["auc_ci"] == pytest.approx(reference(_macro_auc), abs=1e-12)
    assert report["macro"]["f1_ci"] == pytest.approx(reference(_macro_f1), abs=1e-12)
    assert report["accuracy_ci"] == pytest.approx(reference(_accuracy), abs=1e-12)
    covid, abnormal = report["binary_readings"]["covid_vs_noncovid"], report["binary_readings"]["normal_vs_abnormal"]
    assert covid["summed_probability"]["auc_ci"] == pytest.approx(reference(partial(_reading_auc, [1])), abs=1e-12)
    assert abnormal["summed_probability"]["auc_ci"] == pytest.approx(reference(partial(_reading_auc, [0, 1])), abs=1e-12)
    assert abnormal["argmax"]["accuracy_ci"] == pytest.approx(reference(_abnormal_argmax_accuracy), abs=1e-12)
    assert report["bootstrap"]["unit"] == ("patient" if by_patient else "image")
    assert report["bootstrap"]["units"] == (20 if by_patient else 60)


def test_a_patients_images_move_together() -> None:
    """Three identical images per patient: resampling patients is resampling one image per patient (the same interval
    exactly), while resampling the images as if independent gives a narrower, overconfident interval."""
    probs, labels = _data(40, seed=5)
    tripled_probs, tripled_labels = np.repeat(probs, 3, axis=0), np.repeat(labels, 3)
    patients = np.repeat([f"patient-{i}" for i in range(40)], 3).tolist()
    grouped = metrics.classification_report(tripled_probs, tripled_labels, NAMES, groups=patients)
    single = metrics.classification_report(probs, labels, NAMES)
    naive = metrics.classification_report(tripled_probs, tripled_labels, NAMES)
    assert grouped["accuracy_ci"] == pytest.approx(single["accuracy_ci"], abs=1e-12)
    assert grouped["macro"]["auc_ci"] == pytest.approx(single["macro"]["auc_ci"], abs=1e-12)
    for name in NAMES:
        assert grouped["per_class"][name]["auc_ci"] == pytest.approx(single["per_class"][name]["auc_ci"], abs=1e-12)
    width = np.diff(grouped["accuracy_ci"])[0]
    assert np.diff(naive["accuracy_ci"])[0] < 0.8 * width


def test_patient_groups_give_unknown_patients_their_own_unit() -> None:
    samples = [Sample(Path("a.png"), "x", "p1"), Sample(Path("b.png"), "x", "p1"), Sample(Path("c.png"), "x", None),
               Sample(Path("d.png"), "x", None)]
    groups = patient_groups(samples)
    assert groups is not None and groups[0] == groups[1] and len(set(groups)) == 3
    assert patient_groups([Sample(Path("a.png"), "x", "p1"), Sample(Path("b.png"), "x", None)]) is None  # all singletons


def test_constant_results_give_a_zero_width_interval() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6]] * 3)
    labels = np.array([0, 1, 0, 1] * 3)
    report = metrics.classification_report(probs, labels, ["a", "b"])
    assert report["accuracy_ci"] == [1.0, 1.0] and report["macro"]["f1_ci"] == [1.0, 1.0]
    assert report["per_class"]["a"]["auc_ci"] == [1.0, 1.0]  # every defined resample separates perfectly
    match = template_match_report(["a", "b", "a"], ["a", "b", "a"], ["a", "b"])
    assert match["accuracy_ci"] == [1.0, 1.0] and match["per_class"]["a"]["accuracy_ci"] == [1.0, 1.0]
    assert match["per_class"]["b"]["accuracy_ci"] in (None, [None, None])  # one image has no spread: no interval


def test_resamples_without_a_class_are_dropped_and_counted() -> None:
    """One positive in eight images: about (7/8)^8 = 34 % of the resamples lack it and have no AUC."""
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.7, 0.3], [0.95, 0.05], [0.55, 0.45], [0.5, 0.5]])
    labels = np.array([0, 0, 1, 0, 0, 0, 0, 0])
    report = metrics.classification_report(probs, labels, ["a", "b"])
    row = report["per_class"]["b"]
    reference = bootstrap_interval(partial(_class_auc, 1), probs, labels)
    assert row["auc_dropped_resamples"] == reference.dropped and 0.30 < reference.dropped / 2000 < 0.39
    assert row["auc_ci"] == pytest.approx(reference.ci, abs=1e-12) and row["auc"] == 1.0
    assert "accuracy_dropped_resamples" not in report  # an accuracy is defined on every resample
    undefined = metrics.classification_report(probs[:2], labels[:2], ["a", "b"])  # no positive at all: no AUC, no interval
    assert undefined["per_class"]["b"]["auc"] is None and undefined["per_class"]["b"]["auc_ci"] is None
    assert "auc_dropped_resamples" not in undefined["per_class"]["b"]


def test_the_reports_keep_every_earlier_key_and_value() -> None:
    """Without the added keys, the report is the one the metrics gave before the intervals (built here from the
    module's parts: confusion matrix, precision/recall/F1, one-vs-rest AUC, binary readings)."""
    probs, labels = _data(30, seed=2)
    names = ["covid", "normal", "virus"]
    report = metrics.classification_report(probs, labels, names)
    matrix = metrics.confusion_matrix(labels, probs.argmax(axis=1), 3)
    precision, recall, f1 = metrics.precision_recall_f1(matrix)
    aucs = metrics.one_vs_rest_auc(probs, labels)
    earlier = {
        "n": 30, "accuracy": float(np.trace(matrix) / 30), "class_names": names, "confusion_matrix": matrix.tolist(),
        "per_class": {name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                             "support": int(matrix[k].sum()), "auc": aucs[k]} for k, name in enumerate(names)},
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean()),
                  "auc": float(np.mean(aucs))},
        "binary_readings": metrics.binary_readings(probs, labels, names),
    }
    assert _without_added(report) == earlier
    match = template_match_report(["a", "a", "b", "c"], ["a", "b", "b", "a"], ["a", "b"])
    assert _without_added(match) == {"n": 3, "correct": 2, "accuracy": 2 / 3, "per_class": {
        "a": {"n": 2, "correct": 1, "accuracy": 0.5}, "b": {"n": 1, "correct": 1, "accuracy": 1.0}}}
    separation = separation_report([0.9, 0.8, 0.3, 0.5], [True, True, False, False], [False, None, True, False])
    assert _without_added(separation) == {"auc": 1.0, "auc_undefined_reason": None, "n_correct": 2, "n_misclassified": 2,
                                          "atypical_share_correct": 0.0, "atypical_share_misclassified": 0.5}


def _without_added(record: dict) -> dict:
    """A report without the keys the intervals added (``*_ci``, ``*_dropped_resamples``, ``bootstrap``, and the ``n``
    beside per-class and macro numbers or a separation AUC)."""
    added_n = "support" in record or "precision" in record or "n_correct" in record
    return {key: _without_added(value) if isinstance(value, dict) else value
            for key, value in record.items()
            if not key.endswith(NEW_KEYS) and key != "bootstrap" and not (key == "n" and added_n)}


def test_multi_label_intervals_equal_the_numbers_recomputed_over_each_findings_known_images() -> None:
    rng = np.random.default_rng(4)
    findings = rng.integers(-1, 2, size=(50, 3))
    probs = np.round(np.clip(0.5 * (findings == 1) + rng.uniform(0.0, 0.6, (50, 3)), 0, 1), 2)
    report = metrics.multilabel_report(probs, findings, ["a", "b", "c"], threshold=0.5)

    def finding_auc(k: int, p: np.ndarray, f: np.ndarray) -> float:
        known = f[:, k] >= 0
        return _or_nan(metrics.roc_auc(p[known, k], f[known, k] == 1)) if known.any() else math.nan

    def macro_f1(p: np.ndarray, f: np.ndarray) -> float:
        return float(np.mean([metrics.binary_metrics(p[f[:, k] >= 0, k] >= 0.5, f[f[:, k] >= 0, k] == 1)["f1"] for k in range(3)]))

    def macro_auc(p: np.ndarray, f: np.ndarray) -> float:
        defined = [a for a in (finding_auc(k, p, f) for k in range(3)) if np.isfinite(a)]
        return float(np.mean(defined)) if defined else math.nan

    for k, name in enumerate("abc"):
        reference = bootstrap_interval(partial(finding_auc, k), probs, findings)
        assert report["per_finding"][name]["auc_ci"] == pytest.approx(reference.ci, abs=1e-12)
    assert report["macro"]["f1_ci"] == pytest.approx(bootstrap_interval(macro_f1, probs, findings).ci, abs=1e-12)
    assert report["macro"]["auc_ci"] == pytest.approx(bootstrap_interval(macro_auc, probs, findings).ci, abs=1e-12)


# --------------------------------------------------------------------------- templates against a labelled set


def test_template_match_and_separation_intervals_resample_images_or_patients() -> None:
    rng = np.random.default_rng(6)
    truths = list(rng.choice(["a", "b"], 40))
    best = [t if rng.random() < 0.7 else "b" for t in truths]
    patients = [f"p{i // 2}" for i in range(40)]
    match = template_match_report(truths, best, ["a", "b"], groups=patients)
    hits = np.array([b == t for b, t in zip(best, truths, strict=True)], np.float64)
    assert match["accuracy_ci"] == pytest.approx(bootstrap_interval(np.mean, hits, groups=patients).ci, abs=1e-12)
    rows = [i for i, t in enumerate(truths) if t == "a"]
    expected = bootstrap_interval(np.mean, hits[rows], groups=[patients[i] for i in rows]).ci
    assert match["per_class"]["a"]["accuracy_ci"] == pytest.approx(expected, abs=1e-12)

    scores = np.round(rng.random(40), 1)
    correct = rng.random(40) < 0.6
    separation = separation_report(scores, correct, [None] * 40, groups=patients)
    reference = bootstrap_interval(lambda s, c: _or_nan(metrics.roc_auc(s, c)), scores, correct, groups=patients)
    assert separation["auc_ci"] == pytest.approx(reference.ci, abs=1e-12) and separation["n"] == 40
    undefined = separation_report([0.9, 0.8], [True, True], [False, False])
    assert undefined["auc"] is None and undefined["auc_ci"] is None


def _templates(path: Path, shape: tuple[int, int], replicates: dict[str, int], maps: np.ndarray) -> list[Member]:
    settings = {"model_sha256": "cd" * 32, "class_names": list(replicates), "layer": "block4_relu", "cam_method": "gradcam",
                "score": "logit", "input_size": list(shape), "registration": "affine", "normalisation": "minmax"}
    members = [Member(f"img_{i}.png", f"{i:064x}", 0.9, 1.0, "affine") for i in range(len(maps))]
    templates = []
    for name, count in replicates.items():
        accumulator = ClassAccumulator(name, shape, pca_size=4, n_components=2, bootstrap_replicates=count)
        accumulator.add(maps, members, normalised=True)
        templates.append(accumulator.finalize())
    lungs = np.zeros(shape, np.uint8)
    lungs[2:8, 2:6] = 1
    save_templates(path, settings, templates, reference_image=np.zeros(shape, np.float32), lung_mask=lungs)
    return members


def test_lung_field_energy_intervals_over_images_and_over_the_templates_bootstrap_replicates(tmp_path: Path) -> None:
    """Images: the mean's interval against SciPy's; a template: the percentiles of the energies of its replicate means,
    rebuilt here from each member's Poisson weights; a template without replicates: no interval, and a note."""
    shape = (10, 8)
    maps = np.random.default_rng(7).gamma(2.0, size=(15, *shape))
    members = _templates(tmp_path / "t.h5", shape, {"a": 60, "b": 0}, maps)
    file = read_templates(tmp_path / "t.h5")
    lungs = np.asarray(file.lung_mask, bool)
    comparer = SimpleNamespace(class_names=["a", "b"], template_classes=["a", "b"], file=file, lung_mask=lungs)
    energies = np.random.default_rng(8).uniform(0.3, 0.7, 80)
    results = [SimpleNamespace(lung_field_energy=float(e)) for e in energies]
    report = _energy_report(comparer, results, ["a"] * 80)

    theirs = stats.bootstrap((energies,), np.mean, n_resamples=20000, method="percentile",
                             rng=np.random.default_rng(2)).confidence_interval
    low, high = report["by_true_class"]["a"]["mean_ci"]
    assert low == pytest.approx(theirs.low, abs=0.006) and high == pytest.approx(theirs.high, abs=0.006)
    assert report["by_true_class"]["b"] == {"n": 0, "mean": None, "median": None, "mean_ci": None}

    weights = np.stack([bootstrap_weights(member.key, 60) for member in members])  # (members, replicates)
    used = weights.sum(axis=0) > 0
    means = np.einsum("mb,mhw->bhw", weights[:, used], maps) / weights[:, used].sum(axis=0)[:, None, None]
    by_hand = [(m[lungs].sum() / m.sum()) for m in means]  # the maps are positive: energy = share of the mass inside
    assert report["templates_ci"]["a"] == pytest.approx(list(np.percentile(by_hand, [2.5, 97.5])), rel=1e-9)
    assert report["templates_replicates"] == {"a": int(used.sum()), "b": 0} and report["templates_n"] == {"a": 15, "b": 15}
    assert report["templates_ci"]["a"][0] <= report["templates"]["a"] <= report["templates_ci"]["a"][1]
    assert report["templates_ci"]["b"] is None and "b" in report["templates_ci_note"]


# --------------------------------------------------------------------------- what people read


def test_the_cli_and_the_page_show_the_intervals_beside_unchanged_numbers() -> None:
    probs, labels = _data(40, seed=9)
    report = metrics.classification_report(probs, labels, NAMES)
    low, high = report["accuracy_ci"]
    assert f"accuracy {report['accuracy']:.3f} [{low:.3f}, {high:.3f}] on 40 images" in report_lines(report)[0]
    page = classification_html(report, "eval")
    assert f'data-key="eval-accuracy">{report["accuracy"]:.3f}</span> <span class="ci" data-key="eval-accuracy-ci">' \
           f"[{low:.3f}, {high:.3f}]</span>" in page
    auc, (auc_low, auc_high) = report["per_class"]["covid"]["auc"], report["per_class"]["covid"]["auc_ci"]
    assert f'data-key="eval-covid-auc">{auc:.3f}<' in page
    assert f'data-key="eval-covid-auc-ci">{auc:.3f} [{auc_low:.3f}, {auc_high:.3f}]<' in page

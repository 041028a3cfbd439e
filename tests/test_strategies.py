"""Strategies within a class: the clustering against hand-made groups and scikit-learn's adjusted Rand index,
storage (templates schema 4), the command, figures and compare, and the planted-shortcut ground truth."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt
from sklearn.metrics import adjusted_rand_score

from heatmap_templates.analysis.strategies import (
    StrategySettings,
    closest_strategy,
    eigengap_k,
    find_strategies,
    stability,
)
from heatmap_templates.analysis.strategy_search import add_strategies
from heatmap_templates.store import TEMPLATES
from heatmap_templates.synth import read_shortcuts
from heatmap_templates.templates.build import BuildConfig, build_templates
from heatmap_templates.templates.templates_file import read_strategies, read_templates

SIDE = 48


def _blob_groups(per_group: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Maps in three groups: a Gaussian blob at one of three places (jittered) on a little noise; the group of each."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[:SIDE, :SIDE]
    centres = [(12, 12), (36, 30), (15, 38)]
    maps, groups = [], []
    for index in range(3 * per_group):
        group = index % 3
        x, y = centres[group] + rng.normal(0, 1.5, 2)
        maps.append(np.exp(-((columns - x) ** 2 + (rows - y) ** 2) / (2 * 4.5 ** 2)) + 0.1 * rng.random((SIDE, SIDE)))
        groups.append(group)
    return np.array(maps, np.float32), np.array(groups)


def test_three_planted_groups_are_found_by_the_eigengap_exactly_and_deterministically() -> None:
    maps, groups = _blob_groups()
    paths = [f"img_{i:03d}.png" for i in range(len(maps))]
    result = find_strategies("covid", maps, paths, StrategySettings(resolution=16))
    assert result.k == 3 and result.chosen_by == "eigengap"
    assert adjusted_rand_score(groups, result.labels) == 1.0  # scikit-learn's ARI as the reference
    assert result.stability["mean_ari"] == 1.0 and result.stability["resamples"] == 20
    for strategy in result.strategies:
        members = [paths.index(path) for path in strategy.members]
        np.testing.assert_allclose(strategy.mean, maps[members].mean(axis=0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(strategy.std, maps[members].std(axis=0, ddof=1), rtol=1e-5, atol=1e-6)
        assert strategy.consistency > 0.8
    again = find_strategies("covid", maps, paths, StrategySettings(resolution=16))
    np.testing.assert_array_equal(again.labels, result.labels)
    nearest, similarity = closest_strategy(maps[:6], result)
    np.testing.assert_array_equal(nearest, result.labels[:6])
    assert (similarity > 0.8).all()
    given = find_strategies("covid", maps, paths, StrategySettings(k=2, resolution=16))
    assert given.k == 2 and given.chosen_by == "given" and sorted(s.size for s in given.strategies) == [20, 40]


def test_one_group_gives_one_strategy() -> None:
    """Maps that differ only by noise around one pattern: no split stands out. (Maps that vary continuously, a blob
    sliding about, form a manifold whose spectrum can show gaps too: strategies are a hypothesis to look at.)"""
    rng = np.random.default_rng(1)
    rows, columns = np.mgrid[:SIDE, :SIDE]
    blob = np.exp(-((columns - 20) ** 2 + (rows - 25) ** 2) / (2 * 5.0 ** 2))
    single = np.array([blob + 0.3 * rng.random((SIDE, SIDE)) for _ in range(40)], np.float32)
    result = find_strategies("normal", single, [f"p{i}" for i in range(len(single))], StrategySettings(resolution=16))
    assert result.k == 1 and result.strategies[0].size == len(single) and result.stability["mean_ari"] is None


def test_stability_with_k_given_is_below_one_without_stable_clusters_and_equals_a_hand_computed_case() -> None:
    """The stability compares the clustering's labels with each bootstrap resample's own clustering (same K)."""
    noise = np.random.default_rng(10).random((30, 16, 16)).astype(np.float32)  # members without any stable clusters
    settings = StrategySettings(k=2, resolution=16)
    unstable = find_strategies("normal", noise, [f"p{i}" for i in range(len(noise))], settings)
    assert unstable.k == 2 and unstable.stability["resamples"] == 20
    assert unstable.stability["mean_ari"] < 0.6  # measured 0.20
    # By hand: labels that put every member in one cluster against any resample's two clusters of sizes b_1, b_2.
    # ARI = (index - expected) / (max - expected), index = sum_ij C(n_ij, 2) = C(b_1, 2) + C(b_2, 2); the labels'
    # sum_i C(a_i, 2) = C(n, 2), so expected = C(n, 2) (C(b_1, 2) + C(b_2, 2)) / C(n, 2) = index: ARI 0 for every resample.
    one = stability(noise, np.zeros(len(noise), np.int64), 2, settings, None)
    assert one == {"mean_ari": 0.0, "std_ari": 0.0, "resamples": 20, "ari_ci": [0.0, 0.0]}
    maps, groups = _blob_groups(per_group=10)
    two = groups < 2  # two planted groups: every resample splits them again (ARI 1)
    assert stability(maps[two, ::3, ::3], groups[two], 2, settings, None) == {"mean_ari": 1.0, "std_ari": 0.0, "resamples": 20,
                                                                              "ari_ci": [1.0, 1.0]}


def test_stability_interval_is_the_spread_of_the_resampled_indices(monkeypatch) -> None:
    """``ari_ci``: the 2.5th and 97.5th percentiles of the resamples' adjusted Rand indices (recorded as scikit-learn
    computes them), around their mean."""
    import sklearn.metrics

    seen: list[float] = []

    def recorded(*labels) -> float:
        seen.append(float(adjusted_rand_score(*labels)))
        return seen[-1]

    monkeypatch.setattr(sklearn.metrics, "adjusted_rand_score", recorded)
    noise = np.random.default_rng(11).random((24, 16, 16)).astype(np.float32)
    settings = StrategySettings(k=2, resolution=16)
    result = stability(noise, np.arange(24) % 2, 2, settings, None)
    assert len(seen) == result["resamples"] == 20
    assert result["ari_ci"] == pytest.approx(list(np.percentile(seen, [2.5, 97.5])), abs=1e-12)
    assert result["ari_ci"][0] <= result["mean_ari"] <= result["ari_ci"][1] and result["ari_ci"][0] < result["ari_ci"][1]


@pytest.mark.parametrize(("eigenvalues", "expected"), [
    ([0.0, 0.0, 0.0, 0.31, 0.39, 0.41, 0.55], 3),  # three components: the 4th eigenvalue jumps
    ([0.0, 0.044, 0.157, 0.296, 0.356, 0.482, 0.622], 2),  # relative gap (0.157 - 0.044) / 0.157 = 0.72 is the largest
    ([0.0, 0.25, 0.30, 0.36, 0.41, 0.47, 0.52], 1),  # no relative gap reaches 0.5
])
def test_eigengap_by_hand(eigenvalues: list[float], expected: int) -> None:
    assert eigengap_k(np.array(eigenvalues), 6) == expected


def test_strategies_are_stored_drawn_compared_and_dropped_where_they_would_be_stale(binary_phantom: dict, tmp_path: Path,
                                                                                    capsys, monkeypatch) -> None:
    templates = tmp_path / "templates.h5"
    shutil.copy(binary_phantom["templates"], templates)
    code, out, err = run_hmt(["strategies", templates, "--heatmaps", binary_phantom["store"], "--json"], capsys, monkeypatch)
    assert code == 0, err
    printed = json.loads(out)["classes"]
    stored = read_strategies(templates)
    assert sorted(printed) == sorted(stored) == ["covid", "not-covid"]
    assert read_templates(templates).attrs["schema_version"] == TEMPLATES.version >= 4
    for name, result in stored.items():
        template = read_templates(templates).templates[name]
        assert printed[name]["k"] == result.k and sum(c["size"] for c in printed[name]["clusters"]) == template.count
        assert sorted(m for c in printed[name]["clusters"] for m in c["members"]) == sorted(m.path for m in template.members)
        assert [s.members for s in result.strategies] == [c["members"] for c in printed[name]["clusters"]]

    code, out, err = run_hmt(["figures", templates, "--out", tmp_path / "figures", "--format", "png", "--dpi", "40", "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    assert {"strategies_covid", "strategies_not-covid"} <= set(json.loads(out)["figures"])

    image = sorted((binary_phantom["data"] / "covid").glob("*.png"))[0]
    code, out, err = run_hmt(["compare", image, "--templates", templates, "--model", binary_phantom["model"], "--json"],
                             capsys, monkeypatch)
    assert code == 0, err
    compared = json.loads(out)["results"][0]
    assert 1 <= compared["strategy"] <= stored[compared["predicted"]].k

    build_templates(binary_phantom["store"], ["covid"], templates, config=BuildConfig(reference=str(
        binary_phantom["data"] / "ground_truth" / "canonical_chest.png"), bootstrap_replicates=4, n_components=2))
    assert list(read_strategies(templates)) == ["not-covid"]  # the rebuilt class's strategies were stale

    covid_only, other_only = tmp_path / "covid.h5", tmp_path / "other.h5"
    reference = str(binary_phantom["data"] / "ground_truth" / "canonical_chest.png")
    for name, path in (("covid", covid_only), ("not-covid", other_only)):
        build_templates(binary_phantom["store"], [name], path, config=BuildConfig(reference=reference, bootstrap_replicates=4, n_components=2))
    add_strategies(covid_only, binary_phantom["store"])
    code, out, err = run_hmt(["merge-templates", covid_only, other_only, "-o", tmp_path / "merged.h5"], capsys, monkeypatch)
    assert code == 0, err
    assert "strategies of covid were not merged" in out and "hmt strategies" in out
    assert read_strategies(tmp_path / "merged.h5") == {}


def test_strategy_command_errors(binary_phantom: dict, tmp_path: Path, capsys, monkeypatch) -> None:
    templates = tmp_path / "templates.h5"
    shutil.copy(binary_phantom["templates"], templates)
    code, _, err = run_hmt(["strategies", templates, "--heatmaps", binary_phantom["store"], "--k", "zero"], capsys, monkeypatch)
    assert_user_error(code, err, "--k must be auto or a number")
    code, _, err = run_hmt(["strategies", templates, "--heatmaps", binary_phantom["store"], "--class", "virus"], capsys, monkeypatch)
    assert_user_error(code, err, "no template of class 'virus'")


def test_the_planted_shortcut_is_a_strategy_of_its_own(shortcut_phantom: dict) -> None:
    """Ground truth: half of the covid images carry a marker and no lesions; the model uses it, so the covid class splits."""
    result = add_strategies(shortcut_phantom["templates"])["covid"]
    truth = read_shortcuts(shortcut_phantom["data"])
    root = shortcut_phantom["data"].resolve()
    members = [m.path for m in read_templates(shortcut_phantom["templates"]).templates["covid"].members]
    planted = np.array([truth[Path(path).resolve().relative_to(root).as_posix()] for path in members])
    assert result.k == 2
    assert adjusted_rand_score(planted, result.labels) > 0.6  # measured 1.00 for training seeds 0, 1 and 2
    tagged_share = [planted[result.labels == j].mean() for j in range(result.k)]
    shortcut = int(np.argmax(tagged_share))
    assert tagged_share[shortcut] >= 0.9 and planted[result.labels == shortcut].sum() >= 0.8 * planted.sum()


def test_classes_too_small_to_cluster_are_skipped_with_a_note_unless_named(binary_phantom: dict, tmp_path: Path, capsys,
                                                                            monkeypatch) -> None:
    import heatmap_templates.analysis.strategy_search as search
    import hmt_cli.strategies as command

    templates = tmp_path / "templates.h5"
    shutil.copy(binary_phantom["templates"], templates)
    counts = {name: t.count for name, t in read_templates(templates).templates.items()}
    small, large = sorted(counts, key=counts.get)
    assert counts[small] < counts[large]
    for module in (search, command):  # as if the smaller class had one member too few
        monkeypatch.setattr(module, "MIN_STRATEGY_MEMBERS", counts[small] + 1)
    code, out, err = run_hmt(["strategies", templates, "--heatmaps", binary_phantom["store"], "--json"], capsys, monkeypatch)
    assert code == 0, err
    printed = json.loads(out)
    assert list(printed["classes"]) == [large] and list(printed["skipped"]) == [small]
    assert list(read_strategies(templates)) == [large]

"""Template building (`build.py`, `hmt build-templates`): checked against independent numpy recomputation.

With registration ``none`` the registered map is the stored map itself, so a template must be
exactly the mean / standard deviation of the min-max normalised stored maps of its members.
The data are 64 px phantoms and a tiny nearest-centroid CNN (see test_heatmaps.py).
"""
from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_heatmaps import make_centroid_model, make_phantoms

from heatmap_templates.data.decode import decode_image
from heatmap_templates.errors import HmtError
from heatmap_templates.explain.heatmaps import default_store_path, extract_heatmaps
from heatmap_templates.project import record_project
from heatmap_templates.store import HeatmapReader, HeatmapWriter, open_heatmaps
from heatmap_templates.templates.accumulator import LOO_EXACT
from heatmap_templates.templates.build import BuildConfig, build_templates
from heatmap_templates.templates.chunks import chunk_bounds
from heatmap_templates.templates.templates_file import read_templates

SIDE = 64
FAST = {"registration": "none", "n_components": 2, "bootstrap_replicates": 4}
FAST_CLI = ["--registration", "none", "--components", "2", "--bootstrap", "2"]


def minmax(maps: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1] (a constant map gives zeros), in float64."""
    flat = np.asarray(maps, dtype=np.float64).reshape(len(maps), -1)
    low, high = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    spread = np.where(high > low, high - low, 1.0)
    return np.where(high > low, (flat - low) / spread, 0.0).reshape(np.shape(maps))


def stored_maps(reader: HeatmapReader, indices: np.ndarray, class_index: int) -> np.ndarray:
    return np.concatenate([batch.upsampled[:, class_index].astype(np.float64) for batch in reader.iter_batches(7, indices)])


def copy_store(reader: HeatmapReader, indices: np.ndarray, path: Path) -> Path:
    """A new heatmap store holding some rows of another one (no model involved)."""
    with HeatmapWriter(path, reader.settings) as writer:
        for batch in reader.iter_batches(5, indices):
            writer.append(batch)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("build")
    data = make_phantoms(root / "phantoms", size=SIDE)
    model = make_centroid_model(data, root / "model.keras", input_side=SIDE)
    store = root / "heatmaps.h5"
    extract_heatmaps(model, data, store, batch_size=8)
    reader = open_heatmaps(store)
    names = reader.class_names
    correct = {name: int(((reader.labels == k) & reader.correct).sum()) for k, name in enumerate(names)}
    incorrect = {name: int(((reader.labels == k) & ~reader.correct).sum()) for k, name in enumerate(names)}
    mixed = [name for name in names if correct[name] >= 2 and incorrect[name] >= 1]
    assert len(mixed) >= 2, f"the test model should be partly right on two classes: correct {correct}"
    first, second = sorted(mixed, key=lambda name: -correct[name])[:2]
    return {"root": root, "data": data, "model": model, "store": store, "reader": reader, "first": first, "second": second,
            "reference": sorted((data / first).glob("*.png"))[0]}


@pytest.fixture(scope="module")
def first_build(project: dict) -> dict:
    out = project["root"] / "templates.h5"
    summary = build_templates(project["store"], [project["first"]], out, config=BuildConfig(normalisation="minmax", **FAST))
    return {"out": out, "summary": summary, "file": read_templates(out)}


def test_none_minmax_template_is_the_numpy_mean_and_std_of_the_members(project: dict, first_build: dict) -> None:
    reader, name = project["reader"], project["first"]
    k = reader.class_names.index(name)
    members = np.flatnonzero((reader.labels == k) & (reader.predicted == k))
    maps = minmax(stored_maps(reader, members, k))
    template = first_build["file"].templates[name]
    assert template.count == len(members) == first_build["summary"].members[name]
    assert [m.path for m in template.members] == [reader.paths[i] for i in members]
    assert {m.registration_method for m in template.members} == {"none"}
    np.testing.assert_allclose(template.mean, maps.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(template.std, maps.std(axis=0, ddof=1), rtol=0, atol=1e-6)
    np.testing.assert_allclose([m.probability for m in template.members], reader.probabilities[members, k], rtol=1e-6)
    assert first_build["summary"].registration["methods"] == {"none": len(members)}
    settings = first_build["file"].settings
    assert (settings.registration, settings.normalisation, settings.include) == ("none", "minmax", "correct")
    assert settings.model_sha256 == reader.settings.model_sha256


def test_leave_one_out_correlations_equal_brute_force(project: dict, first_build: dict) -> None:
    reader, name = project["reader"], project["first"]
    k = reader.class_names.index(name)
    maps = minmax(stored_maps(reader, np.flatnonzero((reader.labels == k) & reader.correct), k)).reshape(-1, SIDE * SIDE)
    brute = [np.corrcoef(maps[i], np.delete(maps, i, axis=0).mean(axis=0))[0, 1] for i in range(len(maps))]
    template = first_build["file"].templates[name]
    assert template.loo_method == LOO_EXACT
    np.testing.assert_allclose(template.loo_correlations, brute, rtol=0, atol=1e-5)
    pairs = [np.corrcoef(maps[i], maps[j])[0, 1] for i in range(len(maps)) for j in range(len(maps)) if i != j]
    assert template.mean_pairwise_correlation == pytest.approx(np.mean(pairs), abs=1e-5)


@pytest.mark.parametrize("include", ["all", "predicted"])
def test_include_rule_picks_the_members(project: dict, tmp_path: Path, include: str) -> None:
    reader, name = project["reader"], project["first"]
    k = reader.class_names.index(name)
    chosen = reader.labels == k if include == "all" else reader.predicted == k
    members = np.flatnonzero(chosen)
    assert len(members) != int(((reader.labels == k) & reader.correct).sum())  # differs from the default rule
    out = tmp_path / f"{include}.h5"
    build_templates(project["store"], [name], out, config=BuildConfig(include=include, **FAST))
    template = read_templates(out).templates[name]
    assert [m.path for m in template.members] == [reader.paths[i] for i in members]
    np.testing.assert_allclose(template.mean, minmax(stored_maps(reader, members, k)).mean(axis=0), atol=1e-6)


def test_second_class_is_added_without_changing_the_first(project: dict, first_build: dict, tmp_path: Path) -> None:
    out = tmp_path / "two.h5"
    out.write_bytes(first_build["out"].read_bytes())
    first, second = project["first"], project["second"]
    build_templates(project["store"], [second], out, config=BuildConfig(**FAST))
    before, after = first_build["file"], read_templates(out)
    assert list(after.templates) == sorted([first, second], key=project["reader"].class_names.index)
    for field in ("mean", "std", "median", "band_low", "band_high", "components", "loo_correlations"):
        np.testing.assert_array_equal(getattr(after.templates[first], field), getattr(before.templates[first], field))
    assert after.templates[first].members == before.templates[first].members
    np.testing.assert_array_equal(after.reference_image, before.reference_image)
    assert after.similarity.shape == (2, 2)
    k = project["reader"].class_names.index(second)
    assert after.templates[second].count == int(((project["reader"].labels == k) & project["reader"].correct).sum())


def test_unknown_and_empty_classes(project: dict, tmp_path: Path) -> None:
    reader, name = project["reader"], project["first"]
    with pytest.raises(HmtError, match=r"class 'pneumonia' is not one of the model's classes \(bacteria, covid, normal, virus\)"):
        build_templates(project["store"], ["pneumonia"], tmp_path / "x.h5", config=BuildConfig(**FAST))
    other = reader.class_names.index(project["second"])
    only_other = copy_store(reader, np.flatnonzero(reader.labels == other), tmp_path / "only_other.h5")
    with pytest.raises(HmtError, match=f"class '{name}' has no correct images"):
        build_templates(only_other, [name], tmp_path / "x.h5", config=BuildConfig(**FAST))
    assert not (tmp_path / "x.h5").exists()
    summary = build_templates(only_other, None, tmp_path / "all.h5", config=BuildConfig(**FAST))
    assert summary.members == {project["second"]: int(((reader.labels == other) & reader.correct).sum())}
    assert sorted(summary.empty_classes) == sorted(set(reader.class_names) - {project["second"]})
    assert list(read_templates(tmp_path / "all.h5").templates) == [project["second"]]


def test_reference_image_is_stored_as_the_frame(project: dict, tmp_path: Path) -> None:
    out = tmp_path / "ref.h5"
    build_templates(project["store"], [project["first"]], out, config=BuildConfig(reference=str(project["reference"]), **FAST))
    stored = read_templates(out)
    np.testing.assert_allclose(stored.reference_image, decode_image(project["reference"]).pixels, atol=1e-6)
    assert stored.lung_mask.shape == (SIDE, SIDE) and stored.lung_mask.any()


def _hmt_in_process(*args: str):
    from typer.testing import CliRunner

    from hmt_cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, list(args))


def test_merge_of_disjoint_halves_equals_one_build_over_the_union(project: dict, tmp_path: Path) -> None:
    reader, name = project["reader"], project["first"]
    config = {**FAST, "reference": str(project["reference"])}  # one frame for every file
    halves = []
    for part, indices in (("a", np.arange(0, len(reader), 2)), ("b", np.arange(1, len(reader), 2))):
        store = copy_store(reader, indices, tmp_path / f"heatmaps_{part}.h5")
        halves.append(tmp_path / f"templates_{part}.h5")
        build_templates(store, [name], halves[-1], config=BuildConfig(**config))
        assert read_templates(halves[-1]).templates[name].count >= 1
    union = tmp_path / "union.h5"
    build_templates(project["store"], [name], union, config=BuildConfig(**config))
    merged = tmp_path / "merged.h5"
    result = _hmt_in_process("merge-templates", *map(str, halves), "-o", str(merged))
    assert result.exit_code == 0, result.output
    expected, got = read_templates(union).templates[name], read_templates(merged).templates[name]
    assert got.count == expected.count
    assert sorted(m.path for m in got.members) == sorted(m.path for m in expected.members)
    np.testing.assert_allclose(got.mean, expected.mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.std, expected.std, rtol=0, atol=1e-6)


def test_cli_builds_from_a_store_without_a_model(project: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no project record here: MODEL is not needed with --heatmaps
    out = tmp_path / "from_store.h5"
    name = project["first"]
    result = _hmt_in_process("build-templates", "--heatmaps", str(project["store"]), "--class", name, "-o", str(out), *FAST_CLI, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    k = project["reader"].class_names.index(name)
    assert summary["members"] == {name: int(((project["reader"].labels == k) & project["reader"].correct).sum())}


def test_cli_chunk_images_gives_the_apis_chunked_build(project: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--chunk-images reaches BuildConfig.chunk_images: the CLI's file equals the API's with the same chunks bit for bit."""
    monkeypatch.chdir(tmp_path)
    name = project["first"]
    result = _hmt_in_process("build-templates", "--heatmaps", str(project["store"]), "--class", name, "-o", str(tmp_path / "cli.h5"),
                             *FAST_CLI, "--chunk-images", "3", "--threads", "2")
    assert result.exit_code == 0, result.output
    config = BuildConfig(registration="none", n_components=2, bootstrap_replicates=2, chunk_images=3, threads=1)
    build_templates(project["store"], [name], tmp_path / "api.h5", config=config)
    cli, api = (read_templates(tmp_path / f"{which}.h5", load_state=True).templates[name] for which in ("cli", "api"))
    for key, value in api.state.arrays.items():
        np.testing.assert_array_equal(cli.state.arrays[key], value, err_msg=key)


def test_cli_defaults_model_and_data_from_the_project_record(project: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    record_project(model=project["model"], data=project["data"])
    name = project["first"]
    result = _hmt_in_process("build-templates", "--class", name, *FAST_CLI)
    assert result.exit_code == 0, result.output
    store = default_store_path(project["model"], "gradcam", "logit", "templates_out")
    assert f"heatmaps: {store} (24 computed, 0 reused, 0 skipped)" in result.stdout
    assert "templates: templates_out/templates.h5" in result.stdout and f"{name}: " in result.stdout
    built = read_templates(tmp_path / "templates_out" / "templates.h5")
    assert list(built.templates) == [name]
    result = _hmt_in_process("build-templates", "--class", project["second"], *FAST_CLI)
    assert result.exit_code == 0, result.output
    assert f"heatmaps: {store} (0 computed, 24 reused, 0 skipped)" in result.stdout
    assert set(read_templates(tmp_path / "templates_out" / "templates.h5").templates) == {name, project["second"]}


@pytest.mark.parametrize(("arguments", "message"), [
    (["build-templates"], "hmt: error: name a class with --class NAME (repeatable) or use --all-classes"),
    (["build-templates", "--class", "covid", "--all-classes"], "hmt: error: use either --class or --all-classes, not both"),
    (["build-templates", "--class", "covid"], "hmt: error: no MODEL given and no previous `hmt train` recorded in templates_out/project.json"),
    (["build-templates", "--heatmaps", "{store}", "--class", "pneumonia"], "hmt: error: class 'pneumonia' is not one of the model's classes"),
    (["build-templates", "--heatmaps", "{store}", "--class", "covid", "--registration", "elastic"], "hmt: error: unknown registration 'elastic'"),
    (["build-templates", "--heatmaps", "{missing}", "--class", "covid"], "hmt: error: {missing}: no such heatmap store"),
])
def test_cli_user_errors_exit_2_with_one_line(project: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture, arguments: list[str], message: str) -> None:
    from hmt_cli.main import run

    monkeypatch.chdir(tmp_path)
    names = {"store": str(project["store"]), "missing": str(tmp_path / "missing.h5")}
    monkeypatch.setattr(sys, "argv", ["hmt", *[argument.format(**names) for argument in arguments]])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(message.format(**names)) and "\n" not in error
    assert not (tmp_path / "templates_out" / "templates.h5").exists()


def test_affine_build_keeps_each_members_registration_and_threads_do_not_change_it(project: dict, tmp_path: Path) -> None:
    """Each member's image -> reference matrix is stored (compare, checks and reports reuse or invert it); a build
    in one thread and in three gives the same file contents bit for bit, and smaller chunks the same numbers."""
    from heatmap_templates.templates.prepare import registrar_for

    config = BuildConfig(registration="affine", n_components=2, bootstrap_replicates=4, reference=str(project["reference"]))
    files = {}
    for name, changes in {"one": {"threads": 1}, "three": {"threads": 3}, "chunks": {"threads": 2, "chunk_images": 3}}.items():
        build_templates(project["store"], [project["first"]], tmp_path / f"{name}.h5", config=replace(config, **changes))
        files[name] = read_templates(tmp_path / f"{name}.h5", load_state=True)
    template = files["one"].templates[project["first"]]
    registrar = registrar_for("affine", files["one"].reference_image, files["one"].lung_mask)
    reader = project["reader"]
    for member in template.members[:3]:
        (batch,) = reader.iter_batches(1, [reader.paths.index(member.path)])
        expected = registrar.estimate(batch.images[0].astype(np.float32) / 255.0)
        np.testing.assert_allclose(np.reshape(member.registration_matrix, (2, 3)), expected.matrix, rtol=0, atol=1e-12)
    three = files["three"].templates[project["first"]]
    assert [m.registration_matrix for m in three.members] == [m.registration_matrix for m in template.members]
    for key, value in template.state.arrays.items():
        np.testing.assert_array_equal(three.state.arrays[key], value, err_msg=key)
    np.testing.assert_array_equal(three.loo_correlations, template.loo_correlations)
    chunked = files["chunks"].templates[project["first"]]
    np.testing.assert_allclose(chunked.mean, template.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(chunked.loo_correlations, template.loo_correlations, rtol=0, atol=1e-12)


def test_files_before_schema_3_have_no_member_matrices() -> None:
    old = read_templates(Path(__file__).parent / "data" / "templates_v2.h5")
    assert all(member.registration_matrix is None for template in old.templates.values() for member in template.members)


@pytest.mark.parametrize("images, chunk_images", [(800, 256), (1525, 256), (512, 256), (513, 256), (10, 3), (7, 1), (5, 256), (0, 4)])
def test_chunks_cover_the_images_in_order_and_balanced(images: int, chunk_images: int) -> None:
    """Chunks tile the members in order, as few as the chunk size allows, no larger than it, sizes within one."""
    bounds = chunk_bounds(images, chunk_images)
    assert len(bounds) == -(-images // chunk_images)
    assert [start for start, _ in bounds] == ([0] if bounds else []) + [stop for _, stop in bounds[:-1]]
    assert (bounds[-1][1] if bounds else 0) == images
    sizes = [stop - start for start, stop in bounds]
    assert all(0 < size <= chunk_images for size in sizes) and (not sizes or max(sizes) - min(sizes) <= 1)

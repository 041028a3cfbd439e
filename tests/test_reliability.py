"""Issue 8 across the pipeline: bad models and files, bad images inside a run, untrusted files.

Every user error must reach the terminal as one line naming the file and the reason, exit code 2,
no traceback; image-level problems are skipped, listed at the end, and left out of the outputs.
The image and data-set level is covered by test_data.py / test_data_fuzz.py; crash safety by
test_crash_safety.py; determinism by test_determinism.py. The CLI runs in this process (through
``hmt_cli.main.run``, exactly as the console script) because a fresh interpreter per case would
cost seconds of TensorFlow start-up each; one case runs as a real subprocess.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import bad_inputs
import cv2
import h5py  # only to craft damaged files and to read every dataset back
import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt

from heatmap_templates import synth
from heatmap_templates.errors import display_path
from heatmap_templates.explain.heatmaps import extract_heatmaps
from heatmap_templates.model import backbones, model_file
from heatmap_templates.model import layers as model_layers
from heatmap_templates.model.model_file import ModelInfo
from heatmap_templates.store import open_heatmaps
from heatmap_templates.templates.templates_file import read_templates

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64  # phantoms need about this many pixels for lung segmentation (registration reference)
CLASSES = ("covid", "normal")
HMT = [sys.executable, "-c", "from hmt_cli.main import run; run()"]


# --------------------------------------------------------------------------- shared helpers (also used by the other two files)


def write_phantom_set(root: Path, n_per_class: int, size: int = SIZE, classes: tuple[str, ...] = CLASSES) -> Path:
    """A class-per-folder set of synthetic chest phantoms (lungs present, so registration works)."""
    for class_number, label in enumerate(classes):
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(n_per_class):
            phantom = synth.render_phantom([index, class_number], label if label in synth.CLASSES else "normal", size)
            cv2.imwrite(str(root / label / f"{label}_{index:03d}.png"), np.rint(phantom.image * 255).astype(np.uint8))
    return root


def save_tiny_model(path: Path, classes: tuple[str, ...] = CLASSES, size: int = SIZE, seed: int = 0, dead_cam_layer: bool = False) -> Path:
    """An untrained `small` model with hmt metadata; ``dead_cam_layer`` zeroes every conv kernel,
    so the CAM layer (a ReLU after batch norm with zero shift) outputs zeros and all gradients vanish."""
    import keras

    keras.utils.set_random_seed(seed)
    model = backbones.build_model("small", len(classes), size, "none")
    if dead_cam_layer:
        for layer in model.layers:
            if isinstance(layer, keras.layers.Conv2D):
                layer.set_weights([np.zeros_like(w) for w in layer.get_weights()])
    info = ModelInfo(class_names=list(classes), backbone="small", input_size=(size, size), channels=1, preprocessing="unit",
                     cam_layer=model_layers.default_cam_layer(model))
    return model_file.save_model(model, info, path)


def h5_datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by its full name."""
    found: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, item: found.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return found


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A phantom data set, a tiny model, its heatmap store and a one-class templates file, made once."""
    from heatmap_templates.templates.build import BuildConfig, build_templates

    root = tmp_path_factory.mktemp("reliability")
    data = write_phantom_set(root / "data", 4)
    model = save_tiny_model(root / "model.keras")
    store = root / "heatmaps.h5"
    extract_heatmaps(model, data, store, batch_size=8)
    templates = root / "templates.h5"
    build_templates(store, ["covid"], templates, config=BuildConfig(registration="none", include="all", bootstrap_replicates=4))
    return {"root": root, "data": data, "model": model, "store": store, "templates": templates}


@pytest.fixture()
def hmt(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """`hmt(*args)` -> (code, out, err), run in a fresh temporary working folder."""
    monkeypatch.chdir(tmp_path)
    return lambda *args: run_hmt(list(args), capsys, monkeypatch)



# --------------------------------------------------------------------------- models


def test_text_file_named_keras_is_refused_in_a_real_process(world: dict[str, Path], tmp_path: Path) -> None:
    fake = tmp_path / "model.keras"
    fake.write_text("not a model\n")
    result = subprocess.run([*HMT, "heatmaps", str(fake), str(world["data"]), "--out", str(tmp_path / "h.h5")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert_user_error(result.returncode, result.stderr, str(fake), "not a Keras model file")
    assert not (tmp_path / "h.h5").exists()


def test_zip_without_keras_content_is_refused(world: dict[str, Path], tmp_path: Path, hmt) -> None:
    fake = tmp_path / "archive.keras"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr("readme.txt", "hello")
    assert_user_error(*hmt("heatmaps", fake, world["data"], "--out", tmp_path / "h.h5")[::2], str(fake), "cannot load the model")


@pytest.mark.parametrize("saved_with", ["save_model", "model.save"])
def test_model_without_convolutional_layer_is_refused_by_heatmaps(saved_with: str, world: dict[str, Path], tmp_path: Path, hmt) -> None:
    import keras

    dense = keras.Sequential([keras.Input((SIZE, SIZE, 1)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    path = tmp_path / "dense.keras"
    extra: list[str] = []
    if saved_with == "save_model":
        info = ModelInfo(class_names=list(CLASSES), backbone="user", input_size=(SIZE, SIZE), channels=1, preprocessing="unit", cam_layer=None)
        model_file.save_model(dense, info, path)
    else:
        dense.save(path)
        extra = ["--classes", ",".join(CLASSES)]
    code, _, err = hmt("heatmaps", path, world["data"], "--out", tmp_path / "h.h5", *extra)
    assert_user_error(code, err, str(path), "no convolutional layer")


def test_lambda_layer_needs_unsafe_load(world: dict[str, Path], tmp_path: Path, hmt) -> None:
    import keras

    inputs = keras.Input((SIZE, SIZE, 1))
    features = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(keras.layers.Lambda(lambda x: x * 1.0)(inputs))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(features))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    out = tmp_path / "h.h5"
    arguments = ["heatmaps", path, world["data"], "--out", out, "--classes", ",".join(CLASSES)]
    code, _, err = hmt(*arguments)
    assert_user_error(code, err, str(path), "--unsafe-load")
    assert not out.exists()
    code, _, err = hmt(*arguments, "--unsafe-load")
    assert code == 0, err
    assert len(open_heatmaps(out)) == 2 * 4


# --------------------------------------------------------------------------- HDF5 files


@pytest.fixture(scope="module")
def damaged(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Truncated copies of a real templates file and heatmap store, random bytes named .h5, and both
    real files with an unknown schema version."""
    folder = tmp_path_factory.mktemp("damaged")
    files = {}
    for kind, source in (("templates", world["templates"]), ("store", world["store"])):
        data = source.read_bytes()
        files[f"truncated_{kind}"] = folder / f"truncated_{kind}.h5"
        files[f"truncated_{kind}"].write_bytes(data[: len(data) // 2])
        files[f"future_{kind}"] = folder / f"future_{kind}.h5"
        shutil.copy(source, files[f"future_{kind}"])
        with h5py.File(files[f"future_{kind}"], "a") as handle:
            handle.attrs["schema_version"] = 99
    files["random_bytes"] = folder / "random_bytes.h5"
    files["random_bytes"].write_bytes(np.random.default_rng(0).bytes(20_000))
    files["nan_templates"] = folder / "nan_templates.h5"
    shutil.copy(world["templates"], files["nan_templates"])
    with h5py.File(files["nan_templates"], "a") as handle:
        mean = handle["templates/covid/mean"]
        mean[0, 0] = np.nan
    files["store_without_maps"] = folder / "store_without_maps.h5"
    shutil.copy(world["store"], files["store_without_maps"])
    with h5py.File(files["store_without_maps"], "a") as handle:
        del handle["raw"]
    return files


CORRUPT = ["truncated_templates", "truncated_store", "random_bytes"]
REASONS = {"nan_templates": "non-finite values in the mean of class 'covid'", "store_without_maps": "missing raw"}
FUTURE = ["future_templates", "future_store"]


@pytest.mark.parametrize("name", CORRUPT + FUTURE + list(REASONS))
def test_inspect_refuses_damaged_and_future_files(name: str, damaged: dict[str, Path], hmt) -> None:
    reason = "unknown schema version 99" if name in FUTURE else REASONS.get(name, "HDF5")
    assert_user_error(*hmt("inspect", damaged[name])[::2], str(damaged[name]), reason)


@pytest.mark.parametrize("name", CORRUPT + ["future_store", "store_without_maps"])
def test_build_templates_refuses_a_damaged_or_future_heatmap_store(name: str, damaged: dict[str, Path], tmp_path: Path, hmt) -> None:
    out = tmp_path / "templates.h5"
    code, _, err = hmt("build-templates", "--heatmaps", damaged[name], "--class", "covid", "--out", out, "--registration", "none")
    assert_user_error(code, err, str(damaged[name]))
    assert not out.exists()


@pytest.mark.parametrize("name", ["truncated_templates", "random_bytes", "future_templates"])
def test_build_templates_will_not_add_to_a_damaged_or_future_templates_file(name: str, damaged: dict[str, Path], world: dict[str, Path],
                                                                              tmp_path: Path, hmt) -> None:
    out = tmp_path / "templates.h5"
    shutil.copy(damaged[name], out)
    before = out.read_bytes()
    code, _, err = hmt("build-templates", "--heatmaps", world["store"], "--class", "normal", "--out", out,
                       "--registration", "none", "--include", "all")
    assert_user_error(code, err, str(out))
    assert out.read_bytes() == before


def test_outputs_where_a_file_is_in_the_way_are_user_errors(world: dict[str, Path], tmp_path: Path, hmt) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file, where the output folder should be\n")
    out = blocker / "heatmaps.h5"
    assert_user_error(*hmt("heatmaps", world["model"], world["data"], "--out", out)[::2], str(out), "cannot create the folder")
    out = blocker / "templates.h5"
    code, _, err = hmt("build-templates", "--heatmaps", world["store"], "--class", "covid", "--out", out, "--registration", "none", "--include", "all")
    assert_user_error(code, err, str(out), "cannot create the folder")


def test_a_damaged_shard_in_a_heatmap_store_is_named(world: dict[str, Path], tmp_path: Path, hmt) -> None:
    """Crashes leave only complete shards (test_crash_safety.py); a shard damaged on disk later is reported, not used."""
    out = tmp_path / "heatmaps.h5"
    (tmp_path / "heatmaps.h5.parts").mkdir()
    shard = tmp_path / "heatmaps.h5.parts" / "000000.h5"
    shard.write_bytes(np.random.default_rng(1).bytes(3000))
    assert_user_error(*hmt("heatmaps", world["model"], world["data"], "--out", out)[::2], str(shard), "HDF5")
    assert_user_error(*hmt("inspect", out)[::2], str(shard), "HDF5")


def test_templates_from_another_model_are_not_mixed(world: dict[str, Path], tmp_path: Path, hmt) -> None:
    other_model = save_tiny_model(tmp_path / "other.keras", classes=("effusion", "normal"), seed=1)
    other_store = tmp_path / "other_heatmaps.h5"
    extract_heatmaps(other_model, world["data"], other_store, batch_size=8)  # 'covid' images are unlabelled for this model
    out = tmp_path / "templates.h5"
    shutil.copy(world["templates"], out)
    code, _, err = hmt("build-templates", "--heatmaps", other_store, "--class", "normal", "--out", out,
                       "--registration", "none", "--include", "all")
    assert_user_error(code, err, str(out), "made with")
    assert list(read_templates(out).templates) == ["covid"]


@pytest.mark.parametrize("name", ["truncated_templates", "random_bytes", "future_templates", "nan_templates"])
def test_compare_refuses_damaged_and_future_templates(name: str, damaged: dict[str, Path], world: dict[str, Path], hmt) -> None:
    image = next((world["data"] / "covid").iterdir())
    code, _, err = hmt("compare", image, "--templates", damaged[name], "--model", world["model"])
    assert_user_error(code, err, str(damaged[name]))


@pytest.mark.parametrize("name", ["truncated_templates", "random_bytes", "future_templates"])
def test_evaluate_templates_refuses_damaged_and_future_templates(name: str, damaged: dict[str, Path], world: dict[str, Path], hmt) -> None:
    code, _, err = hmt("evaluate-templates", damaged[name], world["data"], "--model", world["model"])
    assert_user_error(code, err, str(damaged[name]))


def test_compare_refuses_templates_of_another_model(world: dict[str, Path], tmp_path: Path, hmt) -> None:
    other_model = save_tiny_model(tmp_path / "other.keras", classes=("effusion", "normal"), seed=1)
    image = next((world["data"] / "covid").iterdir())
    code, _, err = hmt("compare", image, "--templates", world["templates"], "--model", other_model)
    assert_user_error(code, err, str(world["templates"]))


# --------------------------------------------------------------------------- maps


def test_all_zero_gradients_give_finite_templates(world: dict[str, Path], tmp_path: Path, hmt) -> None:
    dead = save_tiny_model(tmp_path / "dead.keras", dead_cam_layer=True)
    out = tmp_path / "templates.h5"
    code, _, err = hmt("build-templates", dead, world["data"], "--class", "normal", "--include", "all", "--out", out,
                       "--registration", "none", "--bootstrap", "4")
    assert code == 0, err
    store = next(tmp_path.glob("heatmaps_*.h5"))
    assert not h5_datasets(store)["raw"].any()  # the maps really are all zero
    templates = h5_datasets(out)
    assert "templates/normal/mean" in templates
    for name, values in templates.items():
        if np.issubdtype(np.asarray(values).dtype, np.number):
            assert np.isfinite(values).all(), name


# --------------------------------------------------------------------------- bad images inside a run


@pytest.fixture(scope="module")
def mixed(world: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[bad_inputs.BadImage], list[str]]:
    """The good phantoms plus every bad-image kind in the covid folder: (data root, bad files, good paths)."""
    root = tmp_path_factory.mktemp("mixed") / "data"
    shutil.copytree(world["data"], root)
    good = sorted(display_path(path) for path in root.rglob("*.png"))
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0  # root reads a chmod-0 file: it would be a good image
    bad = [writer(root / "covid") for writer in bad_inputs.BAD_IMAGE_WRITERS if not (as_root and writer is bad_inputs.write_unreadable)]
    return root, bad, good


def _assert_every_bad_file_listed(output: str, bad: list[bad_inputs.BadImage]) -> None:
    for item in bad:
        shown = display_path(item.path)
        lines = [line for line in output.splitlines() if shown in line]
        assert lines, f"{item.kind} ({shown}) is not reported"
        assert any(item.reason in line for line in lines), (item.kind, lines)


def test_heatmaps_skips_bad_images_reports_them_and_stores_only_good_ones(mixed, tmp_path: Path, world: dict[str, Path], hmt) -> None:
    root, bad, good = mixed
    out = tmp_path / "heatmaps.h5"
    code, stdout, err = hmt("heatmaps", world["model"], root, "--out", out, "--batch-size", "4")
    assert code == 0, err
    assert "Traceback" not in err
    _assert_every_bad_file_listed(stdout[stdout.index("skipped "):], bad)  # the list comes at the end of the run
    assert sorted(open_heatmaps(out).paths) == good


def test_build_templates_skips_bad_images_and_templates_hold_only_good_ones(mixed, tmp_path: Path, world: dict[str, Path], hmt) -> None:
    root, bad, good = mixed
    out = tmp_path / "templates.h5"
    code, stdout, err = hmt("build-templates", world["model"], root, "--all-classes", "--include", "all", "--out", out,
                            "--registration", "none", "--bootstrap", "4")
    assert code == 0, err
    _assert_every_bad_file_listed(stdout, bad)
    templates = read_templates(out).templates
    members = sorted(member.path for template in templates.values() for member in template.members)
    assert members == good
    for template in templates.values():
        assert np.isfinite(template.mean).all() and np.isfinite(template.std).all()


def test_strict_run_stops_at_a_corrupt_png_with_one_stderr_line(world: dict[str, Path], tmp_path: Path,
                                                                  capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checked at the file-descriptor level (capfd): C libraries write there, not to sys.stderr."""
    root = tmp_path / "data"
    shutil.copytree(world["data"], root)
    corrupt = bad_inputs.write_corrupt_png_data(root / "covid")
    code, _, err = run_hmt(["heatmaps", world["model"], root, "--out", tmp_path / "h.h5", "--strict"], capfd, monkeypatch)
    assert_user_error(code, err, str(corrupt.path), corrupt.reason)


# --------------------------------------------------------------------------- untrusted files


FORBIDDEN = {
    "pickle": re.compile(r"\b(c?pickle|dill|shelve|marshal|joblib)\b"),
    "allow_pickle=True": re.compile(r"allow_pickle\s*=\s*True"),
    "eval(": re.compile(r"(?<![\w.])eval\s*\("),
    "exec(": re.compile(r"(?<![\w.])exec\s*\("),
    "safe_mode=False": re.compile(r"safe_mode\s*=\s*False"),
    "unsafe yaml.load": re.compile(r"yaml\.(unsafe_)?load\s*\("),
}


def test_no_pickle_eval_or_exec_in_the_sources() -> None:
    sources = sorted((ROOT / "heatmap_templates").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py"))
    assert len(sources) > 10
    found = [f"{path.relative_to(ROOT)}:{number}: {what}"
             for path in sources
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             for what, pattern in FORBIDDEN.items() if pattern.search(line)]
    assert not found, "\n".join(found)


HOSTILE = [
    "{__import__('os').system('touch pwned')}",
    "$(touch pwned)",
    "`touch pwned`",
    "%s%n%x {0} {{}}",
    "'; DROP TABLE images; --",
]


def test_hostile_strings_in_csv_and_hdf5_round_trip_as_plain_text(tmp_path: Path, world: dict[str, Path], hmt) -> None:
    """File names and class names that look like code stay text through the CSV, the store, the
    templates file and inspect; a path that climbs out of the data folder is only a missing file."""
    hostile_class = HOSTILE[0]
    classes = (hostile_class, "normal")
    model = save_tiny_model(tmp_path / "model.keras", classes=classes)
    folder = tmp_path / "data"
    folder.mkdir()
    phantoms = sorted((world["data"] / "covid").iterdir()) + sorted((world["data"] / "normal").iterdir())
    rows = ["path,label"]
    names = [f"{index}_{HOSTILE[index % len(HOSTILE)]}.png" for index in range(len(phantoms))]
    for index, (file_name, source) in enumerate(zip(names, phantoms, strict=True)):
        shutil.copy(source, folder / file_name)
        label = hostile_class if index < 4 else "normal"
        rows.append('"' + file_name.replace('"', '""') + '","' + label.replace('"', '""') + '"')
    rows.append("../../etc/passwd," + "normal")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n", encoding="utf-8")

    store = tmp_path / "heatmaps.h5"
    summary = extract_heatmaps(model, manifest, store, batch_size=4)
    assert len(summary.skipped) == 1 and "does not exist" in summary.skipped[0].reason
    assert summary.skipped[0].path.endswith("etc/passwd")
    reader = open_heatmaps(store)
    assert sorted(Path(p).name for p in reader.paths) == sorted(names)
    assert reader.class_names == list(classes)

    out = tmp_path / "templates.h5"
    code, stdout, err = hmt("build-templates", "--heatmaps", store, "--class", hostile_class, "--out", out,
                            "--registration", "none", "--include", "all", "--bootstrap", "4")
    assert code == 0, err
    templates = read_templates(out).templates
    assert list(templates) == [hostile_class]
    assert sorted(Path(m.path).name for m in templates[hostile_class].members) == sorted(names[:4])
    code, stdout, err = hmt("inspect", out, "--json")
    assert code == 0, err
    assert hostile_class in stdout
    assert not list(tmp_path.rglob("pwned")) and not (ROOT / "pwned").exists()

"""One rule for the CAM an engine computes (explain/engine_choice.py): given > recorded > default, for the layer, the
method, the score and the threshold; extraction, compare and sanity all follow it. Also the typed settings the heatmap
store and the templates file record (store/settings.py, templates/template_settings.py)."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from heatmap_templates.errors import BadFileError
from heatmap_templates.explain.engine_choice import choose_cam, engine_for
from heatmap_templates.model.model_file import ModelInfo
from heatmap_templates.store import HeatmapSettings, open_heatmaps
from heatmap_templates.templates.template_settings import TemplateSettings
from heatmap_templates.templates.templates_file import read_templates

DATA = Path(__file__).resolve().parent / "data"
SIDE = 48
CLASSES = ("covid", "normal")
INFO = ModelInfo(class_names=list(CLASSES), backbone="custom", input_size=(SIDE, SIDE), channels=1, preprocessing="unit",
                 cam_layer="features")
RECORDED = HeatmapSettings(model_sha256="ab" * 32, class_names=CLASSES, layer="conv1", cam_method="hirescam",
                           score="probability", input_size=(SIDE, SIDE), threshold=0.3)
# name in CamChoice: (given, recorded in RECORDED, default)
CASES = {
    "layer": ("given/conv", "conv1", INFO.cam_layer),
    "method": ("layercam", "hirescam", "gradcam"),
    "score": ("class-vs-rest", "probability", "logit"),
    "threshold": (0.7, 0.3, 0.5),
}


# --------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("name", sorted(CASES))
def test_given_beats_recorded(name: str) -> None:
    given, recorded, _ = CASES[name]
    assert getattr(choose_cam(RECORDED, INFO, **{name: given}), name) == given != recorded


@pytest.mark.parametrize("name", sorted(CASES))
def test_recorded_beats_default(name: str) -> None:
    _, recorded, default = CASES[name]
    assert getattr(choose_cam(RECORDED, INFO), name) == recorded != default


@pytest.mark.parametrize("name", sorted(CASES))
def test_default_when_neither_given_nor_recorded(name: str) -> None:
    _, _, default = CASES[name]
    assert getattr(choose_cam(None, INFO), name) == default


def test_a_given_zero_threshold_is_a_value_and_no_model_record_leaves_the_layer_to_the_engine() -> None:
    assert choose_cam(RECORDED, INFO, threshold=0.0).threshold == 0.0
    assert choose_cam(None, None).layer is None


# --------------------------------------------------------------------------- a toy model, store and templates


def _toy_model(path: Path) -> Path:
    """Two conv layers (``conv1`` at full resolution, ``features`` after pooling: the model's CAM layer), untrained."""
    import keras

    from heatmap_templates.model.model_file import save_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIDE, SIDE, 1))
    hidden = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    hidden = keras.layers.MaxPooling2D(2)(hidden)
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="features")(hidden)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="predictions")(keras.layers.GlobalAveragePooling2D()(features))
    return save_model(keras.Model(inputs, outputs), INFO, path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Five phantoms per class, the toy model, a store made with a layer, method, score and threshold that are not the
    defaults, and its templates."""
    from heatmap_templates.explain.heatmaps import extract_heatmaps
    from heatmap_templates.synth import synthesize_dataset
    from heatmap_templates.templates.build import BuildConfig, build_templates

    root = tmp_path_factory.mktemp("engine_choice")
    synthesize_dataset(root / "data", n_per_class=5, size=SIDE, seed=3, classes=CLASSES, workers=1, probability_samples=1)
    model = _toy_model(root / "model.keras")
    store = root / "heatmaps.h5"
    extract_heatmaps(model, root / "data", store, layer=RECORDED.layer, method=RECORDED.cam_method, score=RECORDED.score,
                     threshold=RECORDED.threshold, batch_size=8)
    templates = root / "templates.h5"
    build_templates(store, None, templates, config=BuildConfig(include="all", registration="none", bootstrap_replicates=4,
                                                               n_components=2, reference_iterations=1, batch_size=8))
    return {"root": root, "model": model, "store": store, "templates": templates}


def _cam(engine) -> tuple:
    return engine.layer, engine.method, engine.score, engine.threshold


@pytest.fixture
def engines_made(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """(layer, method, score, threshold) of every CamEngine made while a test runs."""
    from heatmap_templates.explain import cam

    made: list[tuple] = []

    class Recording(cam.CamEngine):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(_cam(self))

    monkeypatch.setattr(cam, "CamEngine", Recording)
    return made


def test_extraction_records_what_was_given_and_engine_for_builds_it(toy: dict) -> None:
    from heatmap_templates.model.model_file import load_model

    settings = open_heatmaps(toy["store"]).settings
    assert (settings.layer, settings.cam_method, settings.score, settings.threshold) == ("conv1", "hirescam", "probability", 0.3)
    model, info = load_model(toy["model"])
    assert _cam(engine_for(settings, model, info)) == ("conv1", "hirescam", "probability", 0.3)
    assert _cam(engine_for(settings, model, info, layer="features", method="gradcam", score="logit", threshold=0.6)) == (
        "features", "gradcam", "logit", 0.6)
    assert _cam(engine_for(None, model, info)) == ("features", "gradcam", "logit", 0.5)  # the documented defaults


def test_compare_follows_the_rule(toy: dict) -> None:
    from heatmap_templates.analysis.compare import Comparer

    assert _cam(Comparer(toy["templates"]).engine) == ("conv1", "hirescam", "probability", 0.3)
    assert Comparer(toy["templates"], threshold=0.8).engine.threshold == 0.8


def test_sanity_follows_the_rule_for_the_shuffled_model_too(toy: dict, engines_made: list[tuple]) -> None:
    """Before the one rule, sanity built the shuffled-label model's engine at that model's own CAM layer, ahead of the
    layer the templates record (default over recorded): its maps were not those of the templates' layer."""
    from heatmap_templates.analysis.sanity import run_sanity

    result = run_sanity(toy["templates"], toy["store"], sample=3, shuffled_model=toy["model"])
    assert result.data_randomisation is not None and len(engines_made) == 2  # the trained model's copy, the shuffled model
    assert engines_made == [("conv1", "hirescam", "probability", 0.3)] * 2


# --------------------------------------------------------------------------- typed settings


def test_earlier_files_are_completed_with_the_values_they_were_made_with() -> None:
    v1 = open_heatmaps(DATA / "heatmaps_v1.h5").settings
    assert (v1.intensity, v1.threshold, v1.head) == ("full", 0.5, None)
    templates_v1 = read_templates(DATA / "templates_v1.h5").settings
    assert isinstance(templates_v1, TemplateSettings) and (templates_v1.intensity, templates_v1.threshold) == ("full", 0.5)
    assert (templates_v1.registration, templates_v1.normalisation, templates_v1.include) == ("none", "minmax", "correct")
    for path in sorted(DATA.glob("*_v[2-9].h5")):  # recorded since version 2: read back as they are written
        settings = (open_heatmaps(path) if path.name.startswith("heatmaps") else read_templates(path)).settings
        with h5py.File(path) as handle:
            assert settings.to_dict() == json.loads(handle.attrs["settings"]), path.name


def test_settings_round_trip_keep_unknown_settings_and_mark_the_identity() -> None:
    data = RECORDED.to_dict() | {"from_a_newer_hmt": [1, 2]}
    settings = HeatmapSettings.from_dict(data)
    assert settings.to_dict() == data and settings.extra == {"from_a_newer_hmt": [1, 2]}
    assert list(settings.identity()) == list(HeatmapSettings.IDENTITY_KEYS)
    assert set(settings.identity(resume=True)) - set(settings.identity()) == {"mixed_precision", "intensity"}
    built = TemplateSettings.built_from(settings, registration="affine", normalisation="minmax", include="correct")
    assert built.layer == "conv1" and built.identity()["registration"] == "affine" and built.extra == settings.extra
    with pytest.raises(BadFileError, match=r"made with layer=\"conv1\", not \"other\""):
        settings.check_same(Path("x.h5"), HeatmapSettings.from_dict(data | {"layer": "other"}))
    with pytest.raises(ValueError, match="templates file settings lack registration, normalisation"):
        TemplateSettings.of(data)
    with pytest.raises(BadFileError, match=r"damaged 'settings' attribute \(heatmap store settings lack layer\)"):
        HeatmapSettings.read({key: value for key, value in data.items() if key != "layer"}, "x.h5")
    with pytest.raises(BadFileError, match="input_size is not a list of integers"):
        HeatmapSettings.read(data | {"input_size": ["a", "b"]}, "x.h5")


def test_sanity_refuses_a_shuffled_model_without_the_templates_layer(toy: dict) -> None:
    """The recorded layer is the one compared: a shuffled-label model that lacks it is refused, naming the layer."""
    import keras

    from heatmap_templates.analysis.sanity import run_sanity
    from heatmap_templates.errors import HmtError
    from heatmap_templates.model.model_file import save_model

    inputs = keras.Input((SIDE, SIDE, 1))
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="other_features")(inputs)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax", name="predictions")(keras.layers.GlobalAveragePooling2D()(features))
    other = save_model(keras.Model(inputs, outputs), INFO, toy["root"] / "other.keras")
    with pytest.raises(HmtError, match="has no layer 'conv1', the layer the templates were built at"):
        run_sanity(toy["templates"], toy["store"], sample=3, shuffled_model=other)

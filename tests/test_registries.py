"""Every registry of options that grow: generic behaviour, the CLI generated from it, and each entry's contract.

Adding an entry to a registry makes the parametrised tests here run it; an entry that breaks its
registry's contract (a normalisation that lets NaN out, a statistic whose merge is not exact, a
head kind that is not detected from its own output layer) fails here before it reaches a user.
"""
from __future__ import annotations

import keras
import numpy as np
import pytest
from cli_helpers import assert_user_error, run_hmt

from heatmap_templates.analysis.faithfulness import RANKINGS, REMOVALS
from heatmap_templates.analysis.sanity import VARIANTS
from heatmap_templates.analysis.similarity import SIMILARITIES, similarity_scores
from heatmap_templates.data.datasets import UNCERTAIN
from heatmap_templates.data.decode import INTENSITIES
from heatmap_templates.data.preprocess import PREPROCESSING, affine_preprocessing, to_model_input
from heatmap_templates.errors import HmtError, OptionError
from heatmap_templates.explain.cam import CamEngine
from heatmap_templates.explain.cam_methods import METHODS
from heatmap_templates.explain.scores import SCORES
from heatmap_templates.model.attention_prior import ATTENTION_PRIORS
from heatmap_templates.model.backbones import BACKBONES
from heatmap_templates.model.heads import HEADS, detect_head, probabilities_of, reads_logits
from heatmap_templates.model.recipe import SCHEDULES
from heatmap_templates.registry import Registry
from heatmap_templates.synth import LESIONS, SHORTCUTS, render_phantom
from heatmap_templates.templates.members import INCLUDES
from heatmap_templates.templates.normalisation import NORMALISATIONS, normalise
from heatmap_templates.templates.registration import REGISTRATIONS, Reference, Registrar, fallback_chain
from heatmap_templates.templates.statistics import STATISTICS, StatisticsConfig

REGISTRIES = [BACKBONES, METHODS, HEADS, INCLUDES, NORMALISATIONS, PREPROCESSING, REGISTRATIONS, SCORES, SIMILARITIES,
              STATISTICS, LESIONS, SCHEDULES, UNCERTAIN, INTENSITIES, SHORTCUTS, REMOVALS, RANKINGS, VARIANTS,
              ATTENTION_PRIORS]

# (command and its required arguments, flag, registry): every CLI choice that comes from a registry.
CLI_CHOICES = [
    (["heatmaps", "m.keras", "data"], "--method", METHODS),
    (["heatmaps", "m.keras", "data"], "--score", SCORES),
    (["build-templates", "--heatmaps", "h.h5", "--all-classes"], "--registration", REGISTRATIONS),
    (["build-templates", "--heatmaps", "h.h5", "--all-classes"], "--normalisation", NORMALISATIONS),
    (["build-templates", "--heatmaps", "h.h5", "--all-classes"], "--include", INCLUDES),
    (["compare", "x.png"], "--similarity", SIMILARITIES),
    (["train", "data"], "--backbone", BACKBONES),
    (["evaluate", "m.keras", "data"], "--preprocessing", PREPROCESSING),
    (["heatmaps", "m.keras", "data"], "--head", HEADS),
    (["heatmaps", "m.keras", "data"], "--uncertain", UNCERTAIN),
    (["train", "data"], "--schedule", SCHEDULES),
    (["train", "data"], "--prior-penalty", ATTENTION_PRIORS),
    (["train", "data"], "--uncertain", UNCERTAIN),
    (["train", "data"], "--intensity", INTENSITIES),
    (["build-templates", "m.keras", "data", "--all-classes"], "--intensity", INTENSITIES),
    (["synth", "out"], "--shortcut-style", SHORTCUTS),
    (["strategies", "t.h5"], "--similarity", SIMILARITIES),
    (["evaluate-templates", "t.h5", "data"], "--removal", REMOVALS),
    (["sanity", "t.h5"], "--variant", VARIANTS),
]


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda registry: registry.what)
def test_registry_lists_its_entries_and_refuses_unknown_names_naming_the_choices(registry: Registry) -> None:
    names = registry.names()
    assert names and len(set(names)) == len(names)
    assert all(registry.check(name) == name and name in registry for name in names)
    with pytest.raises(OptionError) as caught:
        registry["no-such-entry"]
    error = caught.value
    assert error.parameter == registry.parameter and error.choices == names
    assert str(error) == f"unknown {registry.what} 'no-such-entry'; choose one of {', '.join(names)}"
    assert all(name in registry.help_text("lead") for name in names)
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(names[0], None, help="")


@pytest.mark.parametrize(("arguments", "flag", "registry"), CLI_CHOICES, ids=lambda value: value if isinstance(value, str) else None)
def test_cli_help_lists_every_choice_and_names_the_flag_of_an_unknown_one(arguments: list, flag: str, registry: Registry,
                                                                         capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_hmt([arguments[0], "--help"], capsys, monkeypatch)
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())
    assert all(name in flat for name in registry.names()), flat
    code, _, err = run_hmt([*arguments, flag, "no-such-entry"], capsys, monkeypatch)
    assert_user_error(code, err, f"unknown {flag.lstrip('-')} 'no-such-entry' ({flag}); choose one of {', '.join(registry.names())}")


# --------------------------------------------------------------------------- normalisations


@pytest.mark.parametrize("method", NORMALISATIONS.names())
def test_normalisation_is_per_map_finite_and_idempotent(method: str) -> None:
    rng = np.random.default_rng(0)
    maps = rng.gamma(2.0, 3.0, size=(3, 12, 10)) * np.array([1.0, 1e30, 1e-30])[:, None, None]
    out = normalise(maps, method)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    np.testing.assert_allclose(normalise(maps[1], method), out[1])  # each map on its own
    if NORMALISATIONS[method].scale_invariant:
        np.testing.assert_allclose(out[0], normalise(maps[0] * 7.5, method), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(normalise(out, method), out, rtol=1e-5, atol=1e-6)
    bounds = NORMALISATIONS[method].median_range  # the median histogram's range holds (nearly) every value
    if bounds is not None:
        assert np.mean((out >= bounds[0]) & (out <= bounds[1])) >= 0.99


# --------------------------------------------------------------------------- similarities


@pytest.mark.parametrize("method", SIMILARITIES.names())
def test_similarity_ranks_the_template_itself_above_other_maps(method: str) -> None:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:24, :20]
    template = np.exp(-((yy - 8) ** 2 + (xx - 6) ** 2) / 20.0)
    lungs = np.zeros((24, 20), bool)
    lungs[3:21, 2:18] = True
    others = np.stack([np.exp(-((yy - 16) ** 2 + (xx - 14) ** 2) / 20.0), rng.uniform(0, 1, (24, 20)), np.roll(template, 5, axis=1)])
    scores = similarity_scores(np.concatenate([template[None], others]), template, method, lungs)
    assert scores.shape == (4,) and np.isfinite(scores).all()
    assert scores[0] == pytest.approx(scores.max()) and scores[0] > scores[1:].max()
    assert scores[0] == pytest.approx(1.0, abs=1e-9)


# --------------------------------------------------------------------------- registration methods


def _ellipse_chest(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[:size, :size] / size
    body = ((xx - 0.5) / 0.42) ** 2 + ((yy - 0.55) / 0.45) ** 2 < 1
    lungs = np.zeros((size, size), bool)
    for centre in (0.32, 0.68):
        lungs |= ((xx - centre) / 0.12) ** 2 + ((yy - 0.45) / 0.25) ** 2 < 1
    image = 0.05 + 0.6 * body - 0.35 * lungs
    return image.astype(np.float32), lungs


@pytest.mark.parametrize("method", REGISTRATIONS.names())
def test_registration_method_maps_the_reference_onto_itself(method: str) -> None:
    phantom = render_phantom(0, "normal", 96)
    reference = Reference(phantom.image, phantom.lung_mask)
    registrar = Registrar(method, reference)
    alignment = registrar.estimate(phantom.image)
    assert alignment.method in fallback_chain(method) and fallback_chain(method)[-1] == "none"
    np.testing.assert_allclose(alignment.matrix, np.eye(3)[:2], atol=0.05)
    assert alignment.quality > 0.99
    np.testing.assert_allclose(registrar.warp(phantom.image, alignment), phantom.image, atol=0.05)
    assert registrar.summary()["images"] == 1


# --------------------------------------------------------------------------- template statistics


@pytest.mark.parametrize("name", STATISTICS.names())
def test_statistic_merge_of_halves_equals_one_pass_and_its_state_restores(name: str) -> None:
    config = StatisticsConfig(shape=(10, 8), pca_size=4, n_components=3, bootstrap_replicates=7, median=True, median_bins=16,
                              median_range=(0.0, 1.0))
    maps = np.random.default_rng(2).uniform(0, 1, (9, 10, 8))
    keys = [f"{i:064x}" for i in range(9)]
    whole, first, second = (STATISTICS[name](config) for _ in range(3))
    whole.update(maps, keys)
    first.update(maps[:4], keys[:4])
    second.update(maps[4:], keys[4:])
    first.merge(second)
    for key, value in whole.arrays().items():
        np.testing.assert_allclose(first.arrays()[key], value, rtol=1e-10, atol=1e-10, err_msg=key)
    restored = STATISTICS[name](config)
    restored.restore(first.arrays(), first.scalars(), 9)
    for key, value in whole.results().items():
        if value is None:
            assert restored.results()[key] is None
        else:
            np.testing.assert_allclose(restored.results()[key], value, rtol=1e-8, atol=1e-10, err_msg=key)


# --------------------------------------------------------------------------- head kinds and scores


def _model_with_head(head: str, *, logits: bool = False) -> keras.Model:
    """A tiny CNN whose output layer is of the given head kind (3 classes, or one output for ``sigmoid``); ``logits``:
    the same weights with a linear output layer."""
    inputs = keras.Input((12, 12, 1))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs))
    units = 1 if head == "sigmoid" else 3
    activation = None if logits else {"softmax": "softmax", "linear": None, "sigmoid": "sigmoid", "sigmoids": "sigmoid"}[head]
    model = keras.Model(inputs, keras.layers.Dense(units, activation=activation, name="out")(features))
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


@pytest.mark.parametrize("head", HEADS.names())
def test_head_kind_is_read_from_the_output_layer_and_gives_class_probabilities(head: str) -> None:
    model = _model_with_head(head)
    assert detect_head(model) == head
    outputs = model.predict_on_batch(np.random.default_rng(4).uniform(0, 1, (5, 12, 12, 1)).astype(np.float32))
    probabilities = probabilities_of(outputs, head)
    classes = HEADS[head].class_count(outputs.shape[1])
    assert probabilities.shape == (5, classes) and np.all((probabilities >= 0) & (probabilities <= 1))
    if not HEADS[head].multi_label:
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("score", SCORES.names())
@pytest.mark.parametrize("head", HEADS.names())
def test_every_score_explains_every_class_of_every_head(score: str, head: str) -> None:
    model = _model_with_head(head)
    refusal = SCORES[score].refuses_multi_label if HEADS[head].multi_label else None
    if refusal is not None:
        with pytest.raises(HmtError, match="needs exclusive classes"):
            CamEngine(model, "conv", "gradcam", score)
        return
    engine = CamEngine(model, "conv", "gradcam", score)
    images = np.random.default_rng(5).uniform(0, 1, (4, 12, 12, 1)).astype(np.float32)
    result = engine.all_classes(images)
    classes = HEADS[head].class_count(model.output_shape[-1])
    assert result.raw.shape == (4, classes, 10, 10) and result.upsampled.shape == (4, classes, 12, 12)
    assert np.isfinite(result.raw).all() and result.raw.min() >= 0
    one = engine(images, np.full(4, classes - 1))
    np.testing.assert_allclose(one.raw, result.raw[:, classes - 1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("score", SCORES.names())
@pytest.mark.parametrize("head", HEADS.names())
def test_every_head_named_on_a_linear_output_reads_its_logits_like_its_own_output_layer(score: str, head: str) -> None:
    """--head: the logits of a linear output read as any head kind give the probabilities and maps of the model whose
    output layer applies that kind's activation (the same weights)."""
    if SCORES[score].refuses_multi_label is not None and HEADS[head].multi_label:
        return  # refused for this head whatever its output layer (the test above)
    logits_model, own = _model_with_head(head, logits=True), _model_with_head(head)
    named = CamEngine(logits_model, "conv", "gradcam", score, head=head)
    assert named.head == detect_head(logits_model, head) and (named.head == head or HEADS[named.head].outputs_are_logits)
    images = np.random.default_rng(6).uniform(0, 1, (3, 12, 12, 1)).astype(np.float32)
    expected, result = CamEngine(own, "conv", "gradcam", score).all_classes(images), named.all_classes(images)
    np.testing.assert_allclose(result.probabilities, expected.probabilities, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.raw, expected.raw, rtol=1e-4, atol=1e-6)
    outputs = logits_model.predict_on_batch(images)
    np.testing.assert_allclose(probabilities_of(outputs, named.head, from_logits=reads_logits(logits_model, named.head)),
                               expected.probabilities, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- preprocessing modes


@pytest.mark.parametrize("mode", PREPROCESSING.names())
def test_preprocessing_mode_is_the_same_affine_map_for_uint8_and_unit_input(mode: str) -> None:
    images = np.random.default_rng(6).integers(0, 256, (2, 5, 5), dtype=np.uint8)
    for channels in (1, 3):
        scale, offset = affine_preprocessing(channels, mode)
        expected = (images.astype(np.float32) / 255.0)[..., None] * scale + offset
        np.testing.assert_allclose(to_model_input(images, channels, mode), expected, rtol=1e-6)
        np.testing.assert_allclose(to_model_input(images.astype(np.float32) / 255.0, channels, mode), expected, rtol=1e-6)


def test_class_vs_rest_by_hand() -> None:
    """z_k - log(sum_{j != k} exp z_j) for exclusive classes; the logit itself for a one-output model."""
    import tensorflow as tf

    logits = tf.constant([[1.0, 2.0, -0.5], [0.3, 0.3, 0.3]])
    values = SCORES["class-vs-rest"](logits, tf.nn.softmax(logits), "linear").numpy()
    z = logits.numpy()
    expected = [[row[k] - np.log(np.sum(np.exp(np.delete(row, k)))) for k in range(3)] for row in z]
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    np.testing.assert_allclose(values[1], np.log(1 / 2), rtol=1e-6)  # three equal classes: log-odds log(1/2)
    one = tf.constant([[0.7], [-1.2]])
    np.testing.assert_allclose(SCORES["class-vs-rest"](one, tf.sigmoid(one), "sigmoid").numpy(),
                               SCORES["logit"](one, tf.sigmoid(one), "sigmoid").numpy())


# Each method a paper can cite says which: a "Reference:" line with a link in its docstring (the entry's own function or
# class; for a record such as CamMethod, the callables it holds).
CITED = [METHODS, SIMILARITIES, REGISTRATIONS, STATISTICS, ATTENTION_PRIORS]


def _own_docstrings(entry: object) -> str:
    import dataclasses
    import inspect

    if dataclasses.is_dataclass(entry) and not isinstance(entry, type):
        held = [getattr(entry, field.name) for field in dataclasses.fields(entry)]
        return "\n".join(inspect.getdoc(value) or "" for value in held if callable(value) and not isinstance(value, type))
    return getattr(entry, "__doc__", None) or ""


@pytest.mark.parametrize("registry, name", [(registry, name) for registry in CITED for name in registry.names()],
                         ids=lambda value: value.what if isinstance(value, Registry) else str(value))
def test_every_method_names_its_reference_with_a_link(registry: Registry, name: str) -> None:
    import re

    text = _own_docstrings(registry[name])
    assert re.search(r"Reference:[^\n]*(\n[^\n]*)?(https?://|arXiv:)", text), f"{registry.what} {name!r}: no Reference line with a link"

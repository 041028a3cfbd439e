"""Tests of the CAM engine: hand-computed numbers, an independent reference (tf-keras-vis),
batched == per-image, model shapes (Sequential, Functional, nested base), and error paths."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from heatmap_templates.errors import HmtError
from heatmap_templates.explain.cam import METHODS, CamEngine
from heatmap_templates.explain.cam_methods import Inputs
from heatmap_templates.model.layers import default_cam_layer, resolve_layer

GRADIENT_METHODS = [name for name, method in METHODS.items() if method.inputs is Inputs.GRADIENTS]


# --- hand-computed model: input (6, 6, 2) -> Conv2D 3x3 valid ReLU (3 ch) -> Flatten -> Dense(2) ---

CONV_KERNEL = np.random.default_rng(1).normal(size=(3, 3, 2, 3)).astype(np.float32)
CONV_BIAS = np.array([0.1, -0.2, 0.05], dtype=np.float32)
DENSE_KERNEL = np.random.default_rng(2).normal(size=(4 * 4 * 3, 2)).astype(np.float32)
DENSE_BIAS = np.array([0.3, -0.1], dtype=np.float32)


def hand_model(activation: str | None) -> keras.Model:
    inputs = keras.Input((6, 6, 2))
    conv = keras.layers.Conv2D(3, 3, activation="relu", name="conv")
    dense = keras.layers.Dense(2, activation=activation, name="head")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(conv(inputs))))
    conv.set_weights([CONV_KERNEL, CONV_BIAS])
    dense.set_weights([DENSE_KERNEL, DENSE_BIAS])
    return model


def hand_activations(x: np.ndarray) -> np.ndarray:
    """The conv layer's output, by explicit loops: (N, 4, 4, 3)."""
    out = np.zeros((x.shape[0], 4, 4, 3), dtype=np.float64)
    for i in range(4):
        for j in range(4):
            patch = x[:, i : i + 3, j : j + 3, :]
            out[:, i, j, :] = np.einsum("nabc,abck->nk", patch, CONV_KERNEL) + CONV_BIAS
    return np.maximum(out, 0.0)


def hand_gradients(activations: np.ndarray, targets: np.ndarray, score: str) -> np.ndarray:
    """dS/dA for the Flatten -> Dense head: the target's kernel column (logit), or softmax chain rule."""
    kernel = DENSE_KERNEL.reshape(4, 4, 3, 2)
    logits = activations.reshape(len(activations), -1) @ DENSE_KERNEL + DENSE_BIAS
    grads = np.stack([kernel[..., t] for t in targets])
    if score == "logit":
        return grads
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    expected_kernel = np.einsum("hwkc,nc->nhwk", kernel, probs)
    p_target = probs[np.arange(len(targets)), targets][:, None, None, None]
    return p_target * (grads - expected_kernel)


def numpy_cam(method: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Closed forms as written in the papers / pytorch-grad-cam, per image, in float64."""
    spatial = (1, 2)
    if method == "gradcam":
        cam = np.einsum("nhwc,nc->nhw", a, g.mean(spatial))
    elif method == "gradcampp":
        g2, g3 = g**2, g**3
        alphas = g2 / (2 * g2 + a.sum(spatial, keepdims=True) * g3 + 1e-6)
        alphas = np.where(g != 0, alphas, 0)
        cam = np.einsum("nhwc,nc->nhw", a, (np.maximum(g, 0) * alphas).sum(spatial))
    elif method == "hirescam":
        cam = (g * a).sum(-1)
    elif method == "xgradcam":
        cam = np.einsum("nhwc,nc->nhw", a, (g * a).sum(spatial) / (a.sum(spatial) + 1e-7))
    elif method == "layercam":
        cam = (np.maximum(g, 0) * a).sum(-1)
    return np.maximum(cam, 0.0)


@pytest.fixture(scope="module")
def hand_input() -> np.ndarray:
    return np.random.default_rng(3).uniform(-1, 1, size=(3, 6, 6, 2)).astype(np.float32)


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_hand_model_matches_closed_form(method: str, hand_input: np.ndarray) -> None:
    targets = np.array([0, 1, 1])
    result = CamEngine(hand_model(None), "conv", method)(hand_input, targets)
    a = hand_activations(hand_input.astype(np.float64))
    expected = numpy_cam(method, a, hand_gradients(a, targets, "logit"))
    assert expected.max() > 0
    np.testing.assert_allclose(result.raw, expected, rtol=1e-4, atol=1e-5)
    assert result.upsampled.shape == (3, 6, 6)


def test_logit_and_probability_scores_are_each_right(hand_input: np.ndarray) -> None:
    targets = np.array([1, 0, 1])
    softmax_model = hand_model("softmax")
    a = hand_activations(hand_input.astype(np.float64))
    by_logit = CamEngine(softmax_model, "conv", "hirescam", score="logit")(hand_input, targets)
    by_probability = CamEngine(softmax_model, "conv", "hirescam", score="probability")(hand_input, targets)
    np.testing.assert_allclose(
        by_logit.raw, numpy_cam("hirescam", a, hand_gradients(a, targets, "logit")), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        by_probability.raw, numpy_cam("hirescam", a, hand_gradients(a, targets, "probability")), rtol=1e-4, atol=1e-6
    )
    assert not np.allclose(by_logit.raw, by_probability.raw)
    np.testing.assert_allclose(by_logit.probabilities, softmax_model(hand_input).numpy(), rtol=1e-5, atol=1e-6)
    # The softmax head is left untouched after the trace.
    assert softmax_model.get_layer("head").activation is keras.activations.softmax
    assert "call" not in softmax_model.get_layer("head").__dict__


def test_separate_softmax_activation_layer_head(hand_input: np.ndarray) -> None:
    """A Dense(linear) -> Activation('softmax') head: the logit is the Activation layer's input."""
    linear = hand_model(None)
    split_head = keras.Model(linear.input, keras.layers.Activation("softmax")(linear.output))
    targets = np.array([0, 1, 0])
    np.testing.assert_allclose(
        CamEngine(split_head, "conv", "gradcam")(hand_input, targets).raw,
        CamEngine(linear, "conv", "gradcam")(hand_input, targets).raw,
        rtol=1e-6,
    )


def test_linear_head_probabilities_are_softmaxed(hand_input: np.ndarray) -> None:
    model = hand_model(None)
    engine = CamEngine(model, "conv")
    np.testing.assert_allclose(engine.predict(hand_input), tf.nn.softmax(model(hand_input)).numpy(), rtol=1e-5)


def test_scorecam_matches_per_channel_loop(hand_input: np.ndarray) -> None:
    model = hand_model("softmax")
    targets = np.array([0, 1, 0])
    result = CamEngine(model, "conv", "scorecam", scorecam_chunk=5)(hand_input, targets)
    activations = hand_activations(hand_input.astype(np.float64)).astype(np.float32)
    expected = []
    for image, maps, target in zip(hand_input, activations, targets, strict=True):
        weights = []
        for channel in range(maps.shape[-1]):
            mask = tf.image.resize(maps[..., channel : channel + 1], (6, 6), method="bilinear").numpy()
            span = mask.max() - mask.min()
            mask = (mask - mask.min()) / span if span > 0 else np.zeros_like(mask)
            weights.append(model(image[None] * mask[None]).numpy()[0, target])
        expected.append(np.maximum((maps * np.array(weights)).sum(-1), 0))
    np.testing.assert_allclose(result.raw, np.array(expected), rtol=1e-4, atol=1e-6)


# --- small random models ---


def conv_layers(prefix: str) -> list[keras.layers.Layer]:
    return [
        keras.layers.Conv2D(6, 3, activation="relu", name=f"{prefix}conv_a"),
        keras.layers.MaxPooling2D(name=f"{prefix}pool"),
        keras.layers.Conv2D(8, 3, activation="relu", name=f"{prefix}conv_b"),
    ]


def functional_model(size: int = 32) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    features = inputs
    for layer in conv_layers(""):
        features = layer(features)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(pooled))


def nested_model(size: int = 32) -> keras.Model:
    keras.utils.set_random_seed(0)
    base_in = keras.Input((size, size, 3))
    features = base_in
    for layer in conv_layers(""):
        features = layer(features)
    base = keras.Model(base_in, keras.layers.MaxPooling2D(name="base_pool")(features), name="base")
    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(pooled))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 1, size=(4, 32, 32, 3)).astype(np.float32)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("score", ["logit", "probability"])
def test_gradcam_matches_tf_keras_vis(score: str, images: np.ndarray) -> None:
    import tf_keras_vis.gradcam as gradcam_module  # the independent reference (a dev dependency): never skipped
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    model = functional_model()
    targets = [0, 1, 2, 0]
    modifier = ReplaceToLinear() if score == "logit" else None
    reference = gradcam_module.Gradcam(model, model_modifier=modifier, clone=True)(
        CategoricalScore(targets), images, penultimate_layer="conv_b", normalize_cam=False, expand_cam=False
    )
    ours = CamEngine(model, "conv_b", "gradcam", score=score)(images, np.array(targets)).raw
    informative = [(r, o) for r, o in zip(np.asarray(reference), ours, strict=True) if r.max() > 0]
    assert len(informative) >= 2  # random weights leave some targets with an all-zero (ReLU'd) map
    for reference_map, our_map in informative:
        assert correlation(reference_map, our_map) >= 0.999
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6 * float(np.max(ours)))


def test_gradcampp_against_tf_keras_vis(images: np.ndarray) -> None:
    """tf-keras-vis additionally divides each alpha by its spatial sum (pytorch-grad-cam, the form
    hmt follows, does not), so the maps agree in shape but not exactly: correlation, not equality."""
    import tf_keras_vis.gradcam_plus_plus as plus_module
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    model = functional_model()
    targets = [0, 1, 2, 1]
    reference = plus_module.GradcamPlusPlus(model, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore(targets), images, penultimate_layer="conv_b", normalize_cam=False, expand_cam=False
    )
    ours = CamEngine(model, "conv_b", "gradcampp")(images, np.array(targets)).raw
    assert np.mean([correlation(r, o) for r, o in zip(np.asarray(reference), ours, strict=True)]) >= 0.8


@pytest.mark.parametrize("method", list(METHODS))
def test_batched_equals_per_image(method: str, images: np.ndarray) -> None:
    engine = CamEngine(functional_model(), method=method, scorecam_chunk=5)
    batched = engine(images, "predicted")
    assert batched.raw.max() > 0
    for index in range(len(images)):
        single = engine(images[index : index + 1], batched.targets[index : index + 1])
        np.testing.assert_allclose(single.raw[0], batched.raw[index], rtol=1e-4, atol=1e-6 * batched.raw.max())
        np.testing.assert_allclose(
            single.upsampled[0], batched.upsampled[index], rtol=1e-4, atol=1e-6 * batched.raw.max()
        )
    assert engine.trace_count == 1


@pytest.mark.parametrize("method", list(METHODS))
def test_all_classes_equals_one_target_at_a_time(method: str, images: np.ndarray) -> None:
    """One forward pass for every class gives exactly the per-class maps (what the heatmap store keeps)."""
    engine = CamEngine(functional_model(), method=method, scorecam_chunk=7)
    every = engine.all_classes(images)
    assert every.raw.shape[:2] == (len(images), engine.num_classes)
    assert every.upsampled.shape == (len(images), engine.num_classes, *images.shape[1:3])
    for k in range(engine.num_classes):
        one = engine(images, np.full(len(images), k))
        scale = max(float(one.raw.max()), 1e-12)
        np.testing.assert_allclose(every.raw[:, k], one.raw, rtol=1e-4, atol=1e-6 * scale)
        np.testing.assert_allclose(every.upsampled[:, k], one.upsampled, rtol=1e-4, atol=1e-6 * scale)
    np.testing.assert_allclose(every.probabilities, one.probabilities, rtol=1e-5)
    np.testing.assert_array_equal(every.targets, every.probabilities.argmax(axis=1))


def test_no_retracing_across_batches_and_input_types(images: np.ndarray) -> None:
    engine = CamEngine(functional_model(), method="gradcam")
    engine(images, "predicted")
    engine(tf.constant(images[:3]), np.array([0, 1, 2]))
    engine(images[:1].astype(np.float64), 2)
    assert engine.trace_count == 1


def test_predicted_targets_are_argmax(images: np.ndarray) -> None:
    model = functional_model()
    engine = CamEngine(model)
    result = engine(images, "predicted")
    np.testing.assert_array_equal(result.targets, np.argmax(model(images).numpy(), axis=1))
    np.testing.assert_allclose(engine.predict(images), result.probabilities, rtol=1e-5)
    explicit = engine(images, result.targets)
    np.testing.assert_allclose(explicit.raw, result.raw, rtol=1e-5)


def test_sequential_model_matches_functional(images: np.ndarray) -> None:
    functional = functional_model()
    sequential = keras.Sequential(
        [keras.Input((32, 32, 3)), *conv_layers(""), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3, "softmax")]
    )
    sequential.set_weights(functional.get_weights())
    assert default_cam_layer(sequential) == "conv_b"
    targets = np.array([0, 1, 2, 0])
    np.testing.assert_allclose(
        CamEngine(sequential)(images, targets).raw, CamEngine(functional)(images, targets).raw, rtol=1e-5, atol=1e-7
    )


def test_nested_base_matches_explicit_composition(images: np.ndarray) -> None:
    """Reference: split the model by hand at base/conv_b and differentiate the remainder."""
    model = nested_model()
    assert default_cam_layer(model) == "base/conv_b"
    targets = np.array([2, 0, 1, 2])
    result = CamEngine(model, method="gradcam")(images, targets)
    base = model.get_layer("base")
    below = keras.Model(base.input, base.get_layer("conv_b").output)
    activations = below(images)
    with tf.GradientTape() as tape:
        tape.watch(activations)
        logits_input = model.layers[2](base.get_layer("base_pool")(activations))
        head = model.layers[-1]
        logits = logits_input @ head.kernel + head.bias
        score = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
    gradients = tape.gradient(score, activations).numpy()
    expected = numpy_cam("gradcam", activations.numpy().astype(np.float64), gradients.astype(np.float64))
    np.testing.assert_allclose(result.raw, expected, rtol=1e-4, atol=1e-7)


def test_nested_layer_names_resolve() -> None:
    model = nested_model()
    assert resolve_layer(model, "base/conv_a")[0] == "base/conv_a"
    assert resolve_layer(model, "conv_a")[0] == "base/conv_a"
    assert CamEngine(model, layer="base/conv_a").layer == "base/conv_a"
    with pytest.raises(HmtError, match=r"layer 'nope' not found .*candidates: base/conv_a, base/conv_b"):
        CamEngine(model, layer="nope")


def test_keras_vgg19_nested_base_runs() -> None:
    base = keras.applications.VGG19(weights=None, include_top=False, input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(base(inputs)))
    model = keras.Model(inputs, outputs)
    engine = CamEngine(model, method="gradcam")
    assert engine.layer == f"{base.name}/block5_conv4"
    result = engine(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32), "predicted")
    assert result.raw.shape == (2, 2, 2) and result.upsampled.shape == (2, 32, 32)
    assert np.isfinite(result.upsampled).all()
    assert "call" not in base.get_layer("block5_conv4").__dict__


@pytest.mark.parametrize("method", list(METHODS))
def test_dead_relu_gives_zero_map_not_nan(method: str) -> None:
    inputs = keras.Input((16, 16, 1))
    # A zero kernel with bias -1 under ReLU: every unit is dead, activations and gradients are all zero.
    dead_bias = keras.initializers.Constant(-1.0)
    conv = keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer="zeros", bias_initializer=dead_bias)
    pooled = keras.layers.GlobalAveragePooling2D()(conv(inputs))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    result = CamEngine(model, method=method, scorecam_chunk=3)(np.ones((2, 16, 16, 1), np.float32), [0, 1])
    assert np.array_equal(result.raw, np.zeros((2, 14, 14)))
    assert np.array_equal(result.upsampled, np.zeros((2, 16, 16)))


def test_error_paths(images: np.ndarray) -> None:
    dense_only = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(HmtError, match="model has no convolutional layer with a 4-D output; pass parameter 'layer'"):
        CamEngine(dense_only)
    model = functional_model()
    with pytest.raises(HmtError, match="unknown CAM method 'gradcam2'"):
        CamEngine(model, method="gradcam2")
    with pytest.raises(HmtError, match="unknown score"):
        CamEngine(model, score="prob")
    with pytest.raises(HmtError, match="does not have a 4-D"):
        CamEngine(model, layer="head")
    engine = CamEngine(model)
    with pytest.raises(HmtError, match="target class index 3 is out of range for a model with 3 classes"):
        engine(images, [0, 1, 3, 0])
    with pytest.raises(HmtError, match="target class index -1"):
        engine(images, -1)
    with pytest.raises(HmtError, match="4 integer class indices"):
        engine(images, [0, 1])
    with pytest.raises(HmtError, match="unknown target 'true'"):
        engine(images, "true")
    with pytest.raises(HmtError, match=r"\(N, H, W, C\) batch"):
        engine(images[0], 0)
    with pytest.raises(HmtError, match="scorecam_chunk must be at least 1, got 0"):
        CamEngine(model, method="scorecam", scorecam_chunk=0)


# --- EigenCAM and the inputs each method declares ---


def numpy_eigencam(activations: np.ndarray) -> np.ndarray:
    """Per image, by hand: centre the (h*w, C) matrix's channels (as pytorch-grad-cam does), project it on
    the first right singular vector of numpy's SVD, and flip the sign when the projection's covariance with
    the channel-summed activation is negative. Before ReLU, float64."""
    maps = []
    for image in activations.astype(np.float64):
        h, w, c = image.shape
        matrix = image.reshape(h * w, c)
        centred = matrix - matrix.mean(axis=0)
        _, singular, right_t = np.linalg.svd(centred, full_matrices=False)
        assert singular[0] > 1.05 * singular[1]  # a well-defined first component, so the comparison is fair
        projection = centred @ right_t[0]
        if np.dot(projection, matrix.sum(axis=1)) < 0:
            projection = -projection
        maps.append(projection.reshape(h, w))
    return np.array(maps)


def test_eigencam_matches_hand_computed_svd(hand_input: np.ndarray) -> None:
    activations = hand_activations(hand_input.astype(np.float64))
    expected = numpy_eigencam(activations)
    assert (expected > 0).any() and (expected < 0).any()  # the ReLU and the sign both matter here
    # The method's map before ReLU (sign included), then the engine's raw map (after ReLU) for any targets.
    before_relu = METHODS["eigencam"].compute(tf.constant(activations, tf.float32)).numpy()
    np.testing.assert_allclose(before_relu, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    result = CamEngine(hand_model("softmax"), "conv", "eigencam")(hand_input, np.array([0, 1, 1]))
    np.testing.assert_allclose(result.raw, np.maximum(expected, 0.0), rtol=1e-4, atol=1e-5 * expected.max())
    assert result.upsampled.shape == (3, 6, 6)


def test_eigencam_is_one_map_for_every_class(images: np.ndarray) -> None:
    engine = CamEngine(functional_model(), "conv_b", "eigencam")
    every = engine.all_classes(images)
    assert every.raw.max() > 0
    for k in range(engine.num_classes):
        np.testing.assert_array_equal(every.raw[:, k], every.raw[:, 0])
        np.testing.assert_array_equal(every.upsampled[:, k], every.upsampled[:, 0])
        np.testing.assert_allclose(engine(images, k).raw, every.raw[:, 0], rtol=1e-5, atol=1e-7)


def test_eigencam_correlates_positively_with_the_channel_sum(images: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    model = functional_model()
    below = keras.Model(model.input, model.get_layer("conv_b").output)
    more_images = np.concatenate([images, np.random.default_rng(7).uniform(0, 1, (12, 32, 32, 3)).astype(np.float32)])
    activations = below(more_images).numpy()
    projections = METHODS["eigencam"].compute(tf.constant(activations)).numpy()
    raw = CamEngine(model, "conv_b", "eigencam")(more_images, 0).raw
    for activation, projection, raw_map in zip(activations, projections, raw, strict=True):
        channel_sum = activation.sum(axis=-1)
        assert correlation(projection, channel_sum) > 0
        assert correlation(raw_map, channel_sum) > 0
    # The SVD's own sign is arbitrary: an SVD that returns the opposite (equally valid) singular vectors
    # must give the same maps, so the sign rule, not the SVD's convention, decides.
    original_svd = tf.linalg.svd

    def opposite_svd(matrix, *args, **kwargs):
        singular, left, right = original_svd(matrix, *args, **kwargs)
        return singular, -left, -right

    monkeypatch.setattr(tf.linalg, "svd", opposite_svd)
    flipped = METHODS["eigencam"].compute(tf.constant(activations)).numpy()
    np.testing.assert_allclose(flipped, projections, rtol=1e-5, atol=1e-6 * np.abs(projections).max())


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: object, name: str) -> list[int]:
    """Count the calls of ``owner.name`` (a class's method or a layer's call) while the test runs."""
    calls = [0]
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.parametrize(("method", "gradients", "forward_passes"), [
    ("gradcam", True, 1), ("eigencam", False, 1), ("scorecam", False, 2),  # Score-CAM: + its masked passes
])
def test_the_engine_computes_gradients_only_for_methods_that_declare_them(
    method: str, gradients: bool, forward_passes: int, images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call traces once: gradients only where declared, and one forward pass (traced once; Score-CAM's
    masked passes are one more, traced once inside its map_fn) for a method that declares activations only."""
    model = functional_model()
    gradient_calls = count_calls(monkeypatch, tf.GradientTape, "gradient")
    pool = model.get_layer("pool")  # a layer between the input and the CAM layer: runs once per forward pass
    pool_calls = count_calls(monkeypatch, pool, "call")
    engine = CamEngine(model, "conv_b", method, scorecam_chunk=8)
    engine(images, "predicted")
    assert (gradient_calls[0] > 0) == gradients
    assert pool_calls[0] == forward_passes
    engine.all_classes(images)
    assert (gradient_calls[0] > 0) == gradients
    assert pool_calls[0] == 2 * forward_passes


@pytest.mark.parametrize("kind", list(Inputs))
def test_each_method_gets_exactly_the_inputs_it_declares(kind: Inputs, images: np.ndarray,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from heatmap_templates.explain.cam_methods import CamMethod, MaskedScores

    received: list[tuple] = []

    def spy(*arguments):
        received.append(arguments)
        activations = arguments[0]
        cam = tf.reduce_sum(activations, axis=-1)
        return tf.repeat(cam[:, tf.newaxis], 3, axis=1) if kind is Inputs.MASKED_SCORES else cam

    engine = CamEngine(functional_model(), "conv_b", "gradcam", scorecam_chunk=4)
    monkeypatch.setattr(engine, "_method", CamMethod(spy, kind))  # before the first call, so before tracing
    result = engine(images, "predicted")
    (arguments,) = received
    assert arguments[0].shape[1:] == (13, 13, 8) and arguments[0].dtype == tf.float32
    if kind is Inputs.GRADIENTS:
        assert len(arguments) == 2 and arguments[1].shape == arguments[0].shape
    elif kind is Inputs.MASKED_SCORES:
        assert len(arguments) == 2 and isinstance(arguments[1], MaskedScores)
        masked = arguments[1]
        assert masked.chunk == 4 and masked.num_classes == 3 and masked.images.shape[1:] == (32, 32, 3)
    else:
        assert len(arguments) == 1
    assert result.raw.shape == (4, 13, 13)


def test_cam_method_refuses_an_undeclared_input_kind() -> None:
    from heatmap_templates.explain.cam_methods import CamMethod

    with pytest.raises(TypeError, match="declares its inputs as one of"):
        CamMethod(lambda activations: activations, "activations")


def test_scorecam_chunk_default_belongs_to_score_cam(images: np.ndarray) -> None:
    from heatmap_templates.explain.cam_methods.scorecam import DEFAULT_CHUNK

    model = functional_model()
    default = CamEngine(model, "conv_b", "scorecam")(images[:2], [0, 1]).raw
    explicit = CamEngine(model, "conv_b", "scorecam", scorecam_chunk=DEFAULT_CHUNK)(images[:2], [0, 1]).raw
    np.testing.assert_array_equal(default, explicit)

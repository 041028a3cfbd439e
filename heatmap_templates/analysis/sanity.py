"""Does a template depend on the model? Model-parameter randomisation (Adebayo et al., "Sanity checks for
saliency maps", 2018), applied to dataset-level templates.

On a copy of the model (the user's file is never touched) the layers with weights are re-initialised
from the head downwards, one step at a time (:func:`randomisation_steps`: the head's layers, then
the blocks of a Keras application base, otherwise single layers; at most :data:`MAX_STEPS` steps).
``cascading`` keeps the earlier steps randomised; ``independent`` randomises one step alone. At each
step the maps of a sample of each template's members are computed again, prepared exactly as the
build prepared them, and averaged into a template; its similarity to the template of the same sample
under the trained model is reported (Spearman rank correlation, SciPy; SSIM, scikit-image). A template
whose Spearman correlation stays at or above :data:`FLAG_SPEARMAN` in absolute value once every step is
randomised reflects the images, not the model, and is flagged (:func:`flag`): a structure that survives the
randomisation inverted is still not the model's (a random head can flip a map's sign and keep the image's
edges; Adebayo et al. compare maps with and without their sign for the same reason, and show that maps
which pass for explanations can look like an edge detector's output, which does not depend on any model).
Maps that become all zero are reported as such; they count as lost only where the trained model's were not
all zero already (an all-zero template that stays all zero did not depend on the weights either).

Reference: Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim (2018), "Sanity checks for saliency maps",
NeurIPS, https://arxiv.org/abs/1810.03292.

Data randomisation (a model trained on shuffled labels, ``hmt train --shuffle-labels``) compares that
model's templates of the same sample the same way.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from heatmap_templates.data.preprocess import unit_pixels
from heatmap_templates.errors import HmtError
from heatmap_templates.registry import Registry

MAX_STEPS = 12
_BLOCK = re.compile(r"^(conv\d+_block\d+|block\d+)_")
FLAG_SPEARMAN = 0.5
DEFAULT_SAMPLE = 64
_INITIALIZER_OF = {"kernel": "kernel_initializer", "bias": "bias_initializer", "gamma": "gamma_initializer",
                   "beta": "beta_initializer", "moving_mean": "moving_mean_initializer",
                   "moving_variance": "moving_variance_initializer", "depthwise_kernel": "depthwise_initializer",
                   "pointwise_kernel": "pointwise_initializer", "embeddings": "embeddings_initializer"}
VARIANTS: Registry[bool] = Registry("randomisation variant", parameter="variant")
VARIANTS.add("cascading", True, help="re-initialise from the head down, keeping the earlier steps randomised")
VARIANTS.add("independent", False, help="re-initialise one step alone")


def _block_name(layer_name: str) -> str:
    """The block a convolutional layer belongs to (``block4`` of ``block4_conv1``, ``conv3_block2`` of ResNet's)."""
    match = _BLOCK.match(layer_name)
    if match is None:
        raise HmtError(f"layer {layer_name!r} is in no convolutional block")
    return match.group(1)


@dataclass
class Step:
    """One randomisation step: a name and the layers it re-initialises."""

    name: str
    layers: list


def _has_weights(layer: object) -> bool:
    return bool(getattr(layer, "weights", None)) and not hasattr(layer, "layers")


def randomisation_steps(model, max_steps: int = MAX_STEPS) -> list[Step]:
    """Steps from the output downwards: each layer with weights outside the convolutional blocks (the head) its own
    step, then the blocks (``block5_*``, ``conv5_block3_*``; of the nested base of a transfer-learning model or of a
    flat model), then any other layers with weights (a stem); neighbours are merged into at most ``max_steps``."""
    from heatmap_templates.model.layers import conv_blocks, find_base

    base = find_base(model)
    body = base if base is not None else model
    prefix = f"{base.name}/" if base is not None else ""
    blocks = [[layer for layer in block if _has_weights(layer)] for block in conv_blocks(body)]
    blocks = [block for block in blocks if block]
    in_blocks = {id(layer) for block in blocks for layer in block}
    head = [layer for layer in model.layers if _has_weights(layer) and id(layer) not in in_blocks]
    units: list[Step] = [Step(layer.name, [layer]) for layer in reversed(head)]
    units += [Step(f"{prefix}{_block_name(block[0].name)}", block) for block in reversed(blocks)]
    if base is not None:
        stem = [layer for layer in base.layers if _has_weights(layer) and id(layer) not in in_blocks]
        if stem:
            units.append(Step(f"{prefix}stem", list(reversed(stem))))
    if not units:
        raise HmtError(f"model '{model.name}' has no layers with weights to randomise")
    if len(units) <= max_steps:
        return units
    groups = np.array_split(np.arange(len(units)), max_steps)
    return [Step(f"{units[g[0]].name} .. {units[g[-1]].name}" if len(g) > 1 else units[g[0]].name,
                 [layer for i in g for layer in units[i].layers]) for g in groups]


def reinitialise(layers: Sequence, seed: int) -> None:
    """Draw new weights for ``layers`` from their own initializers (seeded); a weight without one gets a normal draw
    with the spread of its current values."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in layers:
        config = layer.get_config()
        for weight in layer.weights:
            name = weight.path.split("/")[-1]
            initializer_config = config.get(_INITIALIZER_OF.get(name, ""))
            shape = tuple(weight.shape)
            if initializer_config is not None:
                initializer = keras.initializers.get(initializer_config)
                arguments = initializer.get_config()
                if "seed" in arguments:
                    arguments["seed"] = int(rng.integers(2**31))
                    initializer = initializer.__class__(**arguments)
                values = np.asarray(initializer(shape, dtype=weight.dtype))
            else:
                current = np.asarray(weight.numpy())
                values = rng.normal(0.0, float(current.std()) or 0.05, shape).astype(current.dtype)
            weight.assign(values)


def model_copy(model):
    """A copy with its own weights (same layer names), so randomising it leaves the model in memory and on disk as is."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def template_similarity(original: np.ndarray, randomised: np.ndarray) -> dict:
    """Spearman rank correlation (SciPy) and SSIM (scikit-image, on the original's value range) of two templates;
    ``all_zero`` when the randomised one has no signal (then both are None, not NaN), ``original_all_zero`` when the
    original had none either (see :func:`holds`)."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    a, b = np.asarray(original, np.float64), np.asarray(randomised, np.float64)
    original_all_zero = not np.nan_to_num(a).any()
    if not np.isfinite(b).all() or np.ptp(b) == 0:
        return {"spearman": None, "ssim": None, "all_zero": bool(np.nan_to_num(b).max() == 0), "constant": True,
                "original_all_zero": original_all_zero}
    if np.ptp(a) == 0:
        return {"spearman": None, "ssim": None, "all_zero": False, "constant": False, "original_all_zero": original_all_zero}
    spearman = float(spearmanr(a.ravel(), b.ravel()).statistic)
    scaled_b = (b - b.min()) / np.ptp(b) * np.ptp(a) + a.min()  # SSIM compares structure on the original's range
    ssim = float(structural_similarity(a, scaled_b, data_range=float(np.ptp(a))))
    return {"spearman": spearman, "ssim": ssim, "all_zero": False, "constant": False, "original_all_zero": False}


@dataclass
class SanityResult:
    """Per class, the similarity of its sample's template to the trained model's after each step."""

    variant: str
    steps: list[str]
    sample: dict[str, int]
    similarity: dict[str, list[dict]] = field(default_factory=dict)  # class -> one entry per step
    flagged: list[str] = field(default_factory=list)
    data_randomisation: dict[str, dict] | None = None
    notes: list[str] = field(default_factory=list)
    templates: dict[str, list[np.ndarray]] | None = None  # with keep_templates: per class, the original then one per step

    def to_dict(self) -> dict:
        return {"variant": self.variant, "steps": list(self.steps), "sample": dict(self.sample), "similarity": self.similarity,
                "flagged": list(self.flagged), "flag_spearman": FLAG_SPEARMAN, "data_randomisation": self.data_randomisation,
                "notes": list(self.notes)}


def holds(entry: Mapping[str, Any]) -> bool:
    """Whether a randomised template still holds the trained one (an entry of :func:`template_similarity`): its
    Spearman correlation is at least FLAG_SPEARMAN in absolute value (inverted, a structure is still not the
    model's), or it is all zero where the trained one was all zero too (an all-zero map is lost only where the
    trained one was not)."""
    if entry.get("all_zero"):
        return bool(entry.get("original_all_zero"))
    value = entry.get("spearman")
    return value is not None and abs(value) >= FLAG_SPEARMAN


def flag(result: SanityResult) -> list[str]:
    """Classes whose template still :func:`holds` with every step randomised (cascading: the last step; independent:
    every step). Reference: Adebayo et al. (2018), https://arxiv.org/abs/1810.03292 (see the module docstring)."""
    return _flagged(result.variant, result.similarity)


def flagged_of(stored: Mapping[str, Any]) -> list[str]:
    """The flagged classes of a stored sanity result by today's rule, recomputed from its similarities: a result
    stored before the |rho| rule recorded the classes its signed rule flagged (an inverted template was not)."""
    return _flagged(str(stored.get("variant", "cascading")), stored.get("similarity", {}))


def _flagged(variant: str, similarity: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    flagged = []
    for name, entries in similarity.items():
        considered = list(entries[-1:]) if variant == "cascading" else list(entries)
        if considered and all(holds(entry) for entry in considered):
            flagged.append(name)
    return flagged


def _sample_members(template, size: int) -> list:
    """An evenly spaced, deterministic sample of a template's members."""
    positions = np.unique(np.linspace(0, template.count - 1, min(size, template.count)).astype(np.int64))
    return [template.members[i] for i in positions]


def run_sanity(templates_path, heatmaps=None, *, model=None, classes: Sequence[str] | None = None,
               sample: int = DEFAULT_SAMPLE, variant: str = "cascading", seed: int = 0, shuffled_model=None,
               batch_size: int = 32, unsafe_load: bool = False, keep_templates: bool = False,
               progress=None) -> SanityResult:
    """The randomisation check of a templates file's classes (see the module docstring). ``keep_templates`` keeps each
    class's sample template before and after each step in ``result.templates`` (for baselines and custom figures)."""
    from heatmap_templates.analysis.strategy_search import members_store
    from heatmap_templates.data.preprocess import to_model_input
    from heatmap_templates.explain.engine_choice import engine_for
    from heatmap_templates.progress import NullProgress
    from heatmap_templates.templates.prepare import registrar_for
    from heatmap_templates.templates.templates_file import read_templates

    cascading = VARIANTS[variant]
    if sample < 2:
        raise HmtError(f"the sanity sample needs at least 2 members per class, got {sample}")
    progress = progress or NullProgress()
    data = read_templates(templates_path)
    settings = data.settings
    reader = members_store(data, heatmaps)
    trained, info = _load_built_model(templates_path, model, settings, unsafe_load=unsafe_load)
    wanted = list(data.templates) if classes is None else list(classes)
    unknown = [name for name in wanted if name not in data.templates]
    if unknown:
        raise HmtError(f"{templates_path}: has no template of class {unknown[0]!r}")
    registrar = registrar_for(settings.registration, data.reference_image, data.lung_mask)
    members = {name: _sample_members(data.templates[name], sample) for name in wanted}
    stored, alignments = _read_members(reader, wanted, members, registrar)
    inputs = to_model_input(stored.images, info.channels, info.preprocessing)
    templates_of = _SampleTemplates(wanted, members, reader.class_names, registrar, settings.normalisation, alignments)

    def maps_of(engine) -> np.ndarray:
        return _maps_of(engine, inputs, batch_size)

    original = templates_of(stored.raw)
    steps = randomisation_steps(trained)
    result = SanityResult(variant, [step.name for step in steps], {name: len(members[name]) for name in wanted},
                          {name: [] for name in wanted})
    if keep_templates:
        result.templates = {name: [original[name]] for name in wanted}
    progress.start(len(steps), f"randomising ({variant})")
    network = model_copy(trained)  # one copy and one traced engine: re-initialising assigns its variables in place
    engine = engine_for(settings, network, info)  # the CAM the templates were built with
    _randomise_steps(result, steps, trained, network, lambda: templates_of(maps_of(engine)), original, wanted,
                     cascading=cascading, seed=seed, keep_templates=keep_templates, progress=progress)
    progress.finish()
    result.flagged = flag(result)
    if shuffled_model is not None:
        shuffled, shuffled_info = _load_shuffled_model(shuffled_model, info, settings.layer, unsafe_load=unsafe_load)
        randomised = templates_of(maps_of(engine_for(settings, shuffled, shuffled_info)))  # recorded layer, not its default
        result.data_randomisation = {name: template_similarity(original[name], randomised[name]) for name in wanted}
    return result


def _load_built_model(templates_path, model, settings, *, unsafe_load: bool):
    """The model the templates were built with (``model``, or the recorded path), checked by content hash so that the
    check randomises the network that made the maps, loaded as it made them (a model without hmt metadata with the
    recorded preprocessing, pixel scaling, classes and head); (keras model, ModelInfo)."""
    from pathlib import Path

    from heatmap_templates.analysis.compare import load_recorded_model
    from heatmap_templates.explain.heatmaps import model_sha256

    model_path = Path(model) if model is not None else Path(settings.model_path or "")
    if not model_path.is_file():
        raise HmtError(f"{templates_path}: the model it was built with ({model_path}) is not there; give it with $model",
                       parameters=("model",))
    if model_sha256(model_path) != settings.model_sha256:
        raise HmtError(f"{model_path}: is not the model the templates were built with")
    return load_recorded_model(model_path, settings, unsafe_load=unsafe_load)  # the input its maps were made with


def _read_members(reader, wanted: Sequence[str], members: dict[str, list], registrar) -> tuple:
    """The sampled members' stored images and maps (one batch, class by class) and each one's registration (kept in
    the file, or estimated again for files older than schema 3), so templates are prepared as the build did."""
    from heatmap_templates.templates.prepare import member_alignment

    image_shape = (int(reader.settings.input_size[0]), int(reader.settings.input_size[1]))
    where = {path: index for index, path in enumerate(reader.paths)}
    missing = [m.path for name in wanted for m in members[name] if m.path not in where]
    if missing:
        raise HmtError(f"{reader.path}: holds no maps of {missing[0]}; give the heatmap store the templates were built from")
    indices = np.array([where[m.path] for name in wanted for m in members[name]])
    alignments = [member_alignment(m, image_shape) for name in wanted for m in members[name]]
    (stored,) = reader.iter_batches(len(indices), indices)
    if any(a is None for a in alignments):  # a templates file older than schema 3: register the images again
        alignments = registrar.estimate_many([unit_pixels(image) for image in stored.images])
    return stored, alignments


class _SampleTemplates:
    """Each class's sample template from all-class maps (N, K, h, w) of the sampled images, prepared as the build
    prepares members' maps, so the trained and the randomised templates compare like for like."""

    def __init__(self, wanted: Sequence[str], members: dict[str, list], class_names: Sequence[str], registrar,
                 normalisation: str, alignments: list) -> None:
        self.wanted, self.class_names, self.registrar = list(wanted), class_names, registrar
        self.normalisation, self.alignments = normalisation, alignments
        self.spans, start = {}, 0
        for name in wanted:
            self.spans[name] = slice(start, start + len(members[name]))
            start += len(members[name])

    def __call__(self, raw: np.ndarray) -> dict[str, np.ndarray]:
        """The templates of ``raw``'s maps, by class."""
        from heatmap_templates.templates.prepare import prepare_maps

        out = {}
        for name in self.wanted:
            k = self.class_names.index(name)
            part = self.spans[name]
            out[name] = prepare_maps(None, raw[part, k], self.registrar, self.normalisation,
                                     alignments=self.alignments[part]).maps.mean(axis=0)
        return out


def _maps_of(engine, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Every class's raw CAM maps of ``inputs`` from ``engine``, a batch at a time (bounded memory)."""
    return np.concatenate([engine.all_classes(inputs[i:i + batch_size]).raw for i in range(0, len(inputs), batch_size)])


def _randomise_steps(result: SanityResult, steps: Sequence, trained, network, templates_now, original: dict[str, np.ndarray],
                     wanted: Sequence[str], *, cascading: bool, seed: int, keep_templates: bool, progress) -> None:
    """Re-initialise the copy ``network`` step by step (cascading, or each step alone from the trained weights) and
    record each class's template similarity to the trained one after every step (``templates_now`` recomputes them)."""
    trained_weights = trained.get_weights()
    for number, step in enumerate(steps):
        if not cascading:
            network.set_weights(trained_weights)
        reinitialise([_same_layer(network, layer) for layer in step.layers], seed + number)
        randomised = templates_now()
        for name in wanted:
            result.similarity[name].append({"step": step.name, **template_similarity(original[name], randomised[name])})
            if keep_templates:
                assert result.templates is not None  # kept when asked for
                result.templates[name].append(randomised[name])
        progress.advance()


def _load_shuffled_model(shuffled_model, info, layer: str, *, unsafe_load: bool):
    """The model trained on shuffled labels, for data randomisation; its classes must be the templates' own, and it
    must have the layer the templates were built at (its maps are compared with theirs)."""
    from heatmap_templates.model.layers import resolve_layer
    from heatmap_templates.model.model_file import load_model

    shuffled, shuffled_info = load_model(shuffled_model, unsafe=unsafe_load)
    if list(shuffled_info.class_names) != list(info.class_names):
        raise HmtError(f"{shuffled_model}: classes {shuffled_info.class_names} differ from the templates' {info.class_names}")
    try:
        resolve_layer(shuffled, layer)  # the engine's own lookup: a path, or a unique plain name
    except HmtError:
        raise HmtError(f"{shuffled_model}: has no layer {layer!r}, the layer the templates were built at; train it with "
                       "the same backbone") from None
    return shuffled, shuffled_info


def _same_layer(network, layer):
    """The layer of a model copy that corresponds to ``layer`` of the original (looked up inside nested bases)."""
    from heatmap_templates.model.layers import walk_layers

    for _, candidate in walk_layers(network):
        if candidate.name == layer.name:
            return candidate
    raise HmtError(f"the model copy has no layer {layer.name!r}")

"""Training: a classifier on a labelled data set, with a patient-grouped split, as the papers do.

With a frozen base, training computes the base's pooled features once and fits the head on them:
global average pooling has no weights, so the head sees exactly what it would see through the
full model, and an epoch costs a head pass instead of a VGG pass. Augmentation and fine-tuning
need the full model and train through it.

Images are held in memory as uint8 at the model's input size (what every other command feeds the
model too, :mod:`heatmap_templates.data.preprocess`); the model's preprocessing runs inside tf.data.
"""
from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from heatmap_templates.data.datasets import (
    DEFAULT_UNCERTAIN,
    SPLIT_NAMES,
    Dataset,
    Sample,
    dataset_fingerprint,
    patient_groups,
    relative_path,
    split_dataset,
)
from heatmap_templates.data.decode import DEFAULT_INTENSITY, INTENSITIES
from heatmap_templates.data.disk_arrays import DiskArray
from heatmap_templates.data.preprocess import load_images
from heatmap_templates.errors import BadFileError, HmtError, Problem, SkipLog, display_path
from heatmap_templates.model.attention_prior import (
    ATTENTION_PRIORS,
    DEFAULT_PRIOR_PENALTY,
    MaskSource,
    PriorRun,
    choose_weight,
    fresh_copy,
    parse_attention_prior,
    prior_model,
    prior_record,
    prior_rows,
    validation_judge,
)
from heatmap_templates.model.backbones import (
    BACKBONES,
    DEFAULT_BACKBONE,
    DEFAULT_WEIGHTS,
    BackboneSpec,
    as_size,
    build_model,
    resolve_weights,
)
from heatmap_templates.model.evaluation import DEFAULT_BATCH_SIZE, predict_in_batches, predict_probabilities
from heatmap_templates.model.input_pipeline import image_pipeline, prior_pipeline, rows_dataset
from heatmap_templates.model.layers import default_cam_layer, find_base, unfreeze_last_blocks
from heatmap_templates.model.model_file import ModelInfo
from heatmap_templates.model.objectives import Objective, objective_for
from heatmap_templates.model.recipe import (
    DEFAULT_SCHEDULE,
    SCHEDULES,
    averaging_start,
    recalibrate_batch_norm,
    uses_early_stopping,
    weight_averager,
)
from heatmap_templates.progress import Progress

DEFAULT_MEMORY_BUDGET_GB = 4.0  # decoded training data held in memory; more streams from a disk cache
AUTO_AUGMENT_IMAGES = 20_000  # training images up to which a from-scratch backbone augments by default


@dataclass
class TrainConfig:
    """Training settings; defaults follow the first paper (Adam, lr 1e-3, categorical cross-entropy, frozen base)."""

    backbone: str = DEFAULT_BACKBONE
    weights: str = DEFAULT_WEIGHTS  # auto | imagenet | none | path to a weights file; auto = imagenet, or none for `small`
    epochs: int = 20
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float = 1e-3
    input_size: int | None = None  # square side in pixels; None = the backbone's default
    seed: int = 0
    augment: bool | None = None  # None: on for a backbone trained from scratch on a small data set (AUTO_AUGMENT_IMAGES)
    fine_tune_blocks: int = 0
    fine_tune_epochs: int = 10
    fine_tune_learning_rate: float = 1e-5
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    patience: int = 8  # epochs without validation-loss improvement, with the constant schedule
    schedule: str = DEFAULT_SCHEDULE  # recipe.SCHEDULES
    warmup_epochs: int = 2
    average_last: float = 0.25  # share of the last epochs whose weights are averaged (0: none)
    label_smoothing: float = 0.0  # share of each target moved towards uniform (0: none)
    weight_decay: float = 0.0  # decoupled weight decay (AdamW) of the kernels, scaled by the learning rate (0: Adam)
    dense_units: int = 256
    dropout: float = 0.5
    cache_features: bool = True
    deterministic: bool = True
    patient_regex: str | None = None
    strict: bool = False
    intensity: str = DEFAULT_INTENSITY  # how integer pixels are scaled (decode.INTENSITIES); recorded in the model
    binary: str | None = None  # "POS" or "POS:NEG": one sigmoid output, POS against every other class (NEG: not-POS)
    uncertain: str = DEFAULT_UNCERTAIN  # how a multi-label data set's uncertain findings were read (recorded)
    memory_budget_gb: float = DEFAULT_MEMORY_BUDGET_GB  # decoded images (and features) beyond it stream from disk
    shuffle_labels: bool = False  # train on randomly permuted training labels: the data-randomisation sanity check
    cache_dir: str | None = None  # where streamed images are cached during training (default: the system's temp folder)
    attention_prior: str | None = None  # "lungs[:WEIGHT]": penalise every class's explanation outside each image's lungs
    prior_penalty: str = DEFAULT_PRIOR_PENALTY  # attention_prior.ATTENTION_PRIORS
    outside_lungs_augment: float = 0.0  # probability that a training image's pixels outside the lungs are removed

    @property
    def uses_masks(self) -> bool:
        """Training needs each training image's lung mask (the attention prior or outside-lungs augmentation)."""
        return self.attention_prior is not None or self.outside_lungs_augment > 0

    def validate(self) -> None:
        """Raise :class:`HmtError` for settings that cannot work."""
        spec = BACKBONES[self.backbone]
        if self.epochs < 1 or self.batch_size < 1:
            raise HmtError("epochs and batch size must be at least 1")
        if not (self.learning_rate > 0 and self.fine_tune_learning_rate > 0):
            raise HmtError("learning rates must be positive")
        if self.input_size is not None and self.input_size < spec.min_input_side:
            raise HmtError(f"{self.backbone} needs an input size of at least {spec.min_input_side} px, got {self.input_size}")
        if self.fine_tune_blocks < 0 or self.fine_tune_epochs < 0:
            raise HmtError("$fine_tune_blocks and $fine_tune_epochs must not be negative",
                           parameters=("fine_tune_blocks", "fine_tune_epochs"))
        if self.fine_tune_blocks and spec.application is None:
            raise HmtError("`small` trains every layer from scratch; $fine_tune_blocks applies to pretrained backbones only",
                           parameters=("fine_tune_blocks",))
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise HmtError("validation and test fractions must be in [0, 1) and leave images for training")
        INTENSITIES.check(self.intensity)
        SCHEDULES.check(self.schedule)
        if self.warmup_epochs < 0 or not 0 <= self.average_last < 1:
            raise HmtError("warm-up epochs must not be negative and the averaged share must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise HmtError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.weight_decay < 1:
            raise HmtError(f"weight decay must be in [0, 1), got {self.weight_decay}")
        weights = resolve_weights(self.backbone, self.weights)
        if weights not in ("imagenet", "none") and not Path(weights).is_file():
            raise BadFileError(weights, "weights file not found ($weights takes imagenet, none, or the path of a weights file)",
                               parameters=("weights",))
        if not 0 <= self.dropout < 1 or self.dense_units < 1:
            raise HmtError("dropout must be in [0, 1) and dense units at least 1")
        if not self.memory_budget_gb > 0:
            raise HmtError(f"the memory budget must be positive, got {self.memory_budget_gb} GB")
        self._validate_prior(spec)

    def _validate_prior(self, spec: BackboneSpec) -> None:
        if self.attention_prior is not None:
            parse_attention_prior(self.attention_prior)
        ATTENTION_PRIORS.check(self.prior_penalty)
        if not 0 <= self.outside_lungs_augment <= 1:
            raise HmtError(f"$outside_lungs_augment is a probability in [0, 1], got {self.outside_lungs_augment}",
                           parameters=("outside_lungs_augment",))
        if self.uses_masks and self.cache_features and spec.application is not None and not self.augment:
            raise HmtError("cached-feature training (a frozen pretrained base, no augmentation) sees pooled features only, "
                           "not where they came from; $attention_prior and $outside_lungs_augment train on images: add $augment",
                           parameters=("attention_prior", "outside_lungs_augment", "augment"))


@dataclass(frozen=True)
class EpochLog:
    """One finished epoch, for per-epoch progress lines."""

    phase: str  # "head" (cached features), "train" (full model) or "fine-tune"
    epoch: int  # 1-based within the phase
    epochs: int
    loss: float
    accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    seconds: float


@dataclass
class TrainResult:
    """A trained model with its metadata, history, validation- and test-split reports and skipped files."""

    model: object  # keras.Model
    info: ModelInfo
    history: list[dict]
    test_report: dict | None
    val_report: dict | None  # the delivered model (weights averaged, batch norm re-estimated) on the validation split
    problems: list[Problem]
    split_counts: dict[str, dict[str, int]]
    seconds: float


# --------------------------------------------------------------------------- training


def _epoch_callback(phase: str, epochs: int, history: list[dict], on_epoch: Callable[[EpochLog], None] | None):
    import keras

    class _Recorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            entry = EpochLog(
                phase=phase, epoch=epoch + 1, epochs=epochs,
                loss=float(logs.get("loss", math.nan)), accuracy=float(logs.get("accuracy", math.nan)),
                val_loss=float(logs["val_loss"]) if "val_loss" in logs else None,
                val_accuracy=float(logs["val_accuracy"]) if "val_accuracy" in logs else None,
                seconds=time.perf_counter() - self._started,
            )
            history.append(asdict(entry))
            if on_epoch is not None:
                on_epoch(entry)

    return _Recorder()


UNDECAYED = ("bias", "gamma", "beta")  # variable names AdamW leaves alone


def optimizer(rate: object, weight_decay: float):
    """Adam, or AdamW with decoupled ``weight_decay`` (Loshchilov & Hutter 2019) on the kernels only: biases and
    batch-norm scales and offsets are left undecayed, as is usual (decaying them only fights the normalisation)."""
    import keras

    if weight_decay <= 0:
        return keras.optimizers.Adam(rate)
    adamw = keras.optimizers.AdamW(rate, weight_decay=weight_decay)
    adamw.exclude_from_weight_decay(var_names=list(UNDECAYED))
    return adamw


def _fit(model, train_data, val_data, *, epochs: int, learning_rate: float, recipe: TrainConfig, steps_per_epoch: int,
         loss: tuple[object, list], class_weight: dict | None, phase: str, history: list[dict], on_epoch,
         calibration=None) -> dict:
    """Compile and fit with Adam (AdamW with the config's weight decay) and the objective's ``loss`` (loss, metrics)
    under the config's recipe.

    A constant rate stops early on validation loss (best weights restored); a decaying schedule runs
    every epoch, then the weights of the last ``average_last`` share of epochs are averaged and the
    averaged network's batch-norm statistics are re-estimated on ``calibration`` (training input batches).
    """
    import keras

    rate = SCHEDULES[recipe.schedule](learning_rate, epochs, steps_per_epoch, recipe.warmup_epochs)
    model.compile(optimizer=optimizer(rate, recipe.weight_decay), loss=loss[0], metrics=loss[1])
    callbacks = [_epoch_callback(phase, epochs, history, on_epoch)]
    stopper = None
    if val_data is not None and uses_early_stopping(recipe.schedule):
        stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=recipe.patience, restore_best_weights=True)
        callbacks.append(stopper)
    start = averaging_start(epochs, recipe.average_last) if stopper is None else None
    if start is not None:
        callbacks.append(weight_averager(start))
    model.fit(train_data, validation_data=val_data, epochs=epochs, class_weight=class_weight or None,
              callbacks=callbacks, shuffle=False, verbose=0)
    recalibrated = start is not None and calibration is not None and recalibrate_batch_norm(model, calibration)
    return {
        "phase": phase,
        "schedule": recipe.schedule,
        "epochs_run": sum(1 for row in history if row["phase"] == phase),
        "best_epoch": (stopper.best_epoch + 1) if stopper is not None else epochs,
        "stopped_early": bool(stopper is not None and stopper.stopped_epoch > 0),
        "averaged_epochs": 0 if start is None else epochs - start,
        "batch_norm_recalibrated": bool(recalibrated),
    }


def pooled_features(model, images: np.ndarray | DiskArray, info: ModelInfo, *, batch_size: int = DEFAULT_BATCH_SIZE,
                    progress: Progress | None = None, to_disk: Path | None = None) -> np.ndarray | DiskArray:
    """The frozen base's globally pooled features (N, D): the head's exact input; in a DiskArray at ``to_disk``
    (written chunk by chunk) when given."""
    import keras

    extractor = keras.Model(model.inputs, model.get_layer("avg_pool").output)
    width = extractor.output_shape[-1]
    if to_disk is not None:
        features = DiskArray(to_disk, (width,), np.float32)
        for chunk in predict_in_batches(extractor, images, info, batch_size, progress, "computing base features"):
            features.append(chunk)
        return features
    chunks = list(predict_in_batches(extractor, images, info, batch_size, progress, "computing base features"))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros((0, width), np.float32)


def head_model(model):
    """A model from pooled features to class probabilities that shares the head layers (and weights) of ``model``."""
    import keras

    dense = model.get_layer("head_dense")
    features = keras.Input(shape=(dense.kernel.shape[0],), name="pooled_features")
    x = dense(features)
    x = model.get_layer("head_dropout")(x)
    return keras.Model(features, model.get_layer("predictions")(x), name="hmt_head")


def fit_head_on_features(model, train_features: np.ndarray | DiskArray, train_targets: np.ndarray,
                         val_features: np.ndarray | DiskArray | None, val_targets: np.ndarray | None, *, epochs: int,
                         learning_rate: float, batch_size: int, seed: int, recipe: TrainConfig | None = None,
                         loss: tuple[object, list] = ("categorical_crossentropy", ["accuracy"]),
                         class_weight: dict | None = None, history: list[dict] | None = None,
                         on_epoch: Callable[[EpochLog], None] | None = None) -> dict:
    """Train ``model``'s head on cached pooled features; the full model's head weights change with it.

    ``recipe`` gives the schedule, warm-up, patience and weight averaging (default: TrainConfig's);
    ``loss`` and the targets come from the objective (:mod:`heatmap_templates.model.objectives`).
    """
    history = [] if history is None else history
    train_data = rows_dataset(train_features, train_targets, batch_size, shuffle_seed=seed)
    val_data = None
    if val_features is not None and val_targets is not None and len(val_features):
        val_data = rows_dataset(val_features, val_targets, batch_size)
    return _fit(head_model(model), train_data, val_data, epochs=epochs, learning_rate=learning_rate,
                recipe=recipe or TrainConfig(), steps_per_epoch=math.ceil(len(train_features) / batch_size),
                loss=loss, class_weight=class_weight or None, phase="head", history=history, on_epoch=on_epoch)


@contextmanager
def seeded(seed: int, deterministic: bool = True) -> Iterator[None]:
    """Seed Python, NumPy, TensorFlow and Keras; with ``deterministic``, use deterministic TF kernels inside the block.

    TensorFlow's op determinism is a process-wide switch, so the previous state is restored on exit
    (through TensorFlow's own config module, which the public API only exposes half of).
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework import config as tf_config

    keras.utils.set_random_seed(seed)
    was_enabled = tf_config.is_op_determinism_enabled()
    if deterministic and not was_enabled:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if deterministic and not was_enabled:
            tf_config.disable_op_determinism()


def train(dataset: Dataset, config: TrainConfig | None = None, *, progress: Progress | None = None,
          on_epoch: Callable[[EpochLog], None] | None = None, masks: MaskSource | None = None) -> TrainResult:
    """Split ``dataset`` by patient, train a classifier as ``config`` says, and evaluate it on the test split.

    Steps: seeded patient-grouped split; decode into memory (bad files skipped and reported);
    build the model; with a frozen base and no augmentation, cache pooled base features and fit
    the head on them, otherwise fit the full model through tf.data; optional fine-tuning of the
    last base blocks at a smaller learning rate; finally the test-split report. ``on_epoch``
    receives each finished epoch (the CLI prints it); ``progress`` sees decoding and feature passes. ``masks`` gives
    each training image's lung mask when the config's attention prior or outside-lungs augmentation asks for them
    (:mod:`heatmap_templates.model.attention_prior`; ``heatmap_templates.analysis.prior_masks`` builds one).
    """
    config = config or TrainConfig()
    config.validate()
    if config.uses_masks and masks is None:
        raise HmtError("$attention_prior and $outside_lungs_augment need each training image's lung mask: pass a mask "
                       "source (train's masks argument)", parameters=("attention_prior", "outside_lungs_augment"))
    started = time.perf_counter()
    spec = BACKBONES[config.backbone]
    weights = resolve_weights(config.backbone, config.weights)
    if len(dataset.class_names) < (1 if dataset.multi_label else 2):
        raise HmtError(f"{display_path(dataset.root)}: need at least 2 classes to train, found {len(dataset.class_names)}")
    empty = [name for name, count in dataset.counts().items() if count == 0]
    if empty:
        noun = "finding" if dataset.multi_label else "class"
        raise HmtError(f"{display_path(dataset.root)}: {noun} {', '.join(empty)} has no {'positive ' if dataset.multi_label else ''}images")
    objective = objective_for(dataset, config.binary)
    size = as_size(config.input_size or spec.default_input_side)
    with seeded(config.seed, config.deterministic), _cache_folder(dataset, size, config) as cache:
        return _train_seeded(dataset, config, spec, weights, objective, size, progress, on_epoch, started, cache, masks)


@contextmanager
def _cache_folder(dataset: Dataset, size: tuple[int, int], config: TrainConfig) -> Iterator[Path | None]:
    """A temporary folder for decoded images when the data set's images at input size exceed the memory budget
    (removed afterwards), else None: training then holds them in memory."""
    # uint8 gray, what training keeps per image, and with the attention prior its rows' mask and removed copy too
    channels = 1 + (config.uses_masks + (config.outside_lungs_augment > 0) if config.uses_masks else 0)
    needed = len(dataset.samples) * size[0] * size[1] * channels
    if needed <= config.memory_budget_gb * 2**30:
        yield None
        return
    try:
        folder = tempfile.mkdtemp(prefix="hmt-train-", dir=config.cache_dir)
    except OSError as error:
        raise BadFileError(config.cache_dir or tempfile.gettempdir(), f"cannot create a training cache folder ({error.strerror})") from None
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _train_seeded(dataset: Dataset, config: TrainConfig, spec: BackboneSpec, weights: str, objective: Objective,
                  size: tuple[int, int], progress: Progress | None, on_epoch: Callable[[EpochLog], None] | None,
                  started: float, cache: Path | None, masks: MaskSource | None = None) -> TrainResult:
    """The body of :func:`train`, run with seeds set; the model is built first, so a weights problem stops it early.
    With a ``cache`` folder, decoded images (and pooled features) live in files there instead of memory."""
    class_names = objective.class_names
    model = build_model(config.backbone, len(class_names), size, weights, dense_units=config.dense_units,
                        dropout=config.dropout, head=objective.head)
    skip_log = SkipLog(config.strict, dataset.problems)
    images, labels, kept = _decode_splits(dataset, config, objective, size, skip_log, progress, cache)

    info = ModelInfo(
        class_names=class_names, backbone=config.backbone, input_size=size, channels=spec.channels,
        preprocessing=spec.preprocessing, cam_layer=default_cam_layer(model), head=objective.head, intensity=config.intensity,
        dataset_fingerprint=dataset_fingerprint(dataset), negatives=objective.negatives,
        split={name: [relative_path(s, dataset.root) for s in kept[name]] for name in SPLIT_NAMES},
    )
    class_weight = objective.class_weight(labels["train"])
    loss = objective.loss_and_metrics(labels["train"], config.label_smoothing)
    targets = {name: objective.targets(labels[name]) for name in SPLIT_NAMES}
    history: list[dict] = []
    augment = _augments(config, spec, len(images["train"]))
    cached = config.cache_features and spec.application is not None and not augment
    prior = _prior_run(config, masks, kept["train"], images["train"], cache)

    def fit(weight: float | None) -> tuple:
        run = None if prior is None else replace(prior, weight=weight)
        fitted, runs = (model, history) if weight is None or weight == weight_given else (fresh_copy(model, config.seed), [])
        phases = _fit_phases(fitted, info, images, targets, config, spec, augment=augment, cached=cached, loss=loss,
                             class_weight=class_weight, history=runs, progress=progress, on_epoch=on_epoch, cache=cache,
                             prior=run)
        return fitted, phases, runs

    weight_given = None if prior is None else prior.weight
    if prior is not None and prior.penalty is not None and prior.weight is None:
        judge = validation_judge(info, loss[0], images["val"], targets["val"], masks, kept["val"], batch_size=config.batch_size,
                                 seed=config.seed, to_disk=None if cache is None else cache / "val_prior.u8")
        weight, (model, phases, history), prior.summary["weight_choice"] = choose_weight(fit, judge)
        prior.weight = weight
    else:
        _, phases, _ = fit(weight_given)

    # The model as delivered: the last epoch's validation numbers in the history predate the weight averaging, so the
    # validation split is scored again; that, not the test split, is what a recipe or a setting is chosen on.
    val_report = _split_report(model, info, objective, images["val"], labels["val"], config, progress, kept["val"])
    test_report = _split_report(model, info, objective, images["test"], labels["test"], config, progress, kept["test"])
    seconds = time.perf_counter() - started
    split_counts = {name: objective.counts(labels[name]) for name in SPLIT_NAMES}
    info.training = {
        "config": asdict(config),
        "weights": weights,
        "cached_features": cached,
        "augmented": augment,
        "class_weights": {class_names[k]: w for k, w in (class_weight or {}).items()},
        "phases": phases,
        "history": history,
        "split_counts": split_counts,
        "skipped": len(skip_log),
        "val_report": val_report,
        "test_report": test_report,
        "seconds": round(seconds, 2),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": display_path(dataset.root),
        "streamed_from_disk": cache is not None,
        "shuffled_labels": config.shuffle_labels,
        **({} if prior is None else {"attention_prior": prior_record(prior)}),
        **({"uncertain": config.uncertain} if dataset.multi_label else {}),
    }
    return TrainResult(model=model, info=info, history=history, test_report=test_report, val_report=val_report,
                       problems=skip_log.problems,
                       split_counts=split_counts, seconds=seconds)


def _decode_splits(dataset: Dataset, config: TrainConfig, objective: Objective, size: tuple[int, int], skip_log: SkipLog,
                   progress: Progress | None, cache: Path | None,
                   ) -> tuple[dict[str, np.ndarray | DiskArray], dict[str, np.ndarray], dict[str, list[Sample]]]:
    """Split by patient and decode each split at input size (into ``cache`` files when given): images, labels, samples
    kept. Stops when a class has no usable training image, since the model could not learn it."""
    fractions = (1.0 - config.val_fraction - config.test_fraction, config.val_fraction, config.test_fraction)
    splits = split_dataset(dataset, fractions=fractions, seed=config.seed)  # by the data set's own classes
    images: dict[str, np.ndarray | DiskArray] = {}
    labels: dict[str, np.ndarray] = {}
    kept: dict[str, list[Sample]] = {}
    for name in SPLIT_NAMES:
        images[name], kept[name] = load_images(splits[name], size, skip_log, intensity=config.intensity, progress=progress,
                                               description=f"decoding {name} images",
                                               to_disk=None if cache is None else cache / f"{name}_images.u8")
        labels[name] = objective.labels(kept[name])
    if config.shuffle_labels:  # the labels no longer say anything about the images (Adebayo et al. 2018)
        labels["train"] = np.random.default_rng(config.seed).permutation(labels["train"])
    missing = objective.missing(labels["train"])
    if missing:
        raise HmtError(f"{display_path(dataset.root)}: no usable training images for class {', '.join(missing)}")
    return images, labels, kept


def _fit_phases(model, info: ModelInfo, images: dict, targets: dict, config: TrainConfig, spec: BackboneSpec, *,
                augment: bool, cached: bool, loss: tuple[object, list], class_weight: dict | None, history: list[dict],
                progress: Progress | None, on_epoch: Callable[[EpochLog], None] | None, cache: Path | None,
                prior: PriorRun | None = None) -> list[dict]:
    """Fit the head (on cached pooled features when ``cached``, else on images), then fine-tune the base's last blocks
    when asked; the phases' records, in order (``history`` gets every epoch)."""
    phases = []
    if cached:
        has_val = len(images["val"]) > 0
        features = {name: pooled_features(model, images[name], info, batch_size=config.batch_size, progress=progress,
                                          to_disk=None if cache is None else cache / f"{name}_features.f32")
                    for name in ("train", "val")}
        phases.append(fit_head_on_features(
            model, features["train"], targets["train"], features["val"] if has_val else None, targets["val"],
            epochs=config.epochs, learning_rate=config.learning_rate, batch_size=config.batch_size, seed=config.seed,
            recipe=config, loss=loss, class_weight=class_weight, history=history, on_epoch=on_epoch))
    else:
        phases.append(_fit_full(model, info, images, targets, config, augment, config.epochs, config.learning_rate,
                                "head" if spec.application else "train", loss, class_weight, history, on_epoch, prior))
    if config.fine_tune_blocks and config.fine_tune_epochs:
        unfreeze_last_blocks(model, config.fine_tune_blocks)
        phases.append(_fit_full(model, info, images, targets, config, augment, config.fine_tune_epochs,
                                config.fine_tune_learning_rate, "fine-tune", loss, class_weight, history, on_epoch, prior))
        find_base(model).trainable = False  # saved models come back frozen; the weights keep the fine-tuning
    return phases


def _split_report(model, info: ModelInfo, objective: Objective, images: np.ndarray | DiskArray, labels: np.ndarray,
                  config: TrainConfig, progress: Progress | None, samples: Sequence[Sample]) -> dict | None:
    """The objective's report of the trained model on one split's images (None for an empty split); its intervals
    resample the split's patients."""
    if not len(images):
        return None
    probabilities = predict_probabilities(model, info, images, batch_size=config.batch_size, progress=progress)
    return objective.report(probabilities, labels, groups=patient_groups(samples))


def _augments(config: TrainConfig, spec: BackboneSpec, train_images: int) -> bool:
    """Whether training augments: as asked, or (``augment=None``) for a backbone trained from scratch on a small
    data set, where it matters most; a frozen pretrained base keeps its fast cached-feature training."""
    if config.augment is not None:
        return bool(config.augment)
    return spec.application is None and train_images <= AUTO_AUGMENT_IMAGES


def _fit_full(model, info: ModelInfo, images: dict, targets: dict, config: TrainConfig, augment: bool, epochs: int,
              learning_rate: float, phase: str, loss: tuple[object, list], class_weight: dict | None, history: list[dict],
              on_epoch, prior: PriorRun | None = None) -> dict:
    """Fit the whole model on images through tf.data (augmenting the training batches when asked); the plain
    training images re-estimate batch-norm statistics after weight averaging. With a ``prior``, the training rows carry
    the masks (and the outside-removed images) and, when penalised, a wrapper's training step adds the penalty."""
    fitted = model
    if prior is None:
        train_data = image_pipeline(images["train"], targets["train"], info, config.batch_size, shuffle_seed=config.seed,
                                    augment_seed=config.seed if augment else None)
    else:
        train_data = prior_pipeline(prior.rows, targets["train"], info, config.batch_size, seed=config.seed, augment=augment,
                                    outside_probability=config.outside_lungs_augment, with_masks=prior.penalised)
        if prior.penalised:
            fitted = prior_model(model, str(prior.penalty), float(prior.weight or 0), str(info.head), info.cam_layer)
    calibration = image_pipeline(images["train"], targets["train"], info, config.batch_size).map(lambda x, y: x)
    val_data = None
    if len(images["val"]):
        val_data = image_pipeline(images["val"], targets["val"], info, config.batch_size)
    return _fit(fitted, train_data, val_data, epochs=epochs, learning_rate=learning_rate, recipe=config,
                steps_per_epoch=math.ceil(len(images["train"]) / config.batch_size), loss=loss, class_weight=class_weight,
                phase=phase, history=history, on_epoch=on_epoch, calibration=calibration)


def _prior_run(config: TrainConfig, masks: MaskSource | None, samples: Sequence[Sample], images: np.ndarray | DiskArray,
               cache: Path | None) -> PriorRun | None:
    """The training rows with their masks, when the config asks for the prior or the outside-lungs augmentation."""
    if not config.uses_masks or masks is None:
        return None
    setting = None if config.attention_prior is None else parse_attention_prior(config.attention_prior)
    rows = prior_rows(samples, images, masks, impute=config.outside_lungs_augment > 0, seed=config.seed,
                      to_disk=None if cache is None else cache / "train_prior.u8")
    return PriorRun(rows, None if setting is None else config.prior_penalty, None if setting is None else setting.weight,
                    config.outside_lungs_augment, masks.summary())


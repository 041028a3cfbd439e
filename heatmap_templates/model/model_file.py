"""The model file: a ``.keras`` archive with hmt's metadata inside, and loading any Keras classifier.

The metadata later stages need (:class:`ModelInfo`) travels inside the ``.keras`` zip archive as
``hmt_info.json``; Keras ignores the extra member, so the file stays an ordinary Keras model.
A model hmt did not train (no metadata) needs its class names; its input size and channels come
from its input shape, its head kind from its output layer, its CAM layer from the layer search.
"""
from __future__ import annotations

import json
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from heatmap_templates._version import __version__
from heatmap_templates.data.decode import DEFAULT_INTENSITY, INTENSITIES, LEGACY_INTENSITY
from heatmap_templates.data.preprocess import PREPROCESSING
from heatmap_templates.errors import BadFileError, HmtError, display_path, one_line
from heatmap_templates.files import atomic_path
from heatmap_templates.model.heads import HEADS, detect_head
from heatmap_templates.model.layers import default_cam_layer

INFO_MEMBER = "hmt_info.json"
DEFAULT_USER_PREPROCESSING = "unit"
_DEFAULT_USER_INPUT_SIDE = 224


@dataclass
class ModelInfo:
    """Everything later stages need to use a model; stored as ``hmt_info.json`` inside the ``.keras`` file.

    ``split`` maps ``train``/``val``/``test`` to image paths relative to the training data set's
    root; ``dataset_fingerprint`` identifies that data set (see :func:`heatmap_templates.data.datasets.dataset_fingerprint`).
    ``cam_layer`` is None only for a user model without any 4-D layer. ``head`` is the head kind
    (:data:`heatmap_templates.model.heads.HEADS`), read from the output layer when the model is saved or loaded.
    ``intensity`` is how integer pixels were scaled in training (:data:`heatmap_templates.data.decode.INTENSITIES`);
    every later command decodes the same way. ``negatives`` are the data set's classes that a model trained
    one-against-the-rest (``TrainConfig.binary``) groups into its negative class.
    """

    class_names: list[str]
    backbone: str
    input_size: tuple[int, int]
    channels: int
    preprocessing: str
    cam_layer: str | None
    training: dict = field(default_factory=dict)
    dataset_fingerprint: str | None = None
    split: dict[str, list[str]] = field(default_factory=dict)
    hmt_version: str = __version__
    head: str | None = None
    intensity: str = DEFAULT_INTENSITY
    negatives: list[str] = field(default_factory=list)  # data-set classes a one-against-the-rest model calls negative

    @property
    def head_kind(self) -> str:
        """The head kind (:data:`heatmap_templates.model.heads.HEADS`), known once the model is loaded or saved."""
        if self.head is None:
            raise HmtError("the model's head kind is not known until the model is loaded or saved")
        return self.head

    def label_index(self, label: str) -> int:
        """This model's class index of a data set's label (-1: a class it does not know)."""
        from heatmap_templates.model.objectives import label_index

        return label_index(label, self.class_names, self.negatives)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str | Path = INFO_MEMBER) -> ModelInfo:
        """Parse and validate stored metadata; a malformed record is a :class:`BadFileError` naming ``source``."""
        required = ("class_names", "backbone", "input_size", "channels", "preprocessing", "cam_layer")
        if not isinstance(data, dict):
            raise BadFileError(source, f"{INFO_MEMBER} is not a JSON object")
        missing = [key for key in required if key not in data]
        if missing:
            raise BadFileError(source, f"{INFO_MEMBER} lacks {', '.join(missing)}")
        try:
            info = cls(
                class_names=[str(name) for name in data["class_names"]],
                backbone=str(data["backbone"]),
                input_size=(int(data["input_size"][0]), int(data["input_size"][1])),
                channels=int(data["channels"]),
                preprocessing=str(data["preprocessing"]),
                cam_layer=None if data["cam_layer"] is None else str(data["cam_layer"]),
                training=dict(data.get("training") or {}),
                dataset_fingerprint=data.get("dataset_fingerprint"),
                split={str(k): [str(p) for p in v] for k, v in (data.get("split") or {}).items()},
                hmt_version=str(data.get("hmt_version", "unknown")),
                head=None if data.get("head") is None else str(data["head"]),
                intensity=str(data.get("intensity", LEGACY_INTENSITY)),  # models saved before it was recorded
                negatives=[str(name) for name in data.get("negatives") or []],
            )
        except (TypeError, ValueError, IndexError, AttributeError) as error:
            raise BadFileError(source, f"{INFO_MEMBER} is malformed ({error})") from None
        if (info.preprocessing not in PREPROCESSING or info.channels not in (1, 3) or len(info.class_names) < 2
                or (info.head is not None and info.head not in HEADS) or info.intensity not in INTENSITIES):
            raise BadFileError(source, f"{INFO_MEMBER} has invalid values (preprocessing, channels, classes, head or intensity)")
        return info


def json_ready(value):
    """A JSON-ready copy with NaN and infinities replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def _checked_head(model, info: ModelInfo, path: str | Path, wanted: str | None = None) -> str:
    """The model's head kind (``wanted``: named, :func:`heatmap_templates.model.heads.head_kind`), checked against the
    recorded one and against the class names."""
    if wanted is not None:
        HEADS.check(wanted)
        if info.head is not None and wanted != info.head:
            raise HmtError(f"$head {wanted} does not match the model's recorded head {info.head}", parameters=("head",))
    try:
        head = detect_head(model, wanted)
    except HmtError as error:
        if error.parameters:  # a head named or to be named: the user's to fix
            raise HmtError(f"{display_path(path)}: {error.template}", parameters=error.parameters) from None
        raise BadFileError(path, str(error)) from None
    if info.head is not None and info.head != head:
        raise BadFileError(path, f"its metadata records a {info.head} head, but the output layer is a {head} head")
    units = int(model.outputs[0].shape[-1])
    if HEADS[head].class_count(units) != len(info.class_names):
        raise BadFileError(path, f"the model's output {model.output_shape} does not match its {len(info.class_names)} class names")
    return head


def save_model(model, info: ModelInfo, path: str | os.PathLike) -> Path:
    """Write ``model`` with ``info`` as ``hmt_info.json`` inside the ``.keras`` archive, atomically.

    ``info.head`` is set from the model's output layer (a recorded head that disagrees is refused).
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise HmtError(f"{display_path(path)}: model files must end in .keras")
    info.head = _checked_head(model, info, path)
    with atomic_path(path, suffix=".keras") as temporary:
        model.save(temporary)
        with zipfile.ZipFile(temporary, "a", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(INFO_MEMBER, json.dumps(json_ready(info.to_dict()), indent=1, allow_nan=False))
    return path


def model_file_path(path: str | os.PathLike) -> Path:
    """``path`` as a model file, refused with a one-line reason when it is missing or a SavedModel folder."""
    path = Path(path)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        raise BadFileError(path, "a TensorFlow SavedModel folder, which Keras 3 cannot open layer by layer for CAMs; "
                                 "convert it where it was made: tf.keras.models.load_model(FOLDER).save('model.keras') "
                                 "(or .save('model.h5') with Keras 2)")
    if not path.is_file():
        raise BadFileError(path, "no such model file")
    return path


def read_model_info(path: str | os.PathLike) -> ModelInfo | None:
    """The metadata stored in a ``.keras`` file without loading the model; None if it has none."""
    path = model_file_path(path)
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            if INFO_MEMBER not in archive.namelist():
                return None
            data = json.loads(archive.read(INFO_MEMBER).decode("utf-8"))
    except (zipfile.BadZipFile, OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadFileError(path, f"cannot read {INFO_MEMBER}: {one_line(error, 200)}") from None
    return ModelInfo.from_dict(data, source=path)


def load_model(path: str | os.PathLike, *, unsafe: bool = False, classes: Sequence[str] | None = None,
               preprocessing: str | None = None, intensity: str | None = None, head: str | None = None,
               labels: Sequence[str] | None = None):
    """Load a model and its :class:`ModelInfo`: ``(keras.Model, ModelInfo)``.

    Keras safe mode is on unless ``unsafe`` (no code from Lambda layers runs). A model without hmt
    metadata (a user's own classifier) needs ``classes`` (names in output order; default ``labels``, the finding
    columns its data set is read with); its input size
    and channels come from ``model.input_shape``, its preprocessing is ``preprocessing`` or
    ``unit``, its intensity mode ``intensity`` or ``bits``, and its CAM layer is the last 4-D layer.
    The head kind is read from the output layer, or named by ``head`` (a linear output read as independent
    sigmoids: :func:`heatmap_templates.model.heads.head_kind`). A model with metadata keeps its recorded intensity
    and head (others are refused: the model was trained on images decoded that way, with that head).
    """
    import keras

    path = model_file_path(path)
    is_zip = zipfile.is_zipfile(path)
    if not (is_zip and path.suffix == ".keras") and path.suffix.lower() not in (".h5", ".hdf5"):
        raise BadFileError(path, "not a Keras model file (expected a .keras archive or a legacy .h5 model)")
    info = read_model_info(path) if is_zip else None
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except Exception as error:
        text = str(error)
        if "safe_mode" in text or "unsafe" in text.lower():
            raise BadFileError(path, "contains code (a Lambda layer or custom object) that safe mode will not run; "
                                     "pass $unsafe only if you trust the file", parameters=("unsafe",)) from None
        raise BadFileError(path, f"cannot load the model: {one_line(error, 200)}") from None
    if not isinstance(model, keras.Model):
        raise BadFileError(path, "the file does not hold a Keras model")
    if classes is not None:
        classes = [name.strip() for name in classes if name.strip()]
    if info is None:
        classes = classes or ([name.strip() for name in labels if name.strip()] if labels is not None else None)
        if not classes:
            raise HmtError(f"{display_path(path)} has no hmt metadata; give its class names in output order with $classes "
                           "(or its finding columns with $labels)", parameters=("classes", "labels"))
        info = _info_for_user_model(model, path, classes, preprocessing or DEFAULT_USER_PREPROCESSING)
        info.intensity = INTENSITIES.check(intensity or DEFAULT_INTENSITY)
    else:
        if intensity and intensity != info.intensity:
            raise HmtError(f"$intensity: {intensity} does not match the model's recorded intensity {info.intensity} "
                           "(it was trained on images decoded that way)", parameters=("intensity",))
        if classes and list(classes) != info.class_names:
            raise HmtError(f"$classes: {','.join(classes)} does not match the model's recorded classes {','.join(info.class_names)}",
                           parameters=("classes",))
        if preprocessing:
            info.preprocessing = PREPROCESSING.check(preprocessing)
    if not isinstance(model.output_shape, tuple):
        raise BadFileError(path, f"the model's output {model.output_shape} is not one class-score vector")
    info.head = _checked_head(model, info, path, head)
    return model, info


def _info_for_user_model(model, path: Path, classes: list[str], preprocessing: str) -> ModelInfo:
    """ModelInfo for a Keras classifier hmt did not train, inferred from its input shape."""
    PREPROCESSING.check(preprocessing)
    if len(classes) < 2:
        raise HmtError(f"$classes needs at least 2 class names, got {len(classes)}", parameters=("classes",))
    if len(set(classes)) != len(classes):
        raise HmtError(f"$classes lists a class twice: {','.join(classes)}", parameters=("classes",))
    shape = model.input_shape
    if not (isinstance(shape, tuple) and len(shape) == 4):
        raise BadFileError(path, f"expected one image input (N, H, W, C), the model takes {shape}")
    channels = shape[3]
    if channels not in (1, 3):
        raise BadFileError(path, f"the model takes {channels} input channels; hmt feeds 1 or 3")
    size = (shape[1] or _DEFAULT_USER_INPUT_SIDE, shape[2] or _DEFAULT_USER_INPUT_SIDE)
    return ModelInfo(class_names=list(classes), backbone="user", input_size=size, channels=channels,
                     preprocessing=preprocessing, cam_layer=default_cam_layer(model))


def companion_path(model_path: str | os.PathLike, suffix: str) -> Path:
    """A file beside the model: ``model.keras`` -> ``model.<suffix>`` (history.csv, curves.png, evaluation.json)."""
    model_path = Path(model_path)
    return model_path.with_name(f"{model_path.stem}.{suffix}")

"""Synthetic chest phantom: radiograph-like images with exact lesion ground truth.

The phantom is hmt's offline default data set and its ground truth for "do templates find the
biomarkers?". Every image is drawn in a *canonical* frame (fixed anatomy position, x-ray polarity:
bone and soft tissue bright, air dark), lesions are added there, and image and lesion mask are
then warped together by a random pose (shift, rotation, scale). So the canonical-frame truth is
exact: per-image lesion masks, poses and, per class, the canonical lesion-probability map.

One module per reason to change: :mod:`.anatomy` (the chest), :mod:`.lesions` (one process per
disease class, a registry), :mod:`.render` (one image: seeds, pose, acquisition), :mod:`.dataset`
(files on disk), :mod:`.shortcuts` (planted shortcuts, a registry of styles), :mod:`.ground_truth`
(reading the truth back, scoring templates), :mod:`.preview`.
Each image's randomness derives from (seed, class name, index), which makes a data set
deterministic for a seed and a smaller ``n_per_class`` a prefix of a larger one. ``pose_spread``
scales the random pose (2.0: twice the shift, rotation and log-scale range) for experiments in
which registration has more to correct.
"""
from heatmap_templates.synth.anatomy import MAX_SIZE, MIN_SIZE, canonical_lung_mask
from heatmap_templates.synth.dataset import (
    CANONICAL_CHEST_FILE,
    CANONICAL_LUNGS_FILE,
    DEFAULT_N_PER_CLASS,
    DEFAULT_PREVALENCE,
    DEFAULT_SIZE,
    GROUND_TRUTH_DIR,
    MARKER_FILE,
    MULTI_LABEL_FOLDER,
    SynthSummary,
    read_poses,
    synthesize_dataset,
    synthesize_multi_label,
)
from heatmap_templates.synth.ground_truth import (
    LesionTruth,
    ground_truth_check,
    ground_truth_localisation,
    mass_share,
    read_lesion_truth,
    read_shortcuts,
    shortcut_mask,
    shortcut_region,
)
from heatmap_templates.synth.lesions import CLASSES, LESIONS
from heatmap_templates.synth.preview import DEFAULT_PREVIEW_EXAMPLES, write_preview_grid
from heatmap_templates.synth.render import (
    DEFAULT_POSE_SPREAD,
    DEFAULT_PROBABILITY_SAMPLES,
    LESION_THRESHOLD,
    MAX_POSE_SPREAD,
    Phantom,
    Pose,
    canonical_lesion_probability,
    phantom_seed,
    pose_matrix,
    render_phantom,
)
from heatmap_templates.synth.shortcuts import DEFAULT_SHORTCUT_STYLE, SHORTCUTS, carries_shortcut
from heatmap_templates.templates.templates_file import (
    GROUND_TRUTH_CHECK,  # the check ground_truth_check's record is stored as
)

__all__ = [
    "DEFAULT_N_PER_CLASS", "DEFAULT_PREVALENCE", "DEFAULT_SIZE", "MULTI_LABEL_FOLDER", "DEFAULT_PREVIEW_EXAMPLES", "DEFAULT_POSE_SPREAD", "MAX_SIZE", "MIN_SIZE", "canonical_lung_mask", "CANONICAL_CHEST_FILE", "CANONICAL_LUNGS_FILE", "GROUND_TRUTH_DIR",
    "MARKER_FILE", "SynthSummary", "read_poses", "synthesize_dataset", "synthesize_multi_label", "LesionTruth", "ground_truth_localisation",
    "GROUND_TRUTH_CHECK", "ground_truth_check",
    "read_lesion_truth", "CLASSES", "LESIONS", "write_preview_grid", "DEFAULT_PROBABILITY_SAMPLES", "LESION_THRESHOLD",
    "MAX_POSE_SPREAD", "Phantom", "Pose", "canonical_lesion_probability", "phantom_seed", "pose_matrix", "render_phantom",
    "DEFAULT_SHORTCUT_STYLE", "SHORTCUTS", "carries_shortcut", "read_shortcuts", "shortcut_mask", "shortcut_region", "mass_share",
]

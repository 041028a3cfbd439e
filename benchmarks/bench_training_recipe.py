"""Training recipe on small real data: the old recipe against the current defaults, side by side, over seeds.

For every recipe and seed, `hmt train`'s library path trains the `small` CNN on cxr4 with the
patient-grouped split of that seed (80/10/10 %), and records the test accuracy, the validation
accuracy of every epoch, and the spread of the validation accuracy over the last half of training
(standard deviation and range): how much a user's result depends on which epoch training stopped.

Recipes (``--recipes``; any subset, in one run):

- ``before``: the recipe before issue 17 (constant Adam 1e-3, 20 epochs, early stopping on validation loss with
  patience 8 and the best weights restored, no augmentation, no weight averaging);
- ``defaults``: ``TrainConfig()`` as it is now (``--epochs`` overrides its epoch count);
- ``no-augment``, ``no-average``: the defaults with one stabiliser off, to see what each contributes;
- ``smoothing``: the defaults with label smoothing 0.1 (a candidate, adopted only if validation says so);
- ``decay``: the defaults with decoupled weight decay ``DECAY`` (AdamW on the kernels; a candidate, likewise).
  AdamW shrinks a kernel by ``lr * decay`` a step; over cxr4's 780 steps of the cosine (sum of rates 0.40)
  0.5 shrinks an unused weight to about 0.8 of itself: a real pull, where the 0.01-0.05 usual on long ImageNet runs
  would do nothing in 20 epochs;
- ``average-half``: the defaults with the weights of the last half of the epochs averaged instead of the last
  quarter (a candidate, likewise). Stochastic weight averaging gains from averaging weights that differ, along a
  stretch of training at a still-high rate; the last quarter of the cosine runs below a fifth of the peak rate,
  the last half from 0.6 of it down.
- ``longer``: the defaults over ``LONGER_EPOCHS`` epochs instead of 20 (a candidate, likewise): the same warm-up,
  cosine and averaged last quarter, stretched; with augmentation on, a network trained from scratch sees more
  distinct views of the 1200 training images.

Choose a recipe on the validation accuracy of the delivered model (``final_val_accuracy``: weights averaged, batch
norm re-estimated; the last epoch's figure in the history predates the averaging); the test numbers are reported,
never used to choose.

Usage: ``.venv/bin/python benchmarks/bench_training_recipe.py --data ../shared/data/cxr4 --seeds 0 1 2 --out recipe.json``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from heatmap_templates.data.datasets import load_dataset
from heatmap_templates.model.training import TrainConfig, train

DECAY = 0.5  # the `decay` candidate's weight decay (see the module docstring)
LONGER_EPOCHS = 30  # the `longer` candidate's epochs (the defaults' 20 stretched by half, same schedule shape)
BEFORE = dict(schedule="constant", augment=False, average_last=0.0, epochs=20, patience=8)


def recipe(name: str, epochs: int | None, input_size: int) -> TrainConfig:
    """The TrainConfig of a named recipe for the `small` backbone."""
    base = TrainConfig(backbone="small", input_size=input_size)
    if epochs is not None:
        base = replace(base, epochs=epochs)
    if name == "before":
        return replace(base, **BEFORE)
    if name == "defaults":
        return base
    if name == "no-augment":
        return replace(base, augment=False)
    if name == "no-average":
        return replace(base, average_last=0.0)
    if name == "smoothing":
        return replace(base, label_smoothing=0.1)
    if name == "decay":
        return replace(base, weight_decay=DECAY)
    if name == "average-half":
        return replace(base, average_last=0.5)
    if name == "longer":
        return replace(base, epochs=LONGER_EPOCHS)
    raise SystemExit(f"unknown recipe {name!r}")


def spread(history: list[dict]) -> dict:
    """Validation accuracy over the last half of the epochs run: mean, standard deviation, min, max."""
    values = np.array([row["val_accuracy"] for row in history if row.get("val_accuracy") is not None])
    tail = values[len(values) // 2:]
    return {"mean": float(tail.mean()), "std": float(tail.std()), "min": float(tail.min()), "max": float(tail.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr4")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=["before", "defaults"])
    parser.add_argument("--epochs", type=int, default=None, help="Epochs of the non-`before` recipes (default: TrainConfig's).")
    parser.add_argument("--input-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("recipe.json"))
    args = parser.parse_args()

    dataset = load_dataset(args.data)
    runs = []
    for seed in args.seeds:
        for name in args.recipes:  # recipes interleaved per seed, so machine load falls on all alike
            config = replace(recipe(name, args.epochs, args.input_size), seed=seed)
            started = time.perf_counter()
            result = train(dataset, config)
            seconds = time.perf_counter() - started
            run = {"recipe": name, "seed": seed, "test_accuracy": result.test_report["accuracy"],
                   "test_n": result.test_report["n"], "val_spread_last_half": spread(result.history),
                   "final_val_accuracy": result.val_report["accuracy"],  # the delivered (averaged) model
                   "last_epoch_val_accuracy": result.history[-1].get("val_accuracy"), "epochs_run": len(result.history),
                   "phases": result.info.training["phases"], "augmented": result.info.training["augmented"],
                   "val_accuracy": [row.get("val_accuracy") for row in result.history], "seconds": round(seconds, 1)}
            runs.append(run)
            print(json.dumps({key: run[key] for key in ("recipe", "seed", "test_accuracy", "final_val_accuracy",
                                                          "last_epoch_val_accuracy", "val_spread_last_half", "epochs_run",
                                                          "seconds")}), flush=True)
    summary = {}
    for name in args.recipes:
        mine = [run for run in runs if run["recipe"] == name]
        tests = np.array([run["test_accuracy"] for run in mine])
        finals = np.array([run["final_val_accuracy"] for run in mine])
        summary[name] = {
            "seeds": len(mine), "test_accuracy_mean": float(tests.mean()), "test_accuracy_std": float(tests.std()),
            "test_accuracy_each": tests.round(4).tolist(), "final_val_accuracy_mean": float(finals.mean()),
            "last_epoch_val_accuracy_mean": float(np.mean([run["last_epoch_val_accuracy"] for run in mine])),
            "val_std_last_half_mean": float(np.mean([run["val_spread_last_half"]["std"] for run in mine])),
            "val_range_last_half_mean": float(np.mean([run["val_spread_last_half"]["max"] - run["val_spread_last_half"]["min"]
                                                       for run in mine])),
            "seconds_mean": float(np.mean([run["seconds"] for run in mine])),
        }
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
               "python": platform.python_version()}
    args.out.write_text(json.dumps({"machine": machine, "summary": summary, "runs": runs}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

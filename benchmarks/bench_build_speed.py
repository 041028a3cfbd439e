"""Template build speed and heatmap-store size: an earlier version of hmt against this one, side by side (issue 15).

One command, one run, on one phantom set and one model:

1. the earlier version (``--before``, a git revision, unpacked with ``git archive``) writes its heatmap store;
2. this version writes its own store of the same images (the compact store: no upsampled copy);
3. each version runs ``build_templates`` in a fresh child process on the earlier version's store, with every
   statistic on (affine registration to a data-built reference, minmax, median, eigen-heatmaps, bootstrap,
   leave-one-out), and this version also on its own store. Members: every image of its class (``include=all``).

The builds run ``--repeats`` rounds in turn (before, after on the old store, after on its own), so the machine's load
falls on both versions alike; each build's median round is reported. Reported: maps per second of each build (members
/ wall seconds, and the ratio), peak resident memory, bytes per
image of each store beside the uint8 image + raw maps it must hold, and how far the two versions' templates differ.

    .venv/bin/python benchmarks/bench_build_speed.py [--before 5490a7f] [--n-per-class 325] [--size 128] [--repeats 3] [--cluster] [--data DIR [--model M.keras --include correct]] [--out build_speed.json]

``--data ../shared/data/cxr4`` runs the same comparison on real chest X-rays (an untrained model: the build's speed
depends on the images, which registration aligns, not on the weights). ``--model M.keras --include correct`` runs it
as a user would: a trained model's heatmaps, templates of the correctly classified images (the issue's own setting:
all 1525 cxr4 images through a trained model, about 1290 of them correct).

With ``--cluster`` this version also extracts and builds on a Dask LocalCluster of two worker processes
(``--scheduler local:2``), beside one process.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STORE_CHILD = """
import json, sys, time
from pathlib import Path
try:
    from heatmap_templates.explain.heatmaps import extract_heatmaps
except ImportError:  # a --before revision from before the wings
    from heatmap_templates.heatmaps import extract_heatmaps
if __name__ == "__main__":
    data, model, store = map(Path, sys.argv[1:4])
    options = {"scheduler": sys.argv[4]} if len(sys.argv) > 4 else {}
    started = time.perf_counter()
    extract_heatmaps(model, data, store, batch_size=32, **options)
    print(json.dumps({"seconds": time.perf_counter() - started}))
"""

MODEL_CHILD = """
import sys
from pathlib import Path
from heatmap_templates.model.backbones import build_model
from heatmap_templates.model.model_file import ModelInfo, save_model
from heatmap_templates.model.layers import default_cam_layer
from heatmap_templates.synth import synthesize_dataset, CLASSES
data, model_path, size, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
if len(sys.argv) > 5:  # real images: their class names
    classes = sys.argv[5].split(",")
else:
    classes = list(CLASSES)
    synthesize_dataset(data, n_per_class=n, size=size, seed=0, classes=CLASSES, probability_samples=8)
model = build_model("small", len(classes), size)
info = ModelInfo(class_names=classes, backbone="small", input_size=(size, size), channels=1, preprocessing="unit",
                 cam_layer=default_cam_layer(model))
save_model(model, info, model_path)
"""

BUILD_CHILD = """
import json, resource, sys, time
from pathlib import Path
try:
    from heatmap_templates.templates.build import BuildConfig, build_templates
except ImportError:  # a --before revision from before the wings
    from heatmap_templates.build import BuildConfig, build_templates
if __name__ == "__main__":
    store, out, include = sys.argv[1:4]
    Path(out).unlink(missing_ok=True)  # a repeat builds anew (an existing file's reference would be reused)
    options = {"scheduler": sys.argv[4]} if len(sys.argv) > 4 else {}
    after_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    summary = build_templates(store, None, out, config=BuildConfig(registration="affine", include=include), **options)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "members": sum(summary.members.values()), "registration": summary.registration,
                      "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "after_imports_kib": after_imports}))
"""


def run_child(code: str, root: Path, *arguments: object) -> dict:
    """Run ``code`` in a fresh Python with ``root`` first on the path; its last stdout line is JSON."""
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code, *map(str, arguments)], env=env, cwd=root, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"child in {root} failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else {}


def unpack(revision: str, target: Path) -> Path:
    """The package and CLI of ``revision`` in ``target`` (``git archive``)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "heatmap_templates", "cli"], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    (target / "hmt_cli").symlink_to(target / "cli")
    return target


def store_bytes(path: Path) -> dict:
    """Bytes per image of a store, beside the uint8 image and float32 raw maps it holds."""
    import h5py

    with h5py.File(path, "r") as handle:
        n = handle["path"].shape[0]
        essential = handle["image"].shape[1] * handle["image"].shape[2] + 4 * int(
            handle["raw"].shape[1] * handle["raw"].shape[2] * handle["raw"].shape[3])
        datasets = sorted(handle.keys())
    size = path.stat().st_size
    return {"bytes_per_image": size / n, "essential_bytes_per_image": essential, "ratio_to_essential": size / n / essential,
            "datasets": datasets}


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time among repeats of one build (its own memory and registration figures), with every
    repeat's seconds: the VM's load moves a single run by up to 10 %."""
    chosen = sorted(runs, key=lambda run: run["seconds"])[(len(runs) - 1) // 2]
    return {**chosen, "seconds_of_each_repeat": [run["seconds"] for run in runs]}


def template_difference(first: Path, second: Path) -> dict:
    """Largest absolute difference of each class's template mean and std, and of the LOO correlations."""
    import h5py
    import numpy as np

    out = {}
    with h5py.File(first, "r") as a, h5py.File(second, "r") as b:
        for name in a["templates"]:
            one, two = a["templates"][name], b["templates"][name]
            out[name] = {key: float(np.max(np.abs(one[key][()] - two[key][()]))) for key in ("mean", "std") if key in one and key in two}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="5490a7f", help="git revision of the earlier version (default: before issue 15)")
    parser.add_argument("--n-per-class", type=int, default=325)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("build_speed.json"))
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three builds, in turn (before, after, after); "
                                                                  "each build's median round is reported")
    parser.add_argument("--model", type=Path, help="a trained hmt model for --data (default: an untrained small CNN)")
    parser.add_argument("--include", default="all", help="which images of a class are its members (all, or correct: "
                                                         "hmt build-templates' default, which needs a trained --model)")
    parser.add_argument("--cluster", action="store_true", help="also extract and build on a Dask LocalCluster of 2 processes")
    parser.add_argument("--data", type=Path, help="real images (a folder of class folders, e.g. ../shared/data/cxr4) "
                                                  "instead of phantoms; --n-per-class is then ignored")
    args = parser.parse_args()
    classes = sorted(child.name for child in args.data.iterdir() if child.is_dir()) if args.data else None

    with tempfile.TemporaryDirectory(prefix="hmt_build_speed_") as folder:
        work = Path(folder)
        before = unpack(args.before, work / "before")
        data = args.data.resolve() if args.data else work / "data"
        if args.model:
            model = args.model.resolve()
        else:
            model = work / "model.keras"
            run_child(MODEL_CHILD, ROOT, data, model, args.size, args.n_per_class, *([",".join(classes)] if classes else []))
        stores = {"before": work / "store_before.h5", "after": work / "store_after.h5"}
        extraction = {"before": run_child(STORE_CHILD, before, data, model, stores["before"]),
                      "after": run_child(STORE_CHILD, ROOT, data, model, stores["after"])}
        plan = {"before on its store": (before, stores["before"], work / "t_before.h5", args.include),
                "after on the before store": (ROOT, stores["before"], work / "t_after_old_store.h5", args.include),
                "after on its store": (ROOT, stores["after"], work / "t_after.h5", args.include)}
        rounds = [{name: run_child(BUILD_CHILD, *where) for name, where in plan.items()} for _ in range(args.repeats)]
        builds = {name: median_run([each[name] for each in rounds]) for name in plan}
        cluster = {}
        if args.cluster:
            cluster["extraction local:2"] = run_child(STORE_CHILD, ROOT, data, model, work / "store_dask.h5", "local:2")
            cluster["extraction local:2"]["ratio_to_one_process"] = extraction["after"]["seconds"] / cluster["extraction local:2"]["seconds"]
            builds["after on its store, local:2"] = run_child(BUILD_CHILD, ROOT, stores["after"], work / "t_dask.h5", args.include, "local:2")
            cluster["templates equal to one process"] = template_difference(work / "t_after.h5", work / "t_dask.h5")
        for result in builds.values():
            result["maps_per_second"] = result["members"] / result["seconds"]
        baseline = builds["before on its store"]["maps_per_second"]
        for result in builds.values():
            result["speedup"] = result["maps_per_second"] / baseline
        report = {
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "before": args.before, "data": str(args.data) if args.data else "phantoms",
            "model": str(args.model) if args.model else "untrained small CNN", "include": args.include,
            "n_images": builds["before on its store"]["members"], "size": args.size,
            "extraction_seconds": {name: value["seconds"] for name, value in extraction.items()},
            "stores": {name: store_bytes(path) for name, path in stores.items()},
            "builds": builds,
            "template_difference_after_vs_before": template_difference(work / "t_before.h5", work / "t_after_old_store.h5"),
            "cluster": cluster,
        }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"{report['n_images']} images at {args.size} px; before = {args.before}")
    for name, value in report["stores"].items():
        print(f"store {name}: {value['bytes_per_image'] / 1024:.1f} KiB/image, {value['ratio_to_essential']:.2f} x image + raw maps")
    for name, value in builds.items():
        print(f"build {name}: {value['members']} maps in {value['seconds']:.1f} s = {value['maps_per_second']:.1f} maps/s "
              f"({value['speedup']:.2f} x), peak {value['peak_kib'] / 1024:.0f} MiB")
    print(f"template difference: {report['template_difference_after_vs_before']}")
    if cluster:
        print(f"extraction: one process {extraction['after']['seconds']:.1f} s, local:2 {cluster['extraction local:2']['seconds']:.1f} s "
              f"({cluster['extraction local:2']['ratio_to_one_process']:.2f} x); local:2 templates vs one process: "
              f"{cluster['templates equal to one process']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

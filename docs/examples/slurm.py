"""hmt on a SLURM cluster with dask-jobqueue: one GPU worker per SLURM job (see docs/cluster.md).

Run it on a login node (it submits the worker jobs and waits for them):

    python docs/examples/slurm.py model.keras /data/mimic/manifest.csv /scratch/me/run --jobs 8

The model file, the images and the output folder must be on a file system every node can read
(the store and templates are written by this process, on the login node).
"""
from __future__ import annotations

import argparse
from pathlib import Path


def slurm_cluster(*, queue: str = "gpu", jobs: int = 8, cores: int = 8, memory: str = "32GB",
                  walltime: str = "04:00:00", gpus_per_job: int = 1, venv: str = ".venv", account: str | None = None):
    """A dask-jobqueue SLURMCluster of ``jobs`` single-process GPU workers (not yet started: call ``scale``)."""
    from dask_jobqueue import SLURMCluster

    directives = [f"--gres=gpu:{gpus_per_job}"] + ([f"--account={account}"] if account else [])
    return SLURMCluster(
        queue=queue,
        cores=1,  # one worker thread: one chunk at a time per GPU
        job_cpu=cores,  # CPU cores per job: image decoding runs beside the GPU
        processes=1,  # one Dask worker per job, so the model is loaded once per GPU
        memory=memory,
        walltime=walltime,
        job_extra_directives=directives,
        job_script_prologue=[f"source {venv}/bin/activate", "export TF_CPP_MIN_LOG_LEVEL=2"],
        python="python",  # the activated environment's Python on the node
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("out", type=Path)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--queue", default="gpu")
    args = parser.parse_args()

    from dask.distributed import Client

    from heatmap_templates.explain.heatmaps import extract_heatmaps
    from heatmap_templates.templates.build import build_templates

    cluster = slurm_cluster(queue=args.queue, jobs=args.jobs)
    cluster.scale(jobs=args.jobs)
    client = Client(cluster)
    client.wait_for_workers(1)
    args.out.mkdir(parents=True, exist_ok=True)
    extract_heatmaps(args.model, args.data, args.out / "heatmaps.h5", scheduler=client)  # rerun to resume
    build_templates(args.out / "heatmaps.h5", None, args.out / "templates.h5", scheduler=client)
    client.close()
    cluster.close()


if __name__ == "__main__":
    main()

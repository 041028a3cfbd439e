"""`hmt demo` runs every stage end to end (toy sizes here; `make demo` runs the real one)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_every_stage_and_reports_where_things_are(tmp_path: Path) -> None:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "heatmaps.h5").write_bytes(b"an earlier run's store")  # a rerun replaces what it remade
    done = subprocess.run(
        [sys.executable, "-c", "from hmt_cli.main import run; run()", "demo", "--out", str(tmp_path / "demo"),
         "--n-per-class", "12", "--size", "64", "--epochs", "2", "--json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    for key in ("data", "model", "heatmaps", "templates"):
        assert Path(summary[key]).exists(), key
    assert summary["figures"] and all(Path(path).is_file() for path in summary["figures"])
    assert summary["template_members"], "at least one class template was built"
    assert set(summary["strategies"]) <= set(summary["template_members"]) and all(k >= 1 for k in summary["strategies"].values())
    truth = summary["ground_truth_auc"]
    assert set(truth) == {"bacteria", "covid", "normal", "virus"}
    assert truth["normal"]["auc_frame"] is None, "normal phantoms have no lesions to find"
    assert all(scores["auc_frame"] is None or 0.0 <= scores["auc_frame"] <= 1.0 for scores in truth.values())
    assert summary["comparisons"] and all(item["true"] is not None for item in summary["comparisons"])
    report = Path(summary["report"])
    assert report.name == "index.html" and report.is_file() and (report.parent / "images.csv").is_file()
    assert report.stat().st_size < 2 * 1024 * 1024, "the page (galleries, strategies' embeddings, table rows) stays under 2 MB"
    evidence = summary["evidence"]
    assert set(evidence["zones_lung_energy"]) == set(summary["template_members"]) and "sanity_flagged" in evidence
    assert evidence["template_vs_smooth"] is None or "ci" in evidence["template_vs_smooth"]
    page = report.read_text()
    for section in ("<h3>Zones</h3>", "Model randomisation", "<h3>Deletion", 'id="ground-truth"', "figures/ground_truth.png"):
        assert section in page, section  # every check the demo ran is in its report

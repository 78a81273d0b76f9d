"""training/ablations.py: the ablation table read from each run's eval table and validation."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ablations", REPO / "training" / "ablations.py")
ablations = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablations)

MASKS = ["O3", "O6"]


def _run(out: Path, name: str, value, step: int = 1000) -> None:
    """value(metric, weights, mask) -> mean."""
    metrics = ("ssim", "psnr", "psnr_hole", "parsing_miou", "landmark_error", "face_found", "identity")
    summary = {k: {m: {w: {"mean": value(k, w, m)} for w in ("raw", "ema")} for m in MASKS} for k in metrics}
    (out / name / "table").mkdir(parents=True)
    (out / name / "table" / "results.json").write_text(json.dumps(
        {"faces": 100, "masks": MASKS, "methods": ["raw", "ema"], "summary": summary}))
    (out / name / "validation.json").write_text(json.dumps(
        [{"step": 500, "raw": {"hole_psnr": 1.0}, "ema": {"hole_psnr": 1.0}},
         {"step": step, "raw": {"hole_psnr": 17.5}, "ema": {"hole_psnr": 18.25}}]))


def test_table_has_a_row_per_variant_and_weights_with_means_and_the_best_in_bold(tmp_path, capsys):
    _run(tmp_path, "r1", lambda k, w, m: 0.5 if k != "landmark_error" else 0.2)
    _run(tmp_path, "base", lambda k, w, m: {"O3": 0.6, "O6": 0.8}[m] if k != "landmark_error" else 0.1)
    (tmp_path / "no_decay").mkdir()  # started, not scored yet: left out
    assert ablations.main([str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    body = [line for line in lines if line.startswith("| base") or line.startswith("| r1")]
    assert [line.split(" | ")[:3] for line in body] == [["| base", "raw", "1000"], ["| base", "ema", "1000"],
                                                        ["| r1", "raw", "1000"], ["| r1", "ema", "1000"]]
    base_raw = body[0].split(" | ")
    assert base_raw[3] == "**0.700**"  # SSIM: mean of 0.6 and 0.8, the best
    assert base_raw[6] == "**0.100**"  # landmark error: lower is better
    assert body[2].split(" | ")[6] == "0.200"
    assert body[1].rstrip(" |").endswith("18.25") and body[0].rstrip(" |").endswith("17.50")


def test_nothing_scored_is_an_error(tmp_path):
    assert ablations.main([str(tmp_path)]) == 1

"""training/acceptance.py: whether a new generator beats the baselines and the shipped model, read from
eval table / recognition results."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("acceptance", REPO / "training" / "acceptance.py")
acceptance = importlib.util.module_from_spec(spec)
spec.loader.exec_module(acceptance)

MASKS = ["O1", "O2", "O3", "O4", "O5", "O6"]
METHODS = ["telea", "ns", "new", "new+poisson", "shipped", "shipped+poisson"]


def _table(tmp: Path, value) -> Path:
    """value(metric, mask, method) -> mean."""
    summary = {metric: {m: {meth: {"mean": value(metric, m, meth), "ci95": 0.0, "n": 4, "non_finite": 0}
                            for meth in METHODS} for m in MASKS}
               for metric in ("ssim", "psnr", "psnr_hole", "landmark_error", "face_found", "parsing_miou", "identity",
                              "sharpness")}
    (tmp / "table").mkdir()
    (tmp / "table" / "results.json").write_text(json.dumps(
        {"faces": 4, "resolution": "input", "methods": METHODS, "masks": MASKS, "summary": summary}))
    return tmp / "table"


def _recognition(tmp: Path, new_top1: float, poisson_top1: float | None = None, significant: int = 6,
                 ceiling: int | None = None) -> Path:
    """Top-1 per method; the probe-by-probe split against noise fill significant on ``significant`` masks (and
    the unoccluded probe's on ``ceiling`` masks, when given: results written before it carry none)."""
    (tmp / "rec").mkdir()
    poisson_top1 = new_top1 if poisson_top1 is None else poisson_top1
    summary = {m: {"new": {"top1": new_top1}, "new+poisson": {"top1": poisson_top1}, "noise": {"top1": 0.5},
                   "telea": {"top1": 0.6}} for m in MASKS}
    methods = ["original", "noise", "telea", "new", "new+poisson"]
    # the probe-by-probe split against noise fill, as facecomp.eval.recognition writes it
    clear, unclear = {"k": 1, "a_only": 20, "b_only": 5, "p": 0.004}, {"k": 1, "a_only": 9, "b_only": 7, "p": 0.80}
    split = [clear] * significant + [unclear] * (6 - significant)
    vs_noise = {m: {"new": c, "new+poisson": c} for m, c in zip(MASKS, split, strict=True)}
    if ceiling is not None:
        for i, m in enumerate(MASKS):
            vs_noise[m]["original"] = clear if i < ceiling else unclear
    if poisson_top1 < 0.5:
        vs_noise["O3"]["new+poisson"] = {"k": 1, "a_only": 3, "b_only": 13, "p": 0.0213}
    (tmp / "rec" / "results.json").write_text(json.dumps({"masks": MASKS, "methods": methods, "summary": summary,
                                                           "vs_noise": vs_noise}))
    return tmp / "rec"


def good(metric, mask, method):
    if metric == "sharpness":
        return {"telea": 0.4, "ns": 0.4, "shipped": 0.7, "shipped+poisson": 0.7}.get(method, 0.9)
    rank = {"telea": 0, "ns": 0, "shipped": 1, "shipped+poisson": 1, "new": 2, "new+poisson": 2}[method]
    return -rank if metric in ("landmark_error", "identity") else rank  # lower error and distance is better


def _one_cell(metric: str, mask: str, value: float):
    """``good``, except the new model's ``metric`` at ``mask``."""
    return lambda m, k, method: value if (m, k, method) == (metric, mask, "new") else good(m, k, method)


def _verdict(tmp: Path, capsys, name: str, value, top1: float = 0.7, **recognition) -> tuple[int, str]:
    """training/acceptance.py's exit status and output for a table of ``value`` and a recognition result."""
    folder = tmp / name
    folder.mkdir()
    code = acceptance.main([str(_table(folder, value)), str(_recognition(folder, top1, **recognition))])
    return code, capsys.readouterr().out


def test_a_model_better_everywhere_passes_and_one_worse_somewhere_misses(tmp_path, capsys):
    code, out = _verdict(tmp_path, capsys, "good", good)
    assert code == 0 and "blends passing every criterion: none, poisson" in out

    code, out = _verdict(tmp_path, capsys, "landmarks", _one_cell("landmark_error", "O6", 5.0))
    assert code == 0 and "MISS  2. new beats shipped" in out and "landmark_error O6: 5.0000 vs -1.0000" in out
    assert "blends passing every criterion: poisson" in out
    code, out = _verdict(tmp_path, capsys, "below_noise", good, top1=0.4)
    assert code == 1 and out.rstrip().endswith("no blend passes every criterion")


def test_recognition_is_checked_for_each_blend_on_its_own_output(tmp_path, capsys):
    code, out = _verdict(tmp_path, capsys, "poisson", good, poisson_top1=0.4)
    assert code == 0 and "MISS  4. new+poisson recognition top-1" in out
    assert "O3: 0.400 vs 0.500 (+3/-13 probes, p 0.02)" in out
    assert out.rstrip().endswith("blends passing every criterion: none")


def test_a_blurred_mask_or_too_few_significant_splits_miss(tmp_path, capsys):
    """Issue 32's bar: sharpness >= 0.85 on every mask, and recognition significant on >= 4 masks."""
    code, out = _verdict(tmp_path, capsys, "soft", _one_cell("sharpness", "O6", 0.84))
    assert code == 0 and "MISS  3. new sharpness ratio >= 0.85 on every mask" in out and "O6: 0.840" in out
    assert "blends passing every criterion: poisson" in out
    code, out = _verdict(tmp_path, capsys, "three", good, significant=3)
    assert code == 1 and "MISS  4. new recognition top-1" in out and "significant on 3" in out
    code, out = _verdict(tmp_path, capsys, "four", good, significant=4)
    assert code == 0 and "parsing mIoU (no verdict): O1 2.0000 vs 1.0000" in out


def test_the_verdict_says_on_how_many_masks_even_the_unoccluded_probe_beats_noise_fill(tmp_path, capsys):
    """The ceiling of criterion 4: a mask where the person's own pixels are not significantly better than noise
    fill cannot be won by a completion, and the verdict says which masks those are."""
    code, out = _verdict(tmp_path, capsys, "ceiling", good, significant=3, ceiling=2)
    assert code == 1 and "significant on 3 (the unoccluded probe itself: 2, O1, O2)" in out
    code, out = _verdict(tmp_path, capsys, "older", good, significant=3)
    assert "unoccluded" not in out  # recognition results written before the ceiling was kept

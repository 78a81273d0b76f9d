"""scripts/device_check.sh on the CPU (--device cpu --quick), as the lent GPU machine runs it: from
source, without the installed package, so the check cannot rot between lent machines."""

from __future__ import annotations

import json
import math
import os
import site
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STEPS = ["environment", "kernels", "gpu_vs_cpu_fp32", "train_mfu", "train_throughput", "train_profile",
         "export_aoti_engine", "aoti_probe", "deepspeed_zero1", "not_testable_there"]


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield obj


def test_device_check_runs_on_the_cpu_from_source(tmp_path):
    # python -S: no site processing, so no .pth file installs facecomp's editable finder; the packages
    # stay importable through PYTHONPATH. What imports facecomp.kernels then is bench/source_tree.py.
    packages = os.pathsep.join(site.getsitepackages())
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": f"{sys.executable} -S", "PYTHONPATH": packages}
    r = subprocess.run([str(REPO / "scripts" / "device_check.sh"), "--device", "cpu", "--quick"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert (tmp_path / "device_check.txt").read_text().startswith("facecomp device check")
    assert report["facecomp_from"] == "source" and report["quick"] and report["device"]["type"] == "cpu"
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEPS
    assert report["partial"] is False
    for name in STEPS[:7]:
        assert steps[name]["status"] == "ok", steps[name]
        assert steps[name]["seconds"] > 0
    assert steps["aoti_probe"]["status"] == "skipped"  # it only runs after the export step failed
    assert "did not fail" in steps["aoti_probe"]["reason"]
    assert steps["deepspeed_zero1"]["status"] in ("ok", "skipped"), steps["deepspeed_zero1"]
    assert steps["not_testable_there"]["status"] == "untestable"
    assert report["all_finite"] and all(math.isfinite(x) for x in _numbers(report))

    env_ = steps["environment"]["result"]
    assert env_["peak_tflops_measured"]["bf16"] > 0 and env_["copy_gbps_measured"] > 0
    assert steps["kernels"]["result"]["cuda_tests"]["returncode"] in (0, 5)  # all skipped without a GPU
    parity = steps["gpu_vs_cpu_fp32"]["result"]
    assert parity["same_device"] and parity["forward_max_abs"] == 0.0  # CPU against itself: exactly equal
    mfu = steps["train_mfu"]["result"]
    assert [(r["mode"], r["batch"]) for r in mfu["rows"]] == [("none", 2)] and mfu["best"]["mode"] == "none"
    assert mfu["rows"][0]["mfu_pct_of_measured_bf16_peak"] > 0 and mfu["rows"][0]["host_syncs_per_step"] is None
    smoke = steps["train_throughput"]["result"]["smoke"]
    assert [f"stage{s}" for s in (1, 2, 3)] == list(smoke["eager"])
    for row in smoke["eager"].values():
        assert row["tflop_per_step"] > 0 and row["mfu_pct_of_measured_bf16_peak"] > 0
    assert smoke["compile"]["status"] == "skipped"
    profile = steps["train_profile"]["result"]
    assert list(profile["by_batch"]) == ["2", "4"] and profile["profile"]["top_device_work"]
    assert 0 < profile["profile"]["device_busy_ms_per_step"]
    assert set(profile["adam_at_first_batch"]["step_ms"]) == {"default", "fused"}
    assert steps["export_aoti_engine"]["process"] == "child"  # a native crash there must not end the check
    export = steps["export_aoti_engine"]["result"]
    assert export["export_rc"] == 0 and export["batch4"]["parity_psnr_db"] > 90
    assert report["faces"] == 0 or export["complete_rc"] == 0


def test_a_step_whose_process_dies_is_recorded_not_fatal(tmp_path):
    """run_in_child turns a child that leaves no report (here: it refuses an unknown step and exits 2)
    into a 'crashed' record with the reason and the child's stderr, where a segfault ended the check."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import device_check
    finally:
        sys.path.remove(str(REPO / "bench"))
    import argparse

    args = argparse.Namespace(device="cpu", quick=True, faces=None)
    record = device_check.run_in_child("no_such_step", args, tmp_path, 30.0)
    assert record["status"] == "crashed" and record["process"] == "child"
    assert record["error"].startswith("the step's process exited with status")
    assert "unknown step" in record["stderr_tail"]


def test_aoti_probe_builds_and_loads_in_separate_processes(tmp_path):
    """bench/aoti_probe.py on the CPU with its smallest variant: compiled in one child, loaded and run
    in another, the parity with eager recorded (on the GPU it names the build that crashes)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'bench'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, str(REPO / "bench" / "aoti_probe.py"), "--device", "cpu", "--variants", "tiny",
                        "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    (v,) = json.loads((tmp_path / "aoti_probe.json").read_text())["variants"]
    assert v["variant"] == "tiny" and v["compile"]["status"] == "ok" and v["compile"]["package_bytes"] > 0
    assert v["load_and_run"]["status"] == "ok" and v["load_and_run"]["max_abs_vs_eager"] < 1e-4

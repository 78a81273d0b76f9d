"""The run folder has one owner: RunFolder builds every path of a run, and answers for plain and cluster
runs alike (newest, last good, keep-k, resume, the chosen weights, what --model RUN means)."""

import ast
import json
import re
from pathlib import Path

import pytest

from facecomp.weights import RunFolder, resolve

REPO = Path(__file__).resolve().parents[1]

# A string that names a part of a run folder or of a checkpoint folder (an f-string's fields read as {}).
LAYOUT = re.compile(r"^(step_.*|checkpoints|latest|state\.json|result\.json|validation\.json|config\.(toml|json)"
                    r"|diverged\.json|tb|generator_ema.*|optim_.*|.*\.safetensors)$")
OWNER = REPO / "facecomp" / "weights" / "run_folder.py"
# The weights shipped inside the package are files of the install, not of a run.
SHIPPED = (REPO / "facecomp" / "weights" / "__init__.py",
           {"generator.safetensors", "paper_generator.safetensors", "parsing.safetensors", "identity.safetensors"})


def _code_strings(tree: ast.AST):
    """(line, text) of every string in the code, docstrings left out."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    in_fstring = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            in_fstring.update(id(v) for v in node.values)
            yield node.lineno, "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and id(node) not in in_fstring):
            yield node.lineno, node.value


def layout_strings(path: Path) -> list[tuple[int, str]]:
    return [(line, text) for line, text in _code_strings(ast.parse(path.read_text())) if LAYOUT.match(text)]


def test_only_the_run_folder_builds_run_and_checkpoint_paths():
    found = []
    for root in ("facecomp", "cluster"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path == OWNER:
                continue
            allowed = SHIPPED[1] if path == SHIPPED[0] else set()
            found += [f"{path.relative_to(REPO)}:{line} {text!r}" for line, text in layout_strings(path)
                      if text not in allowed]
    assert not found, "paths of a run built outside facecomp/weights/run_folder.py:\n" + "\n".join(found)
    assert len(layout_strings(OWNER)) > 10  # the scan sees the owner's names (it would miss nothing silently)


def test_the_scan_catches_a_path_built_by_hand(tmp_path):
    leak = tmp_path / "leak.py"
    leak.write_text('"""Docstrings may name step_0000001/ and state.json."""\n'
                    'def f(run, step):\n    return run / "checkpoints" / f"step_{step:07d}" / "state.json"\n')
    assert sorted(text for _, text in layout_strings(leak)) == ["checkpoints", "state.json", "step_{}"]


def _checkpoint(folder: Path, finite: bool | None = True, weights: str = "g") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "generator.safetensors").write_text(weights)
    (folder / "generator_ema.safetensors").write_text(weights + "-ema")
    (folder / "state.json").write_text(json.dumps({"finite": finite}))


def test_plain_run_save_latest_and_keep_k(tmp_path):
    run = RunFolder(tmp_path / "run")
    for step in (2, 4, 6, 8):
        run.save(step, lambda f, s=step: _checkpoint(f, weights=str(s)), keep=2, protect=frozenset({2}))
    assert run.steps() == {2, 6, 8}  # the newest two and the protected one
    assert run.latest() == tmp_path / "run" / "checkpoints" / "step_0000008"
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_0000008"
    assert not list((tmp_path / "run" / "checkpoints").glob(".staging_*"))
    # a failed write leaves nothing half-written behind, and the run as it was
    with pytest.raises(RuntimeError):
        run.save(10, lambda f: (_ for _ in ()).throw(RuntimeError("boom")))
    assert run.steps() == {2, 6, 8} and not list((tmp_path / "run" / "checkpoints").glob(".staging_*"))


def test_keep_k_keeps_the_last_finite_checkpoint(tmp_path):
    run = RunFolder(tmp_path)
    run.save(1, lambda f: _checkpoint(f, finite=True), keep=1)
    for step in (2, 3):
        run.save(step, lambda f: _checkpoint(f, finite=False), keep=1)
    assert run.steps() == {1, 3}
    assert run.last_good() == run.checkpoint(1)


def test_cluster_layout_reads_the_same(tmp_path):
    for step in (3, 6):
        _checkpoint(tmp_path / RunFolder.checkpoint_name(step))
    (tmp_path / "step_0000009").mkdir()  # a folder Ray Train has not filled yet
    run = RunFolder(tmp_path)
    assert run.latest() == tmp_path / "step_0000006"
    assert run.steps() == {3, 6}
    assert [p.name for p in run.checkpoints()] == ["step_0000009", "step_0000006", "step_0000003"]
    assert resolve(tmp_path) == tmp_path / "step_0000006" / "generator.safetensors"


def test_chosen_weights_and_what_model_run_means(tmp_path):
    run = RunFolder(tmp_path)
    for step in (2, 4):
        run.save(step, lambda f, s=step: _checkpoint(f, weights=str(s)))
    # unfinished: the newest checkpoint's raw generator; refused as --init unless allowed
    assert run.chosen() == (run.checkpoint(4), run.checkpoint(4) / "generator.safetensors")
    assert resolve(tmp_path) == run.checkpoint(4) / "generator.safetensors"
    run.begin("x = 1\n", {"stage": 1})
    with pytest.raises(ValueError, match="has not finished"):
        run.check_finished(allow_unfinished=False)
    run.check_finished(allow_unfinished=True)
    # finished on step 2's average: that is what a later stage and --model start from
    chosen_weights = RunFolder.variant_file(run.checkpoint(2), "ema")
    run.finish({"finished": True, "chosen": {"step": 2, "variant": "ema"}}, chosen_weights)
    assert run.chosen() == (run.checkpoint(2), run.checkpoint(2) / "generator_ema.safetensors")
    assert resolve(tmp_path) == tmp_path / "generator.safetensors"
    assert (tmp_path / "generator.safetensors").read_text() == "2-ema"
    assert run.read_result()["generator"] == "generator.safetensors"
    run.check_finished(allow_unfinished=False)
    # a checkpoint folder stands for itself
    assert RunFolder(run.checkpoint(2)).latest() == run.checkpoint(2)
    assert resolve(run.checkpoint(2)) == run.checkpoint(2) / "generator.safetensors"


def test_started_overwrite_and_a_new_session(tmp_path):
    run = RunFolder(tmp_path)
    assert not run.is_started()
    (tmp_path / "mine.txt").write_text("kept")
    run.begin("x = 1\n", {"stage": 1})
    run.save(1, _checkpoint)
    run.diverged_file.write_text("{}")
    assert run.is_started()
    with pytest.raises(ValueError, match="already holds a run"):
        run.refuse_started()
    run.begin("x = 2\n")  # a resumed session: no stale result or divergence marker
    assert not run.diverged_file.exists() and run.read_result() is None
    run.clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_resume_passes_over_what_does_not_verify(tmp_path, caplog):
    run = RunFolder(tmp_path)
    for step in (1, 2, 3):
        run.save(step, _checkpoint, keep=0)
    bad = {run.checkpoint(3), run.checkpoint(2)}
    assert run.resume(lambda c: "damaged" if c in bad else None) == run.checkpoint(1)
    assert "passing over damaged checkpoint(s)" in caplog.text
    with pytest.raises(ValueError, match="no checkpoint to resume from verifies"):
        run.resume(lambda c: "damaged")
    with pytest.raises(ValueError, match="no checkpoint here"):
        RunFolder(tmp_path / "empty").resume(lambda c: None)


def test_legacy_optimizer_file_is_found(tmp_path):
    (tmp_path / "optim_g.safetensors").write_text("old")
    assert RunFolder.optimizer_file(tmp_path, "generator") == tmp_path / "optim_g.safetensors"
    assert RunFolder.checkpoint_file(tmp_path, "optim_generator") == tmp_path / "optim_g.safetensors"
    assert RunFolder.optimizer_file(tmp_path, "d_local") == tmp_path / "optim_d_local.safetensors"
    assert RunFolder.is_optimizer_file(tmp_path / "optim_g.safetensors")
    assert not RunFolder.is_optimizer_file(tmp_path / "generator.safetensors")

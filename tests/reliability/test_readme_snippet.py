"""The README's Python snippet works saved as a script as it stands (issue 22: render workers are spawned and
re-import ``__main__``, so an unguarded script died and wrote nothing). Only the placeholders and the sizes
change (tiny weights, a tiny scene, a second-long lift); the structure, defaults and worker settings do not."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from fit3d.paths import REPO_ROOT
from reliability_kit import copy_of

TINY_LIFT = ("iterations=6, width=16, feature_size=32, feature_dim=4, init_points=200, max_gaussians=400, "
             "pca_views=0, progress=False, checkpoint_every=0, device='cpu'")


def readme_snippet() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    m = re.search(r"## Python\n\n```python\n(.*?)```", text, re.S)
    assert m, "README.md has no Python snippet under '## Python'"
    return m.group(1)


def test_readme_snippet_runs_as_a_script(scene_dir, tiny_dino, tmp_path):
    code = readme_snippet()
    for placeholder in ('"path/to/dinov2-small"', '"path/to/scene"', "LiftConfig(model_path=weights)"):
        assert placeholder in code, placeholder
    scene = copy_of(scene_dir, tmp_path / "scene")
    code = (code.replace('"path/to/dinov2-small"', repr(str(tiny_dino)))
                .replace('"path/to/scene"', repr(str(scene)))
                .replace("LiftConfig(model_path=weights)", f"LiftConfig(model_path=weights, {TINY_LIFT})"))
    assert "__main__" not in code  # saved as it stands: no main guard
    script = tmp_path / "snippet.py"
    script.write_text(code + "\nprint('snippet done', tuple(patch.shape), flush=True)\n")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "FIT3D_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "snippet done (2, 32, 28, 28)" in r.stdout, r.stdout  # concat: 2 x 16 wide, 224 / 8 patches
    assert (tmp_path / "runs" / "ft" / "fit3d.json").is_file()
    assert "renders in the main process" in r.stderr  # said once, why the workers were not used


@pytest.mark.parametrize("guarded, expect", [(True, True), (False, False)])
def test_workers_spawn_only_where_the_main_script_is_guarded(guarded, expect, tmp_path, monkeypatch):
    import types

    from fit3d.run import workers_can_spawn

    script = tmp_path / "s.py"
    script.write_text("import fit3d\n" + ("if __name__ == '__main__':\n    " if guarded else "") + "fit3d.load('x')\n")
    main = types.ModuleType("__main__")
    main.__file__, main.__spec__ = str(script), None  # `python s.py`
    monkeypatch.setitem(sys.modules, "__main__", main)
    assert workers_can_spawn("spawn")[0] is expect and workers_can_spawn("forkserver")[0] is expect
    assert workers_can_spawn("fork") == (True, "")
    if not expect:
        assert "s.py has no `if __name__" in workers_can_spawn("spawn")[1]

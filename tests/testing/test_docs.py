"""docs/testing.md shows the example files of docs/examples/ as they are, and they run as
written under pytest, trial and as a plain script (tests/testing/test_examples_matrix.py
runs them together in every mode)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
EXAMPLES = DOC.parent / "examples"
BLOCK = re.compile(r"```python\n(# (\S+\.py)[^\n]*\n.*?)```", re.S)


def _examples() -> dict[str, str]:
    return {name: text for text, name in BLOCK.findall(DOC.read_text())}


def _plugin_args() -> list[str]:
    """Load our plugin explicitly unless the installed entry point already does."""
    eps = importlib.metadata.entry_points(group="pytest11")
    if any(ep.value == "mailhost.testing.pytest_plugin" for ep in eps):
        return []
    return ["-p", "mailhost.testing.pytest_plugin"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(DOC.parents[1]), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_doc_shows_every_example_file_verbatim():
    shown = _examples()
    files = {p.name: p.read_text() for p in EXAMPLES.glob("*.py")}
    assert set(shown) == set(files), "docs/testing.md and docs/examples/ list other files"
    for name, text in files.items():
        assert shown[name] == text, f"docs/testing.md shows another {name} than docs/examples/"


@pytest.mark.slow
def test_doc_examples_run(tmp_path):
    for path in EXAMPLES.glob("*.py"):
        shutil.copy(path, tmp_path / path.name)
    result = _run(["-m", "twisted.trial", "test_welcome_trial"], tmp_path)
    assert result.returncode == 0 and "PASSED" in result.stdout, result.stdout + result.stderr
    result = _run(["check_signup.py"], tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr

"""The examples in docs/testing.md run as written (pytest, trial and a plain script)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
BLOCK = re.compile(r"```python\n# (\S+\.py)[^\n]*\n(.*?)```", re.S)


def _examples() -> dict[str, str]:
    return {name: f"# {name}\n{body}" for name, body in BLOCK.findall(DOC.read_text())}


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


@pytest.mark.slow
def test_doc_examples_run(tmp_path):
    examples = _examples()
    assert {"test_welcome_trial.py", "test_welcome_pytest_twisted.py",
            "test_welcome_sync.py", "check_signup.py"} <= set(examples)
    for name, code in examples.items():
        (tmp_path / name).write_text(code)
    tests = sorted(n for n in examples if n.startswith("test_"))
    result = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", *_plugin_args(), *tests],
                  tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout, result.stdout
    result = _run(["-m", "twisted.trial", "test_welcome_trial"], tmp_path)
    assert result.returncode == 0 and "PASSED" in result.stdout, result.stdout + result.stderr
    result = _run(["check_signup.py"], tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr

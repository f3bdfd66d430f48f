"""docs/embedding.md cannot drift: its examples use only the front door, the script runs as
written, and the .tac excerpt is the one tests/embedding runs under twistd."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "embedding.md"
BLOCKS = re.compile(r"```python\n(.*?)```", re.S)


def _blocks() -> list[str]:
    blocks = BLOCKS.findall(DOC.read_text())
    assert len(blocks) == 2, blocks
    return blocks


def test_examples_use_only_the_front_door():
    for code in _blocks():
        tree = ast.parse(code)
        modules = {node.module for node in ast.walk(tree)
                   if isinstance(node, ast.ImportFrom) and node.module}
        modules |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                    for a in node.names}
        ours = {m for m in modules if m.split(".")[0] == "mailhost"}
        assert ours == {"mailhost"}, ours
    # And the prose names nothing below the package: `mailhost.x.y` only for mailhost.testing.
    deep = set(re.findall(r"`mailhost\.([a-z_]+)\.", DOC.read_text()))
    assert deep <= {"testing"}, deep


def test_tac_excerpt_is_in_the_tac_the_tests_run():
    tac = {line.strip() for line in (ROOT / "tap-configs" / "embedded.tac").read_text()
           .splitlines()}
    excerpt = _blocks()[0]
    missing = [line for line in excerpt.splitlines() if line.strip() and line.strip() not in tac]
    assert not missing, missing


def test_custom_auth_script_runs_as_written(tmp_path):
    code = _blocks()[1]
    assert code.startswith("# embed_custom_auth.py\n")
    script = tmp_path / "embed_custom_auth.py"
    script.write_text(code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == ["Subject: hello from the docs",
                                          "logouts: ['alice@example.com']"], result.stdout

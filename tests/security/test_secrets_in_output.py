"""Secrets from the config never reach printed or logged output.

``mailhost check-config`` prints the effective settings so an admin can paste them
into a ticket; the smarthost password must not be among them.
"""

from __future__ import annotations

import subprocess
import sys

SECRET = "Sm4rth0st-S3cret-Qx7"


def test_check_config_does_not_print_the_smarthost_password(tmp_path):
    cfg = tmp_path / "mailhost.toml"
    cfg.write_text(
        "[server]\n"
        f'data_dir = "{tmp_path}/data"\n'
        "[outbound]\n"
        'smarthost = "relay.example:587"\n'
        'smarthost_user = "me"\n'
        f'smarthost_password = "{SECRET}"\n'
    )
    p = subprocess.run(
        [sys.executable, "-c", "import sys; from mailhost.cli.main import main; sys.exit(main())",
         "check-config", str(cfg)],
        capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    out = (p.stdout + p.stderr).decode()
    assert "smarthost_password" in out  # the key is shown ...
    assert SECRET not in out  # ... but not its value

"""`python app.py --ray ...` (issue 40, item 4): without Ray, or with Ray unreachable, one line and exit 1, never a
traceback; without --ray the options are today's."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_app(*args, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(extra_path or ""), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args, "--port", "1"], capture_output=True,
                          text=True, timeout=120, env=os.environ | {"PYTHONPATH": path})


def test_without_ray_installed_one_line(tmp_path):
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text('raise ImportError("No module named \'ray\'")\n')
    done = run_app("--ray", "local", extra_path=tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("error: --ray needs Ray Serve") and ".[serve]" in done.stderr


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="Ray is not installed: the line is then test_without_ray_installed_one_line's")
def test_unreachable_ray_one_line_at_once():
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = run_app("--ray", f"127.0.0.1:{port}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and line.startswith("error: ")
    assert f"127.0.0.1:{port}" in line


def test_without_ray_the_options_are_todays():
    import app

    args = app.parse_args([])
    assert (args.ray, args.replicas, args.max_replicas, args.no_batching) == (None, 1, None, False)

"""Run a Python snippet in a fresh interpreter: for tests of what a new process imports or loads."""
from __future__ import annotations

import subprocess
import sys


def run_snippet(code: str, timeout: float = 300, env=None) -> str:
    """The snippet's stdout; fails the test with its stderr when it exits non-zero."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout

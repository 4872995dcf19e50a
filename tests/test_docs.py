"""Generated docs are generated: config reference, CLI help and the feature table are current."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["scripts/gen_docs.py", "scripts/gen_feature_docs.py"])
def test_generated_docs_are_current(script):
    r = subprocess.run([sys.executable, str(REPO / script), "--check"], capture_output=True, text=True,
                       env={"COLUMNS": "100", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, f"{script} --check: {r.stdout}{r.stderr} (run python {script})"


def test_readme_commands_exist():
    readme = (REPO / "README.md").read_text()
    assert "bash scripts/demo.sh" in readme and "bash scripts/test.sh" in readme
    assert (REPO / "scripts" / "demo.sh").exists() and (REPO / "scripts" / "test.sh").exists()
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci

"""One formatter and linter for the whole tree: ruff, configured in pyproject.toml (line length,
rules and the reasons for each exception). A change that `ruff format` would rewrite, or that
`ruff check` flags, fails here; run `ruff format . && ruff check .` to see and fix it."""

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.parametrize("command", [["format", "--check", "--diff"], ["check"]], ids=["format", "lint"])
def test_the_tree_is_as_ruff_leaves_it(command):
    done = subprocess.run([sys.executable, "-m", "ruff", *command, "--no-cache", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"ruff {' '.join(command)} .:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"

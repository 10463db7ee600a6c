"""The import-direction contract of pyproject.toml ([tool.importlinter]) holds, and it bites.

pipeline > compress > students | teachers > core: a package imports only the ones below it, and
students and teachers import neither each other.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "teachers", "students", "compress", "pipeline")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the packages under ``root`` with ``root``'s pyproject.toml."""
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
               "--config", str(root / "pyproject.toml"), "--no-cache"]
    env = {**os.environ, "PYTHONPATH": str(root)}  # this checkout's packages, not an installed copy
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_dependencies_point_one_way():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_the_contract_catches_a_student_importing_teachers_and_core_importing_pipeline(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "students" / "__init__.py").write_text("import teachers\n")
    (tmp_path / "core" / "__init__.py").write_text("import pipeline\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "students -> teachers" in result.stdout and "core -> pipeline" in result.stdout, result.stdout

"""The import-direction contracts of pyproject.toml ([tool.importlinter]) hold, and they bite.

Between packages, pipeline > compress > students | teachers > core: a package imports only the
ones below it, and students and teachers import neither each other. Inside pipeline, cli > api > runner >
stages > the shared libraries (training, evaluation, labeling, observability, tasks) > textdata >
config, artifacts and ray_address; and no stage imports another stage.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "teachers", "students", "compress", "pipeline")
PIPELINE_PACKAGES = ("cli", "stages", "training", "evaluation", "labeling", "observability", "textdata", "config")
PIPELINE_MODULES = ("api", "runner", "tasks", "artifacts", "ray_address")
STAGES = ("data", "finetune", "label", "train", "evaluate", "prune", "export", "quantize", "benchmark")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the packages under ``root`` with ``root``'s pyproject.toml."""
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
               "--config", str(root / "pyproject.toml"), "--no-cache"]
    env = {**os.environ, "PYTHONPATH": str(root)}  # this checkout's packages, not an installed copy
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_dependencies_point_one_way():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


def test_the_contract_catches_a_student_importing_teachers_and_core_importing_pipeline(tmp_path):
    planted_tree(tmp_path)
    (tmp_path / "students" / "__init__.py").write_text("import teachers\n")
    (tmp_path / "core" / "__init__.py").write_text("import pipeline\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "students -> teachers" in result.stdout and "core -> pipeline" in result.stdout, result.stdout


def planted_tree(root: Path) -> Path:
    """Empty packages and modules laid out as this repository's, with its pyproject.toml."""
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    for package in PACKAGES:
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
    for package in PIPELINE_PACKAGES:
        (root / "pipeline" / package).mkdir()
        (root / "pipeline" / package / "__init__.py").write_text("")
    for module in PIPELINE_MODULES:
        (root / "pipeline" / f"{module}.py").write_text("")
    for stage in STAGES:
        (root / "pipeline" / "stages" / f"{stage}.py").write_text("")
    return root


def test_the_pipeline_contracts_catch_a_library_importing_a_stage_and_a_stage_importing_another(tmp_path):
    root = planted_tree(tmp_path)
    clean = lint_imports(root)
    assert clean.returncode == 0 and "3 kept, 0 broken" in clean.stdout, clean.stdout + clean.stderr
    (root / "pipeline" / "training" / "__init__.py").write_text("import pipeline.stages.evaluate\n")
    (root / "pipeline" / "stages" / "quantize.py").write_text("import pipeline.stages.export\n")
    (root / "pipeline" / "config" / "__init__.py").write_text("import pipeline.runner\n")
    result = lint_imports(root)
    assert result.returncode != 0
    for planted in ("pipeline.training -> pipeline.stages.evaluate", "pipeline.stages.quantize -> pipeline.stages.export",
                    "pipeline.config -> pipeline.runner"):
        assert planted in result.stdout, result.stdout

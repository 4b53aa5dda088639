"""Versions of a Triton model repository, written atomically: each model's version directory is staged and
renamed into place under an exclusive lock on the repository folder; an existing version is replaced only
when asked (``force``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from deploykit.core.errors import ArtifactError, ConfigError
from deploykit.core.io import atomic_write_text, ordinary_mode
from deploykit.serving.pbtxt import to_pbtxt


def existing_versions(model_dir: Path) -> set[int]:
    if not model_dir.is_dir():
        return set()
    return {int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()}


def open_repository(repo: str | Path) -> Path:
    repo = Path(repo)
    try:
        repo.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(f"cannot create repository {repo}: {exc.strerror or exc}") from None
    return repo


def choose_version(repo: Path, models: list[str], version: int | None, force: bool) -> tuple[int, bool]:
    """``(version, replaced)``: the next free version number of the models when ``version`` is None; an
    existing version only with ``force``."""
    existing = {m: existing_versions(repo / m) for m in models}
    taken = set().union(*existing.values())
    if version is None:
        version = max(taken, default=0) + 1
    if version < 1:
        raise ConfigError(f"--version must be at least 1, got {version}")
    clash = sorted(m for m, versions in existing.items() if version in versions)
    if clash and not force:
        raise ConfigError(
            f"version {version} of {', '.join(clash)} already exists in {repo}; pass --force to replace it "
            f"(or --version N)"
        )
    return version, bool(clash)


@contextlib.contextmanager
def locked(repo: Path):
    """An exclusive lock on the repository folder itself (flock on its descriptor: no lock file among the
    models) while versions are chosen and written, so concurrent runs never take the same version."""
    import fcntl

    fd = os.open(repo, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def publish(
    repo: Path, version: int, files: dict[str, dict[str, bytes | Path]], configs: dict[str, dict[str, Any]]
) -> None:
    """Stage every model's version directory, then rename each into place and write its config.pbtxt."""
    staged: dict[str, Path] = {}
    created = [repo / model for model in files if not (repo / model).exists()]
    published = False
    try:
        for model, contents in files.items():
            staged[model] = _staging_dir(repo / model)
            _write_files(staged[model], contents)
        for model, stage in staged.items():  # every file is in place: publish versions, then configs
            _rename_into_place(stage, repo / model / str(version))
            atomic_write_text(repo / model / "config.pbtxt", to_pbtxt(configs[model]) + "\n")
        published = True
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise ArtifactError(f"cannot write the repository {repo}: {exc.strerror or exc}{where}") from None
    finally:  # a failure leaves no staging directory behind (published ones were renamed away)
        for stage in staged.values():
            shutil.rmtree(stage, ignore_errors=True)
        for folder in created if not published else ():
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: a model folder this run created and filled with nothing


def _staging_dir(model_dir: Path) -> Path:
    """A new hidden directory in ``model_dir`` (created if needed) with an ordinary directory's mode."""
    model_dir.mkdir(exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=model_dir, prefix=".deploykit-staging-"))
    stage.chmod(ordinary_mode(executable=True))
    return stage


def _write_files(directory: Path, contents: dict[str, bytes | Path]) -> None:
    for filename, data in contents.items():
        if isinstance(data, Path):
            shutil.copyfile(data, directory / filename)
        else:
            atomic_write_text(directory / filename, data.decode())


def _rename_into_place(stage: Path, final: Path) -> None:
    """``stage`` becomes ``final``; an existing ``final`` is moved aside first and deleted after."""
    if final.exists():
        trash = Path(tempfile.mkdtemp(dir=final.parent, prefix=".deploykit-replaced-"))
        final.rename(trash / "old")
        stage.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        stage.rename(final)

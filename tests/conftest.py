"""Shared fixtures: an isolated home per test, a registry, and synthetic concept files."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from perfusion_hub.concepts import BaseFingerprint, save_concept
from perfusion_hub.concepts.synthetic import synthetic_concept
from perfusion_hub.registry import Registry
from perfusion_hub.settings import DATABASE_URL_ENV, HOME_ENV, Settings


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread: the test models are tiny, and thread hand-offs cost more than they save."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """No test ever reads or writes the user's real perfusion-hub home."""
    monkeypatch.setenv(HOME_ENV, str(tmp_path_factory.mktemp("default-home")))
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)


@pytest.fixture(scope="session")
def _schema_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry database migrated to head once per session (migrating takes ~0.5 s)."""
    home = tmp_path_factory.mktemp("template-home")
    Registry(Settings(home=home, database_url=f"sqlite:///{home / 'registry.db'}")).close()
    return home / "registry.db"


@pytest.fixture
def home(tmp_path: Path, _schema_template: Path) -> Path:
    """A fresh home directory whose registry database is already at the head revision."""
    folder = tmp_path / "home"
    folder.mkdir()
    shutil.copyfile(_schema_template, folder / "registry.db")
    return folder


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings.resolve(home)


@pytest.fixture
def registry(settings: Settings) -> Iterator[Registry]:
    with Registry(settings) as opened:
        yield opened


@pytest.fixture(scope="module")
def pipe():
    """The tiny random pipeline of tests/tiny.py, one per test module."""
    from tiny import tiny_pipeline

    return tiny_pipeline()


@pytest.fixture(scope="module")
def inv(pipe):
    """C⁻¹ of the tiny pipeline's text encoder."""
    from tiny import tiny_inverse_covariance

    return tiny_inverse_covariance(pipe)


@pytest.fixture(scope="session")
def tiny_base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random pipeline of tests/tiny.py saved as a diffusers folder: a local base."""
    from tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-base")
    tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_hub(home: Path, tiny_base_folder: Path):
    """A Hub on a fresh home whose registry knows the tiny base as `tiny`."""
    from tiny import BASE_CAPTIONS

    from perfusion_hub import Hub

    hub = Hub(home)
    hub.add_base(tiny_base_folder, name="tiny", captions=BASE_CAPTIONS)
    return hub


ConceptFileFactory = Callable[..., Path]


@pytest.fixture
def concept_file(tmp_path: Path) -> ConceptFileFactory:
    """`concept_file(name, seed=0, base=None, dtype="float16", superclass="cat")` writes a
    synthetic concept file into a temporary folder and returns its path."""
    folder = tmp_path / "files"
    folder.mkdir(exist_ok=True)

    def make(name: str, seed: int = 0, base: BaseFingerprint | None = None,
             dtype: str = "float16", superclass: str = "cat") -> Path:
        path = folder / f"{name}-{seed}-{dtype}.safetensors"
        concept = synthetic_concept(name, base=base, seed=seed, superclass=superclass)
        save_concept(concept, path, dtype=dtype)
        return path

    return make

"""Where perfusion-hub keeps its state: home directory, database URL, concept store."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from platformdirs import user_data_dir

HOME_ENV = "PHUB_HOME"
DATABASE_URL_ENV = "PHUB_DATABASE_URL"


@dataclass(frozen=True)
class Settings:
    """Resolved locations. Build one with `Settings.resolve`."""

    home: Path
    database_url: str

    @classmethod
    def resolve(cls, home: str | Path | None = None) -> Settings:
        """Home = `home` argument, else $PHUB_HOME, else the platform's user data dir.

        Database URL = $PHUB_DATABASE_URL, else a SQLite file `registry.db` in the home.
        """
        chosen = home or os.environ.get(HOME_ENV) or user_data_dir("perfusion-hub", appauthor=False)
        root = Path(chosen).expanduser().resolve()
        url = os.environ.get(DATABASE_URL_ENV) or f"sqlite:///{root / 'registry.db'}"
        return cls(home=root, database_url=url)

    @property
    def concepts_dir(self) -> Path:
        """Content-addressed store of concept files."""
        return self.home / "concepts"

    @property
    def bases_dir(self) -> Path:
        """Per-base text statistics (C⁻¹ files)."""
        return self.home / "bases"

    @property
    def checkpoints_dir(self) -> Path:
        """Training checkpoints, one folder per run."""
        return self.home / "checkpoints"

    @property
    def renders_dir(self) -> Path:
        """Default output folder of renders."""
        return self.home / "renders"

    @property
    def backups_dir(self) -> Path:
        """Database copies taken before schema upgrades."""
        return self.home / "backups"

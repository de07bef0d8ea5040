"""Registry speed: importing 1,000 concept files, and a whole `phub list --json` process over
10,000 registered concepts. Goals: < 10 s and < 0.5 s.

    .venv/bin/python benchmarks/registry.py [--imports 1000] [--rows 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from perfusion_hub.concepts import save_concept
from perfusion_hub.concepts.synthetic import synthetic_base, synthetic_concept
from perfusion_hub.registry import Registry
from perfusion_hub.registry.models import ConceptRow, utcnow
from perfusion_hub.settings import Settings

HEAVY = {"torch", "diffusers", "transformers", "numpy", "PIL", "safetensors", "alembic",
         "pydantic", "accelerate"}
IMPORT_GOAL_S = 10.0
LIST_GOAL_S = 0.5


def write_concept_files(folder: Path, count: int) -> list[Path]:
    """`count` distinct synthetic concept files (SD-sized text width, small layer list)."""
    base = synthetic_base(text_width=768, widths=(320, 640, 1280, 1280))
    paths = []
    for index in range(count):
        path = folder / f"concept-{index:05d}.safetensors"
        save_concept(synthetic_concept(f"concept-{index:05d}", base=base, seed=index), path)
        paths.append(path)
    return paths


def time_imports(home: Path, paths: list[Path]) -> tuple[float, float]:
    """Wall and CPU seconds to import every file into a fresh registry (schema created
    beforehand)."""
    with Registry(Settings.resolve(home)) as registry:
        start, start_cpu = time.perf_counter(), time.process_time()
        for path in paths:
            registry.import_file(path)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        assert len(registry.list()) == len(paths)
    return elapsed, cpu


def seed_rows(home: Path, count: int) -> None:
    """`count` concept rows in one bulk insert (rows only: listing never reads the files)."""
    with Registry(Settings.resolve(home)) as registry:
        base_id = registry.get_base(registry.add(synthetic_concept("seed-concept")).base_name).id
        now = utcnow()
        rows = [
            {"name": f"bulk-{index:06d}", "token": f"<bulk-{index:06d}>", "superclass": "cat",
             "lock": "local", "base_id": base_id, "content_hash": f"{index:064x}",
             "file_path": f"00/{index:064x}.safetensors", "size": 29_000, "beta": 0.7,
             "tau": 0.15, "training": {"steps": 400, "lr": 1e-3}, "metrics": {}, "tags": [],
             "created": now, "updated": now}
            for index in range(count - 1)
        ]
        with registry.engine.begin() as connection:
            connection.execute(insert(ConceptRow), rows)


def time_list(home: Path, runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU (user + system) seconds of whole `phub --home HOME list --json` processes.

    Runs as an installed tool does: with Python's byte-code cache on (an environment that sets
    PYTHONDONTWRITEBYTECODE would recompile phub's own modules on every start) and after one
    untimed warm-up run.
    """
    phub = shutil.which("phub", path=str(Path(sys.executable).parent)) or "phub"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([phub, "--home", str(home), "list", "--json"], capture_output=True,
                   check=True, env=env)
    walls, cpus = [], []
    for _ in range(runs):
        before = os.times()
        start = time.perf_counter()
        done = subprocess.run([phub, "--home", str(home), "list", "--json"],
                              capture_output=True, check=True, env=env)
        walls.append(time.perf_counter() - start)
        after = os.times()
        cpus.append(after.children_user - before.children_user
                    + after.children_system - before.children_system)
        assert done.stdout.count(b'"content_hash"') >= 1
    return walls, cpus


def heavy_modules(home: Path) -> list[str]:
    """Which slow-to-import libraries a `phub list --json` process loads."""
    script = (
        "import sys, contextlib, io\n"
        "from cli.main import app\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        f"    app(['--home', {str(home)!r}, 'list', '--json'])\n"
        "print(' '.join(sorted(m for m in sys.modules if '.' not in m)))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True).stdout.split()
    return sorted(set(loaded) & HEAVY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imports", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="phub-bench-") as tmp:
        root = Path(tmp)
        files = root / "files"
        files.mkdir()
        paths = write_concept_files(files, options.imports)
        imported, cpu = time_imports(root / "import-home", paths)
        print(f"import {options.imports} concept files: {imported:.2f} s wall, {cpu:.2f} s CPU "
              f"({imported / options.imports * 1000:.1f} ms each; goal < {IMPORT_GOAL_S:g} s "
              f"for 1,000)")
        seed_rows(root / "list-home", options.rows)
        walls, cpus = time_list(root / "list-home", options.runs)
        print(f"`phub list --json` over {options.rows} rows, whole process: "
              f"wall median {statistics.median(walls):.3f} s, best {min(walls):.3f} s; "
              f"CPU best {min(cpus):.3f} s; {options.runs} runs (goal < {LIST_GOAL_S:g} s wall)")
        print(f"heavy modules loaded by `phub list`: "
              f"{', '.join(heavy_modules(root / 'list-home')) or 'none'}")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load}")

if __name__ == "__main__":
    main()

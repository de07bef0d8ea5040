"""Several processes importing into one home at the same moment: every row lands, nobody
sees "database is locked"."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from perfusion_hub.registry import Registry
from perfusion_hub.settings import Settings

WORKER = textwrap.dedent("""
    import sys, time
    from perfusion_hub.registry import Registry
    from perfusion_hub.settings import Settings

    home, start, *files = sys.argv[1:]
    registry = Registry(Settings.resolve(home))
    time.sleep(max(0.0, float(start) - time.time()))
    for path in files:
        registry.import_file(path)
    registry.set_metrics(registry.get(registry.list()[0].name).name, {"seen": True})
    registry.log_render("concurrent", [], None, {}, None)
""")


def run_together(home: Path, groups: list[list[Path]]) -> None:
    start = time.time() + 4  # after every interpreter has started and opened the registry
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(home), str(start),
                          *map(str, files)], stderr=subprocess.PIPE, text=True)
        for files in groups
    ]
    errors = [worker.stderr.read() for worker in workers]
    codes = [worker.wait(timeout=180) for worker in workers]
    assert codes == [0] * len(workers), errors
    assert not any("locked" in error for error in errors), errors


def test_two_processes_import_different_files_at_once(tmp_path, concept_file):
    home = tmp_path / "shared-home"  # new: both processes also race to create the schema
    first = [concept_file(f"alpha-{i}", seed=i) for i in range(12)]
    second = [concept_file(f"beta-{i}", seed=100 + i) for i in range(12)]
    run_together(home, [first, second])
    with Registry(Settings.resolve(home)) as registry:
        names = {record.name for record in registry.list()}
        assert names == {f"alpha-{i}" for i in range(12)} | {f"beta-{i}" for i in range(12)}
        assert registry.verify().healthy
        assert len(registry.list_bases()) == 1
        assert len(registry.list_renders()) == 2


def test_two_processes_import_the_same_file_at_once(tmp_path, concept_file):
    home = tmp_path / "shared-home"
    same = [concept_file(f"same-{i}", seed=i) for i in range(6)]
    run_together(home, [same, same])
    with Registry(Settings.resolve(home)) as registry:
        assert sorted(r.name for r in registry.list()) == sorted(f"same-{i}" for i in range(6))
        assert registry.verify().healthy

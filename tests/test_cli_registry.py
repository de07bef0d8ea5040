"""Registry commands through Typer's CliRunner, and the installed `phub` as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from perfusion_hub.concepts import load_concept
from perfusion_hub.registry import Registry
from perfusion_hub.settings import Settings

runner = CliRunner()


def phub(home: Path, *args: str, input: str | None = None):
    return runner.invoke(app, ["--home", str(home), *args], input=input)


def ok(home: Path, *args: str, input: str | None = None):
    result = phub(home, *args, input=input)
    assert result.exit_code == 0, result.output
    return result


def listed(home: Path, *args: str) -> list[dict]:
    return json.loads(ok(home, "list", "--json", *args).stdout)


def test_help_lists_the_registry_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("list", "show", "import", "export", "rm", "rename", "verify", "history",
                    "db"):
        assert f" {command} " in result.stdout


def test_import_list_show(home, concept_file):
    assert listed(home) == []
    assert "No concepts registered" in ok(home, "list").stdout
    result = ok(home, "import", str(concept_file("my-cat", seed=1)),
                str(concept_file("my-dog", seed=2, superclass="dog")))
    assert "Imported 'my-cat'" in result.stdout and "Imported 'my-dog'" in result.stdout
    rows = listed(home)
    assert [row["name"] for row in rows] == ["my-cat", "my-dog"]
    assert rows[0]["token"] == "<my-cat>" and rows[0]["base"] == "synthetic"
    assert [row["name"] for row in listed(home, "--superclass", "dog")] == ["my-dog"]
    assert [row["name"] for row in listed(home, "--base", "synthetic")] == ["my-cat", "my-dog"]
    table = ok(home, "list").stdout
    assert "my-cat" in table and "my-dog" in table
    shown = json.loads(ok(home, "show", "my-cat", "--json").stdout)
    assert shown["name"] == "my-cat" and shown["superclass"] == "cat"
    assert {k: shown[k] for k in rows[0]} == rows[0]  # a listing row is the summary of `show`
    assert "training" in shown and "training" not in rows[0]
    assert shown["content_hash"] == load_concept(concept_file("my-cat", seed=1))[1]
    text = ok(home, "show", "my-dog").stdout
    assert "my-dog" in text and "dog" in text and "seed=2" in text


def test_import_twice_reports_the_existing_concept(home, concept_file):
    path = str(concept_file("my-cat"))
    ok(home, "import", path)
    result = ok(home, "import", path)
    assert "already registered" in result.stdout
    assert len(listed(home)) == 1


def test_import_with_name_and_force(home, concept_file):
    ok(home, "import", str(concept_file("my-cat", seed=1)))
    conflict = phub(home, "import", str(concept_file("my-cat", seed=2)))
    assert conflict.exit_code == 1
    assert "--name" in conflict.stderr and "Traceback" not in conflict.output
    ok(home, "import", str(concept_file("my-cat", seed=2)), "--name", "my-cat-2")
    ok(home, "import", str(concept_file("my-cat", seed=3)), "--force")
    rows = {row["name"]: row for row in listed(home)}
    assert set(rows) == {"my-cat", "my-cat-2"}
    assert rows["my-cat"]["content_hash"] == load_concept(concept_file("my-cat", seed=3))[1]


def test_name_with_several_files_is_a_usage_error(home, concept_file):
    result = phub(home, "import", str(concept_file("a", seed=1)), str(concept_file("b", seed=2)),
                  "--name", "x")
    assert result.exit_code == 2
    assert "--name" in result.output
    assert listed(home) == []


def test_one_bad_file_among_several(home, concept_file, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a concept")
    result = phub(home, "import", str(concept_file("good")), str(bad))
    assert result.exit_code == 1
    assert "bad.safetensors" in result.stderr and "1 of 2 files" in result.stderr
    assert [row["name"] for row in listed(home)] == ["good"]


@pytest.mark.parametrize("bad", ["a/b", "..", "my cat", "x'; DROP TABLE concepts;--",
                                 "ctrl\x07", "n" * 300])
def test_bad_names_exit_1_with_the_rule(home, concept_file, bad):
    result = phub(home, "import", str(concept_file("fine")), "--name", bad)
    assert result.exit_code == 1
    assert "lowercase letters" in result.stderr and "Traceback" not in result.output
    assert listed(home) == []


def test_errors_are_one_line_unless_verbose(home):
    quiet = phub(home, "show", "nothing")
    assert quiet.exit_code == 1
    assert quiet.stderr.startswith("Error: No concept named 'nothing'")
    assert "Traceback" not in quiet.output
    loud = runner.invoke(app, ["--home", str(home), "--verbose", "show", "nothing"])
    assert loud.exit_code == 1 and "Traceback" in loud.stderr


def test_close_matches_are_suggested(home, concept_file):
    ok(home, "import", str(concept_file("my-cat")))
    result = phub(home, "show", "my-cta")
    assert result.exit_code == 1 and "Did you mean 'my-cat'" in result.stderr


def test_usage_errors_exit_2(home):
    assert phub(home, "show").exit_code == 2
    assert phub(home, "list", "--no-such-option").exit_code == 2
    assert phub(home, "history", "--limit", "-3").exit_code == 2


def test_export(home, concept_file, tmp_path):
    source = concept_file("my-cat")
    ok(home, "import", str(source))
    out = tmp_path / "out"
    out.mkdir()
    result = ok(home, "export", "my-cat", str(out))
    assert (out / "my-cat.safetensors").read_bytes() == source.read_bytes()
    assert "Exported" in result.stdout
    again = phub(home, "export", "my-cat", str(out))
    assert again.exit_code == 1 and "--force" in again.stderr
    ok(home, "export", "my-cat", str(out / "my-cat.safetensors"), "--force")


def test_rm_asks_first(home, concept_file):
    ok(home, "import", str(concept_file("my-cat", seed=1)))
    ok(home, "import", str(concept_file("my-dog", seed=2)))
    no_stdin = phub(home, "rm", "my-cat")
    assert no_stdin.exit_code == 1 and "--yes" in no_stdin.stderr
    declined = phub(home, "rm", "my-cat", input="n\n")
    assert declined.exit_code == 1 and "Nothing removed" in declined.stderr
    assert len(listed(home)) == 2
    accepted = ok(home, "rm", "my-cat", input="y\n")
    assert "Removed 'my-cat'" in accepted.stdout
    ok(home, "rm", "my-dog", "--yes")
    assert listed(home) == []
    assert not any(p.is_file() for p in (home / "concepts").rglob("*"))
    assert phub(home, "rm", "my-dog", "--yes").exit_code == 1


def test_rename(home, concept_file, tmp_path):
    ok(home, "import", str(concept_file("my-cat")))
    result = ok(home, "rename", "my-cat", "kitty")
    assert "<kitty>" in result.stdout
    assert [row["name"] for row in listed(home)] == ["kitty"]
    ok(home, "export", "kitty", str(tmp_path / "k.safetensors"))
    assert load_concept(tmp_path / "k.safetensors")[0].name == "kitty"
    assert phub(home, "rename", "kitty", "Bad Name").exit_code == 1


def test_verify(home, concept_file):
    ok(home, "import", str(concept_file("my-cat", seed=1)))
    ok(home, "import", str(concept_file("my-dog", seed=2)))
    assert "2 ok, 0 missing, 0 corrupt" in ok(home, "verify").stdout
    path = Path(json.loads(ok(home, "show", "my-dog", "--json").stdout)["path"])
    path.write_bytes(path.read_bytes()[:-10] + b"\0" * 10)
    result = phub(home, "verify")
    assert result.exit_code == 1
    assert "corrupt" in result.stderr and "synthetic/my-dog" in result.stderr
    report = json.loads(phub(home, "verify", "--json").stdout)
    assert report["corrupt"] == ["synthetic/my-dog"] and report["healthy"] is False


def test_db_current_and_upgrade(tmp_path):
    home = tmp_path / "fresh"
    before = json.loads(ok(home, "db", "current", "--json").stdout)
    assert before["current"] is None and before["up_to_date"] is False
    assert "none (empty)" in ok(home, "db", "current").stdout
    assert "Upgraded the registry from empty" in ok(home, "db", "upgrade").stdout
    after = json.loads(ok(home, "db", "current", "--json").stdout)
    assert after["current"] == after["head"] == Registry.head_revision()
    assert "Already at revision" in ok(home, "db", "upgrade").stdout
    assert "up to date" in ok(home, "db", "current").stdout


def test_history(home):
    with Registry(Settings.resolve(home)) as registry:
        for seed in range(3):
            registry.log_render(f"a <my-cat> #{seed}", [{"name": "my-cat"}], seed, {"steps": 4},
                                home / f"{seed}.png")
    rows = json.loads(ok(home, "history", "--json").stdout)
    assert [row["seed"] for row in rows] == [2, 1, 0]
    assert len(json.loads(ok(home, "history", "--json", "--limit", "1").stdout)) == 1
    assert len(json.loads(ok(home, "history", "--json", "--limit", "0").stdout)) == 3
    assert "my-cat" in ok(home, "history").stdout


def test_history_empty(home):
    assert "No renders yet" in ok(home, "history").stdout


def test_home_from_the_environment(home, concept_file):
    ok(home, "import", str(concept_file("my-cat")))
    result = runner.invoke(app, ["list", "--json"], env={"PHUB_HOME": str(home)})
    assert [row["name"] for row in json.loads(result.stdout)] == ["my-cat"]


# -- real processes ---------------------------------------------------------------------------


def installed_phub() -> list[str]:
    """The console script installed next to this interpreter."""
    found = shutil.which("phub", path=str(Path(sys.executable).parent)) or shutil.which("phub")
    assert found, "the `phub` console script is not installed (pip install -e .)"
    return [found]


def test_installed_entry_point(tmp_path, concept_file):
    home = tmp_path / "home"
    env = {**os.environ, "PHUB_HOME": str(home)}
    command = installed_phub()
    imported = subprocess.run([*command, "import", str(concept_file("my-cat"))], env=env,
                              capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    listing = subprocess.run([*command, "list", "--json"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert listing.returncode == 0
    assert [row["name"] for row in json.loads(listing.stdout)] == ["my-cat"]
    missing = subprocess.run([*command, "show", "nope"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    usage = subprocess.run([*command, "rm"], env=env, capture_output=True, text=True,
                           timeout=120)
    assert usage.returncode == 2


def test_registry_commands_do_not_import_torch(home, concept_file):
    ok(home, "import", str(concept_file("my-cat")))
    script = textwrap.dedent(f"""
        import sys
        from cli.main import app
        for args in (["list", "--json"], ["show", "my-cat"], ["history"], ["verify"],
                     ["db", "current"]):
            try:
                app(["--home", {str(home)!r}, *args])
            except SystemExit as done:
                assert not done.code, (args, done.code)
        heavy = sorted({{"torch", "diffusers", "transformers"}} & set(sys.modules))
        assert not heavy, heavy
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr

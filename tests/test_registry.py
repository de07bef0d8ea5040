"""The registry API: import/export round trips, identity, names, bases, renders, verify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from perfusion_hub.concepts import load_concept, save_concept
from perfusion_hub.concepts.synthetic import synthetic_base, synthetic_concept
from perfusion_hub.errors import (
    ConceptFileError,
    ConflictError,
    InvalidNameError,
    NotFoundError,
)
from perfusion_hub.registry import BaseRecord, ConceptRecord, Registry, RenderRecord
from perfusion_hub.registry.registry import fingerprint_key, slugify


def stored_files(registry: Registry) -> list[Path]:
    """Every file in the concept store (temporary files included)."""
    return sorted(p for p in registry.store.root.rglob("*") if p.is_file())


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_import_export_round_trip_is_bit_exact(registry, concept_file, tmp_path, dtype):
    source = concept_file("my-cat", seed=3, dtype=dtype)
    record = registry.import_file(source)
    assert record.name == "my-cat" and record.token == "<my-cat>"
    assert record.path.read_bytes() == source.read_bytes()
    assert record.path == registry.settings.concepts_dir / record.content_hash[:2] / (
        record.content_hash + ".safetensors")
    assert record.size == source.stat().st_size
    exported = registry.export("my-cat", tmp_path / "out.safetensors")
    assert exported.read_bytes() == source.read_bytes()
    _, content_hash = load_concept(exported)
    assert content_hash == record.content_hash


def test_record_fields_follow_the_file(registry, concept_file):
    record = registry.import_file(concept_file("my-dog", seed=1, superclass="dog"))
    concept, content_hash = load_concept(concept_file("my-dog", seed=1, superclass="dog"))
    assert isinstance(record, ConceptRecord)
    assert (record.superclass, record.lock, record.beta, record.tau) == (
        "dog", concept.lock, concept.beta, concept.tau)
    assert record.content_hash == content_hash
    assert record.training == concept.training and record.metrics == {} and record.tags == []
    assert record.base_name == "synthetic"
    assert record.created.tzinfo is not None
    json.dumps(record.to_json())


def test_load_returns_the_stored_tensors(registry, concept_file):
    path = concept_file("my-cat", seed=5)
    registry.import_file(path)
    original, _ = load_concept(path)
    loaded = registry.load("my-cat")
    assert loaded.name == "my-cat"
    np.testing.assert_array_equal(loaded.word_embedding, original.word_embedding)
    for layer, vector in original.value_targets.items():
        np.testing.assert_array_equal(loaded.value_targets[layer], vector)


def test_importing_the_same_file_twice_keeps_one_row(registry, concept_file):
    path = concept_file("my-cat")
    first = registry.import_file(path)
    second = registry.import_file(path)
    assert second.id == first.id and second.updated == first.updated
    assert len(registry.list()) == 1
    assert len(stored_files(registry)) == 1


def test_same_content_under_another_name_returns_the_existing_record(registry, concept_file):
    first = registry.import_file(concept_file("my-cat"))
    again = registry.import_file(concept_file("my-cat"), name="other-name")
    assert again.id == first.id and again.name == "my-cat"
    assert [r.name for r in registry.list()] == ["my-cat"]


def test_a_different_file_under_a_taken_name_is_refused(registry, concept_file):
    registry.import_file(concept_file("my-cat", seed=1))
    with pytest.raises(ConflictError, match=r"--name.*--force.*phub rm"):
        registry.import_file(concept_file("my-cat", seed=2))
    assert len(registry.list()) == 1 and len(stored_files(registry)) == 1


def test_name_option_registers_a_second_concept(registry, concept_file):
    registry.import_file(concept_file("my-cat", seed=1))
    record = registry.import_file(concept_file("my-cat", seed=2), name="my-cat-2")
    assert record.name == "my-cat-2" and record.token == "<my-cat-2>"
    assert registry.load("my-cat-2").name == "my-cat-2"
    assert [r.name for r in registry.list()] == ["my-cat", "my-cat-2"]


def test_replace_swaps_the_file_and_deletes_the_old_one(registry, concept_file):
    old = registry.import_file(concept_file("my-cat", seed=1))
    registry.set_metrics("my-cat", {"clip_i": 0.8})
    new = registry.import_file(concept_file("my-cat", seed=2), replace=True)
    assert new.id == old.id and new.content_hash != old.content_hash
    assert new.metrics == {}, "metrics of the old tensors do not describe the new ones"
    assert not old.path.exists() and new.path.exists()
    assert stored_files(registry) == [new.path]


def test_add_stores_an_in_memory_concept(registry):
    concept = synthetic_concept("trained", seed=9)
    record = registry.add(concept)
    loaded, content_hash = load_concept(record.path)
    assert content_hash == record.content_hash
    np.testing.assert_array_equal(loaded.target_input, concept.target_input.astype(np.float16))
    record32 = registry.add(synthetic_concept("trained", seed=9), replace=True, dtype="float32")
    assert record32.content_hash != record.content_hash
    assert registry.load("trained").target_input.dtype == np.float32


def test_rename_changes_name_and_token_not_identity(registry, concept_file, tmp_path):
    source = concept_file("my-cat")
    old = registry.import_file(source)
    renamed = registry.rename("my-cat", "kitty")
    assert (renamed.id, renamed.content_hash, renamed.path) == (old.id, old.content_hash, old.path)
    assert renamed.token == "<kitty>"
    assert registry.load("kitty").name == "kitty"
    exported = registry.export("kitty", tmp_path)
    assert exported == tmp_path / "kitty.safetensors"
    concept, content_hash = load_concept(exported)
    assert concept.name == "kitty" and concept.token == "<kitty>"
    assert content_hash == old.content_hash
    with pytest.raises(NotFoundError):
        registry.get("my-cat")


def test_rename_refuses_a_taken_or_invalid_name(registry, concept_file):
    registry.import_file(concept_file("a-cat", seed=1))
    registry.import_file(concept_file("b-cat", seed=2))
    with pytest.raises(ConflictError, match="already exists"):
        registry.rename("a-cat", "b-cat")
    with pytest.raises(InvalidNameError, match="lowercase letters"):
        registry.rename("a-cat", "A Cat")


def test_export_refuses_to_overwrite_unless_asked(registry, concept_file, tmp_path):
    registry.import_file(concept_file("my-cat"))
    target = tmp_path / "taken.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(ConflictError, match="--force"):
        registry.export("my-cat", target)
    assert target.read_bytes() == b"keep me"
    registry.export("my-cat", target, overwrite=True)
    assert load_concept(target)[0].name == "my-cat"


def test_remove_deletes_row_and_file(registry, concept_file):
    record = registry.import_file(concept_file("my-cat"))
    registry.import_file(concept_file("my-dog", seed=4))
    removed = registry.remove("my-cat")
    assert removed.id == record.id
    assert not record.path.exists()
    assert [r.name for r in registry.list()] == ["my-dog"]
    with pytest.raises(NotFoundError):
        registry.remove("my-cat")


def test_a_file_still_referenced_is_never_discarded(registry, concept_file):
    record = registry.import_file(concept_file("my-cat"))
    registry._discard_unreferenced(record.content_hash)
    assert record.path.exists() and registry.verify().healthy


def test_get_suggests_close_names(registry, concept_file):
    registry.import_file(concept_file("my-cat"))
    with pytest.raises(NotFoundError, match=r"'my-cta'.*Did you mean 'my-cat'.*phub list"):
        registry.get("my-cta")
    with pytest.raises(NotFoundError) as caught:
        registry.get("zebra")
    assert "Did you mean" not in str(caught.value)


def test_same_name_on_two_bases_needs_base(registry, concept_file):
    other = synthetic_base(weights_hash="1" * 64, architecture="other-arch")
    registry.import_file(concept_file("my-cat", seed=1))
    registry.import_file(concept_file("my-cat", seed=2, base=other))
    with pytest.raises(ConflictError, match="--base"):
        registry.get("my-cat")
    assert registry.get("my-cat", base="other-arch").base_name == "other-arch"
    assert [r.base_name for r in registry.list()] == ["other-arch", "synthetic"]
    assert [r.name for r in registry.list(base="synthetic")] == ["my-cat"]
    with pytest.raises(NotFoundError, match="phub base add"):
        registry.list(base="nope")


def test_list_filters_by_superclass(registry, concept_file):
    registry.import_file(concept_file("tom", seed=1, superclass="cat"))
    registry.import_file(concept_file("rex", seed=2, superclass="dog"))
    assert [r.name for r in registry.list()] == ["rex", "tom"]
    assert [r.name for r in registry.list(superclass="dog")] == ["rex"]
    assert registry.list(superclass="teapot") == []


def test_same_tensors_for_another_base_are_refused(registry):
    base_a = synthetic_base(weights_hash="a" * 64)
    base_b = synthetic_base(weights_hash="b" * 64)
    registry.add(synthetic_concept("twin", base=base_a, seed=1))
    with pytest.raises(ConflictError, match="one base"):
        registry.add(synthetic_concept("twin", base=base_b, seed=1))


def test_set_metrics_merges(registry, concept_file):
    registry.import_file(concept_file("my-cat"))
    registry.set_metrics("my-cat", {"clip_i": 0.7})
    record = registry.set_metrics("my-cat", {"clip_t": 0.3})
    assert record.metrics == {"clip_i": 0.7, "clip_t": 0.3}
    assert registry.get("my-cat").metrics == record.metrics


def test_verify_reports_missing_and_corrupt_files(registry, concept_file):
    good = registry.import_file(concept_file("good", seed=1))
    lost = registry.import_file(concept_file("lost", seed=2))
    bad = registry.import_file(concept_file("bad", seed=3))
    assert registry.verify().healthy
    lost.path.unlink()
    data = bytearray(bad.path.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the last tensor
    bad.path.write_bytes(bytes(data))
    report = registry.verify()
    assert report.ok == [f"synthetic/{good.name}"]
    assert report.missing == ["synthetic/lost"] and report.corrupt == ["synthetic/bad"]
    assert "differs" in report.reasons["synthetic/bad"] and not report.healthy
    with pytest.raises(ConceptFileError, match="missing.*phub verify"):
        registry.load("lost")
    with pytest.raises(ConceptFileError, match="corrupt.*phub verify"):
        registry.load("bad")


def test_verify_reports_unreadable_files(registry, concept_file):
    record = registry.import_file(concept_file("my-cat"))
    record.path.write_bytes(b"garbage")
    report = registry.verify()
    assert report.corrupt == ["synthetic/my-cat"]
    assert "safetensors" in report.reasons["synthetic/my-cat"]


def test_reimporting_heals_a_lost_stored_file(registry, concept_file):
    path = concept_file("my-cat")
    record = registry.import_file(path)
    record.path.unlink()
    registry.import_file(path)
    assert registry.verify().healthy


# -- names -----------------------------------------------------------------------------------

BAD_NAMES = ["a/b", "..", "../etc", "my cat", "cat\n", "cat\x00", "tab\there",
             "x'; DROP TABLE concepts; --", 'quote"d', "A" * 300, "Upper", "", "-lead"]


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_are_refused_saying_what_is_allowed(registry, concept_file, bad):
    with pytest.raises(InvalidNameError, match="lowercase letters, digits"):
        registry.import_file(concept_file("fine"), name=bad)
    registry.import_file(concept_file("fine"))
    with pytest.raises(InvalidNameError, match="lowercase letters, digits"):
        registry.rename("fine", bad)
    assert [r.name for r in registry.list()] == ["fine"]


def test_sql_in_a_lookup_is_just_an_unknown_name(registry, concept_file):
    registry.import_file(concept_file("fine"))
    with pytest.raises(NotFoundError):
        registry.get("x' OR '1'='1")
    assert len(registry.list()) == 1


# -- crash safety -----------------------------------------------------------------------------


def test_interrupt_between_file_write_and_commit_leaves_nothing(registry, concept_file,
                                                                monkeypatch):
    registry.import_file(concept_file("before", seed=1))
    files_before = stored_files(registry)
    original_put = registry.store.put

    def put_then_interrupt(content_hash, data):
        original_put(content_hash, data)
        assert registry.store.has(content_hash)
        raise KeyboardInterrupt

    monkeypatch.setattr(registry.store, "put", put_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        registry.import_file(concept_file("victim", seed=2))
    assert [r.name for r in registry.list()] == ["before"]
    assert stored_files(registry) == files_before
    assert registry.verify().healthy


def test_interrupt_during_the_file_write_leaves_nothing(registry, concept_file, monkeypatch):
    import perfusion_hub.files

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(perfusion_hub.files.os, "fsync", interrupted_fsync)
    with pytest.raises(KeyboardInterrupt):
        registry.import_file(concept_file("victim"))
    monkeypatch.undo()
    assert registry.list() == []
    assert stored_files(registry) == []


def test_failed_commit_removes_the_new_file(registry, concept_file, monkeypatch):
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    def refuse(session):
        raise RuntimeError("disk full")

    event.listen(Session, "before_commit", refuse)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            registry.import_file(concept_file("victim"))
    finally:
        event.remove(Session, "before_commit", refuse)
    assert registry.list() == []
    assert stored_files(registry) == []


def test_interrupted_replace_keeps_the_old_concept(registry, concept_file, monkeypatch):
    old = registry.import_file(concept_file("my-cat", seed=1))
    original_put = registry.store.put

    def put_then_interrupt(content_hash, data):
        original_put(content_hash, data)
        raise KeyboardInterrupt

    monkeypatch.setattr(registry.store, "put", put_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        registry.import_file(concept_file("my-cat", seed=2), replace=True)
    assert registry.get("my-cat").content_hash == old.content_hash
    assert stored_files(registry) == [old.path]


# -- bases ------------------------------------------------------------------------------------


def test_import_registers_an_unknown_base(registry, concept_file):
    registry.import_file(concept_file("my-cat"))
    (base,) = registry.list_bases()
    assert isinstance(base, BaseRecord)
    assert base.name == "synthetic" and base.covariance_hash is None
    assert base.fingerprint == synthetic_base()
    assert registry.find_base(synthetic_base()) == base
    json.dumps(base.to_json())


def test_automatic_base_names(registry):
    hub_id = synthetic_base(weights_hash="1" * 64)
    hub_id = type(hub_id)(hub_id.architecture, hub_id.text_width, hub_id.layers,
                          hub_id.weights_hash, source="runwayml/Stable-Diffusion v1.5")
    registry.add(synthetic_concept("one", base=hub_id, seed=1))
    clash = synthetic_base(weights_hash="2" * 64, architecture="Runwayml/stable diffusion-v1.5")
    clash = type(clash)(clash.architecture, clash.text_width, clash.layers, clash.weights_hash,
                        source="")
    registry.add(synthetic_concept("two", base=clash, seed=2))
    local = synthetic_base(weights_hash="3" * 64)
    local = type(local)(local.architecture, local.text_width, local.layers, local.weights_hash,
                        source="/models/My Model.safetensors")
    registry.add(synthetic_concept("three", base=local, seed=3))
    names = {record.name: record.base_name for record in registry.list()}
    assert names == {"one": "runwayml-stable-diffusion-v1-5",
                     "two": "runwayml-stable-diffusion-v1-5-22222222",
                     "three": "my-model"}


def test_add_base_is_idempotent_and_names_win(registry, concept_file):
    fingerprint = synthetic_base()
    registry.import_file(concept_file("my-cat"))
    first = registry.add_base("sd-tiny", "tiny/source", fingerprint)
    again = registry.add_base("sd-tiny", "tiny/source", fingerprint)
    assert first.id == again.id and len(registry.list_bases()) == 1
    assert registry.get("my-cat").base_name == "sd-tiny"
    with pytest.raises(ConflictError, match="another --name"):
        registry.add_base("sd-tiny", "x", synthetic_base(weights_hash="9" * 64))
    with pytest.raises(InvalidNameError):
        registry.add_base("SD Tiny", "x", fingerprint)


def test_base_statistics(registry, settings):
    registry.add_base("sd-tiny", "tiny", synthetic_base())
    inside = settings.bases_dir / "sd-tiny" / "covariance.safetensors"
    record = registry.set_base_statistics("sd-tiny", "f" * 64, inside)
    assert record.covariance_hash == "f" * 64 and record.covariance_path == inside
    with registry.engine.connect() as connection:  # stored relative to the home
        stored = connection.execute(text("SELECT covariance_path FROM bases")).scalar()
    assert stored == "bases/sd-tiny/covariance.safetensors"
    assert registry.get_base("sd-tiny").covariance_path == inside
    added = registry.add_base("other", "o", synthetic_base(weights_hash="4" * 64),
                              covariance_hash="e" * 64, covariance_path="/elsewhere/c.st")
    assert added.covariance_path == Path("/elsewhere/c.st")


def test_get_base_names_the_fix(registry):
    with pytest.raises(NotFoundError, match=r"phub base add SOURCE --name sd15"):
        registry.get_base("sd15")
    with pytest.raises(NotFoundError):
        registry.set_base_statistics("sd15", "0" * 64, "x")


def test_fingerprint_key_ignores_source():
    base = synthetic_base()
    renamed = type(base)(base.architecture, base.text_width, base.layers, base.weights_hash,
                         source="elsewhere")
    assert fingerprint_key(base) == fingerprint_key(renamed)
    assert fingerprint_key(base) != fingerprint_key(synthetic_base(weights_hash="1" * 64))
    assert slugify("Org/Model v1.5 (EMA)") == "org-model-v1-5-ema"


# -- renders ----------------------------------------------------------------------------------


def test_render_log_newest_first(registry, tmp_path):
    for index in range(3):
        registry.log_render(f"a <my-cat> number {index}", [{"name": "my-cat", "beta": 0.7}],
                            seed=index, parameters={"steps": 20}, output_path=tmp_path / "x.png")
    registry.log_render("no seed", [], seed=None, parameters={}, output_path=None)
    renders = registry.list_renders()
    assert [r.prompt for r in renders] == ["no seed", "a <my-cat> number 2",
                                           "a <my-cat> number 1", "a <my-cat> number 0"]
    assert isinstance(renders[1], RenderRecord)
    assert renders[1].concepts == [{"name": "my-cat", "beta": 0.7}]
    assert renders[1].seed == 2 and renders[1].output_path == tmp_path / "x.png"
    assert renders[0].output_path is None and renders[0].seed is None
    assert len(registry.list_renders(limit=2)) == 2
    assert len(registry.list_renders(limit=None)) == 4
    json.dumps([r.to_json() for r in renders])


# -- database ---------------------------------------------------------------------------------


def test_sqlite_runs_with_wal_foreign_keys_and_busy_timeout(registry):
    with registry.engine.connect() as connection:
        pragma = connection.exec_driver_sql
        assert pragma("PRAGMA journal_mode").scalar() == "wal"
        assert pragma("PRAGMA foreign_keys").scalar() == 1
        assert pragma("PRAGMA busy_timeout").scalar() >= 5000


def test_foreign_keys_are_enforced(registry, concept_file):
    registry.import_file(concept_file("my-cat"))
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), registry.engine.begin() as connection:
        connection.execute(text("DELETE FROM bases"))


def test_registry_creates_its_home(tmp_path):
    from perfusion_hub.settings import Settings

    home = tmp_path / "deep" / "new-home"
    with Registry(Settings.resolve(home)) as registry:
        assert registry.revision() == Registry.head_revision()
    assert (home / "registry.db").is_file()


def test_a_concept_file_that_is_written_elsewhere_later_is_unaffected(registry, concept_file):
    path = concept_file("my-cat")
    record = registry.import_file(path)
    save_concept(synthetic_concept("my-cat", seed=42), path)  # the user overwrites the source
    assert registry.verify().healthy
    assert registry.get("my-cat").content_hash == record.content_hash


@pytest.mark.parametrize("url", ["postgresql+nosuchdriver://u@localhost/db",
                                 "sqlite:////nonexistent-dir/sub/registry.db", "not a url"])
def test_an_unusable_database_url_is_a_clear_error(tmp_path, monkeypatch, url):
    from perfusion_hub.errors import RegistryError
    from perfusion_hub.settings import DATABASE_URL_ENV, Settings

    monkeypatch.setenv(DATABASE_URL_ENV, url)
    with pytest.raises(RegistryError, match="PHUB_DATABASE_URL"):
        Registry(Settings.resolve(tmp_path / "home"))

"""`Registry`: concepts, bases and renders of one home, persisted in SQL and a file store.

Identity is the content hash of a concept's tensors; names are for people and unique per
base. A concept file enters the store inside the database transaction that records it: the
file is written atomically before the commit and deleted again if the commit does not happen,
so an interrupted import leaves neither an orphan row nor an orphan file.
"""

from __future__ import annotations

import builtins
import difflib
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from perfusion_hub.errors import (
    ConceptFileError,
    ConflictError,
    NotFoundError,
    RegistryError,
)
from perfusion_hub.names import token_for, validate_name
from perfusion_hub.registry import database
from perfusion_hub.registry.models import BaseRow, ConceptRow, RenderRow, utcnow
from perfusion_hub.registry.records import (
    BaseRecord,
    ConceptRecord,
    ConceptSummary,
    RenderRecord,
    VerifyReport,
)
from perfusion_hub.registry.store import ConceptStore
from perfusion_hub.settings import Settings

if TYPE_CHECKING:
    from perfusion_hub.concepts import BaseFingerprint, Concept

T = TypeVar("T")
_SUMMARY_COLUMNS = (
    ConceptRow.id, ConceptRow.name, ConceptRow.token, ConceptRow.superclass, ConceptRow.lock,
    ConceptRow.content_hash, ConceptRow.file_path, ConceptRow.size, ConceptRow.beta,
    ConceptRow.tau, ConceptRow.created,
)
_WRITE_ATTEMPTS = 3


def fingerprint_key(fingerprint: BaseFingerprint) -> str:
    """SHA-256 of the parts of a fingerprint that define a base (its `source` excluded)."""
    data = fingerprint.to_json()
    data.pop("source", None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def slugify(text: str) -> str:
    """Best-effort slug of free text (a base's source): `org/Model v1.5` → `org-model-v1-5`."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    return slug[:64].rstrip("-_")


class Registry:
    """The registry of one home directory (see `Settings`). Only it opens database sessions."""

    def __init__(self, settings: Settings, *, auto_upgrade: bool = True) -> None:
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        try:
            self.engine = database.open_engine(settings.database_url)
            revision = self.revision()
        except (ModuleNotFoundError, OperationalError, ArgumentError) as error:
            raise RegistryError(
                f"Cannot open the registry database {settings.database_url} ({error}). Check "
                "$PHUB_DATABASE_URL and --home, and that the database's driver is installed."
            ) from error
        self._writer = database.writer(self.engine)
        self.store = ConceptStore(settings.concepts_dir)
        if auto_upgrade and revision != database.HEAD_REVISION:
            self.upgrade()

    # -- schema ------------------------------------------------------------------------------

    def revision(self) -> str | None:
        """Schema revision of the database (None when empty)."""
        return database.current_revision(self.engine)

    @staticmethod
    def head_revision() -> str:
        """Schema revision this version of perfusion-hub writes."""
        return database.HEAD_REVISION

    def upgrade(self) -> tuple[str | None, str | None, Path | None]:
        """Upgrade the schema to head; returns (before, after, backup path or None)."""
        from alembic.util import CommandError

        try:
            return database.upgrade(self.engine, self.settings.database_url,
                                    self.settings.backups_dir,
                                    self.settings.home / ".registry.lock")
        except CommandError as error:
            raise RegistryError(
                f"Cannot upgrade the registry database {self.settings.database_url} "
                f"(schema revision {self.revision()!r}): {error}. If a newer perfusion-hub wrote "
                "it, upgrade perfusion-hub; otherwise restore a copy from "
                f"{self.settings.backups_dir}."
            ) from error

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions ------------------------------------------------------------------------------

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        with Session(self.engine) as session:
            yield session

    def _write(self, work: Callable[[Session], T]) -> T:
        """Run `work` in one write transaction (SQLite: `BEGIN IMMEDIATE`), committing at the
        end; a unique-constraint race with another process is retried from the start."""
        attempt = 1
        while True:
            try:
                with Session(self._writer, expire_on_commit=False) as session, session.begin():
                    return work(session)
            except IntegrityError:
                if attempt == _WRITE_ATTEMPTS:
                    raise
                attempt += 1

    # -- concepts: queries -------------------------------------------------------------------

    def list(self, base: str | None = None,
             superclass: str | None = None) -> list[ConceptSummary]:
        """Registered concepts by name, optionally only those of one base or superclass.

        Selects the summary's plain columns on a Core connection rather than ORM objects, and
        leaves the JSON columns (training configuration, metrics) to `get`: `phub list` over
        10,000 rows stays fast.
        """
        statement = (select(*_SUMMARY_COLUMNS, BaseRow.name)
                     .join(BaseRow, ConceptRow.base_id == BaseRow.id))
        if base is not None:
            statement = statement.where(BaseRow.name == base)
        if superclass is not None:
            statement = statement.where(ConceptRow.superclass == superclass)
        with self.engine.connect() as connection:  # Core rows: no ORM loading per row
            rows = connection.execute(statement.order_by(ConceptRow.name, BaseRow.name)).all()
        if base is not None and not rows:
            with self._reading() as session:
                self._base_row(session, base)  # an unknown base is an error, not an empty list
        root = self.store.root
        return [
            ConceptSummary(id, name, token, superclass_, lock, base_name, content_hash,
                           root / file_path, size, beta, tau, created)
            for (id, name, token, superclass_, lock, content_hash, file_path, size, beta, tau,
                 created, base_name) in rows
        ]

    def get(self, name: str, base: str | None = None) -> ConceptRecord:
        """The concept called `name` (of `base`, needed when several bases use the name)."""
        with self._reading() as session:
            row, base_name = self._find(session, name, base)
            return self._concept_record(row, base_name)

    def load(self, record_or_name: ConceptSummary | str) -> Concept:
        """The stored concept, verified against its content hash, under its registered name."""
        record = (record_or_name if isinstance(record_or_name, ConceptSummary)
                  else self.get(record_or_name))
        concept = self._load_stored(record)
        return concept if concept.name == record.name else concept.renamed(record.name)

    def _load_stored(self, record: ConceptSummary) -> Concept:
        """The concept exactly as stored (its name is the one it was imported with)."""
        from perfusion_hub.concepts import load_concept

        if not record.path.is_file():
            raise ConceptFileError(
                f"The stored file of concept {record.name!r} is missing ({record.path}); "
                "run `phub verify`, then re-import it or `phub rm` it."
            )
        concept, content_hash = load_concept(record.path)
        if content_hash != record.content_hash:
            raise ConceptFileError(
                f"The stored file of concept {record.name!r} is corrupt ({record.path}: content "
                "hash differs from the registry); run `phub verify`, then re-import it."
            )
        return concept

    def verify(self) -> VerifyReport:
        """Re-hash every stored concept file: which are intact, missing or corrupt."""
        from perfusion_hub.concepts import load_concept

        report = VerifyReport()
        for record in self.list():
            label = f"{record.base_name}/{record.name}"
            if not record.path.is_file():
                report.missing.append(label)
                report.reasons[label] = f"{record.path} does not exist"
                continue
            try:
                _, content_hash = load_concept(record.path)
            except ConceptFileError as error:
                report.corrupt.append(label)
                report.reasons[label] = str(error)
                continue
            if content_hash != record.content_hash:
                report.corrupt.append(label)
                report.reasons[label] = (f"{record.path}: content hash {content_hash[:12]} "
                                         f"differs from the registered {record.content_hash[:12]}")
            else:
                report.ok.append(label)
        return report

    # -- concepts: changes -------------------------------------------------------------------

    def import_file(self, path: str | Path, name: str | None = None, *,
                    replace: bool = False) -> ConceptRecord:
        """Validate a concept file and copy it into the store; the file's own name unless
        `name` is given. The same content imported again returns the existing record."""
        from perfusion_hub.concepts import load_concept

        path = Path(path)
        if name is not None:
            validate_name(name)
        concept, content_hash = load_concept(path)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ConceptFileError(f"{path}: cannot be read ({error}).") from error
        return self._register(concept, content_hash, data, name or concept.name, replace)

    def add(self, concept: Concept, *, replace: bool = False,
            dtype: str = "float16") -> ConceptRecord:
        """Store an in-memory concept (e.g. one just trained) under its name."""
        from perfusion_hub.concepts import concept_to_bytes

        data, content_hash = concept_to_bytes(concept, dtype)
        return self._register(concept, content_hash, data, concept.name, replace)

    def export(self, name: str, dest: str | Path, base: str | None = None, *,
               overwrite: bool = False) -> Path:
        """Write the concept's file to `dest` (a file, or a folder to put `<name>.safetensors`
        in), carrying its registered name; tensors are byte-identical to the stored ones."""
        from perfusion_hub.concepts import concept_to_bytes
        from perfusion_hub.files import atomic_write_bytes

        record = self.get(name, base)
        dest = Path(dest)
        if dest.is_dir():
            dest = dest / f"{record.name}.safetensors"
        if dest.exists() and not overwrite:
            raise ConflictError(f"{dest} already exists: choose another destination or overwrite "
                                "it with --force.")
        stored = self._load_stored(record)
        if stored.name == record.name:
            data = record.path.read_bytes()
        else:
            renamed = stored.renamed(record.name)
            data, _ = concept_to_bytes(renamed, str(renamed.word_embedding.dtype))
        atomic_write_bytes(dest, data)
        return dest

    def remove(self, name: str, base: str | None = None) -> ConceptRecord:
        """Delete a concept's row, and its stored file unless another row still uses it."""

        def work(session: Session) -> ConceptRecord:
            row, base_name = self._find(session, name, base)
            record = self._concept_record(row, base_name)
            session.delete(row)
            return record

        record = self._write(work)
        self._discard_unreferenced(record.content_hash)
        return record

    def rename(self, old: str, new: str, base: str | None = None) -> ConceptRecord:
        """Give a concept another name (and token); its file and identity are unchanged."""
        validate_name(new)

        def work(session: Session) -> ConceptRecord:
            row, base_name = self._find(session, old, base)
            if row.name != new:
                taken = session.scalar(select(ConceptRow.id).where(
                    ConceptRow.base_id == row.base_id, ConceptRow.name == new))
                if taken is not None:
                    raise ConflictError(
                        f"A concept named {new!r} already exists for base {base_name!r}: choose "
                        f"another name, or `phub rm {new}` first."
                    )
                row.name, row.token, row.updated = new, token_for(new), utcnow()
            session.flush()
            return self._concept_record(row, base_name)

        return self._write(work)

    def set_metrics(self, name: str, metrics: dict[str, Any],
                    base: str | None = None) -> ConceptRecord:
        """Merge `metrics` (e.g. evaluation scores) into a concept's recorded metrics."""

        def work(session: Session) -> ConceptRecord:
            row, base_name = self._find(session, name, base)
            row.metrics = {**(row.metrics or {}), **metrics}
            row.updated = utcnow()
            session.flush()
            return self._concept_record(row, base_name)

        return self._write(work)

    def _register(self, concept: Concept, content_hash: str, data: bytes, name: str,
                  replace: bool) -> ConceptRecord:
        """Record `concept` as `name` and store `data` under `content_hash`, atomically."""
        validate_name(name)
        replaced: list[str] = []
        wrote_new = False

        def work(session: Session) -> ConceptRecord:
            nonlocal wrote_new
            base_row = self._ensure_base(session, concept.base)
            same = session.scalars(
                select(ConceptRow).where(ConceptRow.content_hash == content_hash)).first()
            if same is not None:
                if same.base_id != base_row.id:
                    other = session.get(BaseRow, same.base_id)
                    raise ConflictError(
                        f"The same tensors are already registered as {same.name!r} for base "
                        f"{other.name if other else same.base_id!r}; a concept belongs to one base."
                    )
                if not self.store.has(content_hash):  # heal a file lost since
                    self.store.put(content_hash, data)
                return self._concept_record(same, base_row.name)
            row = session.scalars(select(ConceptRow).where(
                ConceptRow.base_id == base_row.id, ConceptRow.name == name)).first()
            if row is not None and not replace:
                raise ConflictError(
                    f"A different concept named {name!r} already exists for base "
                    f"{base_row.name!r}: import under another name with --name NEW, replace it "
                    f"with --force, or `phub rm {name}` first."
                )
            now = utcnow()
            if row is None:
                row = ConceptRow(name=name, base_id=base_row.id, created=now, metrics={}, tags=[])
                session.add(row)
            else:
                replaced.append(row.content_hash)
                row.metrics = {}
            row.token = token_for(name)
            row.superclass = concept.superclass
            row.lock = concept.lock
            row.content_hash = content_hash
            row.file_path = self.store.relative(content_hash)
            row.size = len(data)
            row.beta = concept.beta
            row.tau = concept.tau
            row.training = dict(concept.training)
            row.updated = now
            session.flush()
            wrote_new = wrote_new or not self.store.has(content_hash)
            self.store.put(content_hash, data)
            return self._concept_record(row, base_row.name)

        try:
            record = self._write(work)
        except BaseException:
            if wrote_new:  # best effort: an orphan file is harmless, a lost error is not
                with suppress(SQLAlchemyError, OSError):
                    self._discard_unreferenced(content_hash)
            raise
        for old_hash in replaced:
            self._discard_unreferenced(old_hash)
        return record

    def _discard_unreferenced(self, content_hash: str) -> None:
        """Delete the stored file of `content_hash` if no row references it (checked under the
        write lock, so a concurrent import of the same content keeps its file)."""

        def work(session: Session) -> None:
            used = session.scalar(select(func.count()).select_from(ConceptRow).where(
                ConceptRow.content_hash == content_hash))
            if not used:
                self.store.discard(content_hash)

        self._write(work)

    def _find(self, session: Session, name: str, base: str | None) -> tuple[ConceptRow, str]:
        statement = (select(ConceptRow, BaseRow.name)
                     .join(BaseRow, ConceptRow.base_id == BaseRow.id)
                     .where(ConceptRow.name == name))
        if base is not None:
            statement = statement.where(BaseRow.name == base)
        found = session.execute(statement).all()
        if len(found) == 1:
            return found[0][0], found[0][1]
        if found:
            bases = ", ".join(sorted(base_name for _, base_name in found))
            raise ConflictError(
                f"Concept {name!r} exists for several bases ({bases}): choose one with --base."
            )
        if base is not None:
            self._base_row(session, base)
        known = session.scalars(select(ConceptRow.name).distinct()).all()
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(repr(n) for n in close)}?" if close else ""
        where = f" for base {base!r}" if base is not None else ""
        raise NotFoundError(f"No concept named {name!r}{where}.{hint} See `phub list`.")

    # -- bases -------------------------------------------------------------------------------

    def add_base(self, name: str, source: str, fingerprint: BaseFingerprint,
                 covariance_hash: str | None = None,
                 covariance_path: str | Path | None = None) -> BaseRecord:
        """Register a base under `name`. Idempotent for the same fingerprint: a base recorded
        earlier (e.g. automatically, with an imported concept) takes this name and source."""
        validate_name(name, "base")
        key = fingerprint_key(fingerprint)

        def work(session: Session) -> BaseRecord:
            by_name = session.scalars(select(BaseRow).where(BaseRow.name == name)).first()
            if by_name is not None and by_name.fingerprint_key != key:
                raise ConflictError(
                    f"Base name {name!r} is taken by another base "
                    f"({self._fingerprint(by_name).label}): choose another --name."
                )
            row = by_name or session.scalars(
                select(BaseRow).where(BaseRow.fingerprint_key == key)).first()
            if row is None:
                row = self._new_base_row(fingerprint, key, name)
                session.add(row)
            row.name = name
            row.source = source
            row.fingerprint = {**fingerprint.to_json(), "source": source}
            if covariance_hash is not None:
                row.covariance_hash = covariance_hash
                row.covariance_path = self._stored_path(covariance_path)
            session.flush()
            return self._base_record(row)

        return self._write(work)

    def get_base(self, name: str) -> BaseRecord:
        """The base called `name`."""
        with self._reading() as session:
            return self._base_record(self._base_row(session, name))

    def find_base(self, fingerprint: BaseFingerprint) -> BaseRecord | None:
        """The registered base with this fingerprint, if any."""
        with self._reading() as session:
            row = session.scalars(select(BaseRow).where(
                BaseRow.fingerprint_key == fingerprint_key(fingerprint))).first()
            return self._base_record(row) if row is not None else None

    def list_bases(self) -> builtins.list[BaseRecord]:
        """All registered bases by name."""
        with self._reading() as session:
            rows = session.scalars(select(BaseRow).order_by(BaseRow.name)).all()
            return [self._base_record(row) for row in rows]

    def set_base_statistics(self, name: str, covariance_hash: str,
                            covariance_path: str | Path) -> BaseRecord:
        """Record the text-encoding statistics C (method.md §6) computed for a base."""

        def work(session: Session) -> BaseRecord:
            row = self._base_row(session, name)
            row.covariance_hash = covariance_hash
            row.covariance_path = self._stored_path(covariance_path)
            session.flush()
            return self._base_record(row)

        return self._write(work)

    def _base_row(self, session: Session, name: str) -> BaseRow:
        row = session.scalars(select(BaseRow).where(BaseRow.name == name)).first()
        if row is None:
            known = session.scalars(select(BaseRow.name)).all()
            listing = f" Known bases: {', '.join(sorted(known))}." if known else ""
            raise NotFoundError(
                f"No base named {name!r}.{listing} Register one with "
                f"`phub base add SOURCE --name {name}`."
            )
        return row

    def _ensure_base(self, session: Session, fingerprint: BaseFingerprint) -> BaseRow:
        """The base row of `fingerprint`, created (without statistics) if it is new."""
        key = fingerprint_key(fingerprint)
        row = session.scalars(select(BaseRow).where(BaseRow.fingerprint_key == key)).first()
        if row is not None:
            return row
        taken = set(session.scalars(select(BaseRow.name)).all())
        row = self._new_base_row(fingerprint, key, _free_base_name(fingerprint, taken))
        session.add(row)
        session.flush()
        return row

    @staticmethod
    def _new_base_row(fingerprint: BaseFingerprint, key: str, name: str) -> BaseRow:
        return BaseRow(
            name=name,
            source=fingerprint.source,
            architecture=fingerprint.architecture,
            fingerprint=fingerprint.to_json(),
            fingerprint_key=key,
            text_width=fingerprint.text_width,
            layers=[[layer.name, layer.out_features] for layer in fingerprint.layers],
            weights_hash=fingerprint.weights_hash,
            created=utcnow(),
        )

    # -- renders -----------------------------------------------------------------------------

    def log_render(self, prompt: str, concepts: builtins.list[dict[str, Any]], seed: int | None,
                   parameters: dict[str, Any], output_path: str | Path | None) -> RenderRecord:
        """Append a render to the history."""

        def work(session: Session) -> RenderRecord:
            row = RenderRow(prompt=prompt, concepts=concepts, seed=seed, parameters=parameters,
                            output_path=str(Path(output_path).resolve()) if output_path else None,
                            created=utcnow())
            session.add(row)
            session.flush()
            return self._render_record(row)

        return self._write(work)

    def list_renders(self, limit: int | None = 50) -> builtins.list[RenderRecord]:
        """Logged renders, newest first (all of them when `limit` is None)."""
        statement = select(RenderRow).order_by(RenderRow.created.desc(), RenderRow.id.desc())
        if limit is not None:
            statement = statement.limit(limit)
        with self._reading() as session:
            return [self._render_record(row) for row in session.scalars(statement)]

    # -- rows → records ------------------------------------------------------------------------

    def _concept_record(self, row: ConceptRow, base_name: str) -> ConceptRecord:
        return ConceptRecord(
            id=row.id, name=row.name, token=row.token, superclass=row.superclass, lock=row.lock,
            base_name=base_name, content_hash=row.content_hash,
            path=self.store.path(row.file_path), size=row.size, beta=row.beta, tau=row.tau,
            training=row.training or {}, metrics=row.metrics or {}, tags=list(row.tags or []),
            created=row.created, updated=row.updated,
        )

    def _base_record(self, row: BaseRow) -> BaseRecord:
        return BaseRecord(
            id=row.id, name=row.name, source=row.source, architecture=row.architecture,
            fingerprint=self._fingerprint(row), covariance_hash=row.covariance_hash,
            covariance_path=self._resolved_path(row.covariance_path),
            created=row.created,
        )

    def _render_record(self, row: RenderRow) -> RenderRecord:
        return RenderRecord(
            id=row.id, prompt=row.prompt, concepts=builtins.list(row.concepts or []),
            seed=row.seed, parameters=row.parameters or {},
            output_path=Path(row.output_path) if row.output_path else None,
            created=row.created,
        )

    @staticmethod
    def _fingerprint(row: BaseRow) -> BaseFingerprint:
        from perfusion_hub.concepts.fingerprint import BaseFingerprint

        return BaseFingerprint.from_json(row.fingerprint)

    def _stored_path(self, path: str | Path | None) -> str | None:
        """Paths inside the home are recorded relative to it, so a moved home keeps working."""
        if path is None:
            return None
        resolved = Path(path).expanduser().resolve()
        try:
            return resolved.relative_to(self.settings.home).as_posix()
        except ValueError:
            return str(resolved)

    def _resolved_path(self, stored: str | None) -> Path | None:
        return None if stored is None else self.settings.home / stored


def _free_base_name(fingerprint: BaseFingerprint, taken: set[str]) -> str:
    """A name for an automatically registered base: its source as a slug (the file or folder
    name for local paths), else the architecture and weights hash prefix; the prefix is
    appended when the name is taken."""
    source = fingerprint.source
    suffix = fingerprint.weights_hash[:8].lower()
    if source.startswith(("/", "~", ".")) or "\\" in source or ":" in source:
        source = Path(source).stem
    stem = slugify(source) or slugify(f"{fingerprint.architecture}-{suffix}") or f"base-{suffix}"
    candidates = [stem, f"{stem[:55]}-{suffix}"]
    candidates += [f"{stem[:50]}-{suffix}-{n}" for n in range(2, 1000)]
    for candidate in candidates:
        candidate = slugify(candidate)
        if candidate and candidate not in taken:
            return candidate
    raise RegistryError("No free name for a new base; register it with `phub base add`.")

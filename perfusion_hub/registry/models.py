"""SQLAlchemy tables of the registry. Portable types only (SQLite and PostgreSQL).

Every schema change goes through an Alembic revision in `migrations/versions/`.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAME = String(64)
HASH = String(64)

# Deterministic constraint names, so that batch migrations on SQLite can find them.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timestamp stored in UTC and read back timezone-aware on every database (SQLite
    itself keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            return value.astimezone(dt.timezone.utc)
        return value

    def process_result_value(self, value: dt.datetime | None,
                             dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class BaseRow(Base):
    """A base model, identified by its fingerprint (architecture, text width, layers, weights)."""

    __tablename__ = "bases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    source: Mapped[str] = mapped_column(String(1024), default="")
    architecture: Mapped[str] = mapped_column(String(128))
    fingerprint: Mapped[dict[str, Any]] = mapped_column(JSON)
    fingerprint_key: Mapped[str] = mapped_column(HASH, unique=True)
    text_width: Mapped[int] = mapped_column(Integer)
    layers: Mapped[list[Any]] = mapped_column(JSON)
    weights_hash: Mapped[str] = mapped_column(HASH)
    covariance_hash: Mapped[str | None] = mapped_column(HASH, nullable=True)
    covariance_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ConceptRow(Base):
    """A concept: a name for people, a content hash for identity, a file in the store."""

    __tablename__ = "concepts"
    __table_args__ = (
        UniqueConstraint("base_id", "name", name="uq_concepts_base_name"),
        UniqueConstraint("content_hash", name="uq_concepts_content_hash"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(NAME, index=True)
    token: Mapped[str] = mapped_column(String(80))
    superclass: Mapped[str] = mapped_column(String(128), index=True)
    lock: Mapped[str] = mapped_column(String(16))
    base_id: Mapped[int] = mapped_column(ForeignKey("bases.id", ondelete="RESTRICT"), index=True)
    content_hash: Mapped[str] = mapped_column(HASH)
    file_path: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    beta: Mapped[float] = mapped_column(Float)
    tau: Mapped[float] = mapped_column(Float)
    training: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow,
                                                 onupdate=utcnow)


class RenderRow(Base):
    """One render: prompt, resolved concepts, seed, parameters and output location."""

    __tablename__ = "renders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt: Mapped[str] = mapped_column(Text)
    concepts: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    seed: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    output_path: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    created: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow,
                                                 index=True)

"""Initial schema: bases, concepts, renders.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "bases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=1024), nullable=False),
        sa.Column("architecture", sa.String(length=128), nullable=False),
        sa.Column("fingerprint", sa.JSON(), nullable=False),
        sa.Column("fingerprint_key", sa.String(length=64), nullable=False),
        sa.Column("text_width", sa.Integer(), nullable=False),
        sa.Column("layers", sa.JSON(), nullable=False),
        sa.Column("weights_hash", sa.String(length=64), nullable=False),
        sa.Column("covariance_hash", sa.String(length=64), nullable=True),
        sa.Column("covariance_path", sa.String(length=1024), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bases")),
        sa.UniqueConstraint("fingerprint_key", name=op.f("uq_bases_fingerprint_key")),
        sa.UniqueConstraint("name", name=op.f("uq_bases_name")),
    )
    op.create_table(
        "renders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("concepts", sa.JSON(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("output_path", sa.String(length=1024), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_renders")),
    )
    with op.batch_alter_table("renders") as batch_op:
        batch_op.create_index(batch_op.f("ix_renders_created"), ["created"], unique=False)

    op.create_table(
        "concepts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token", sa.String(length=80), nullable=False),
        sa.Column("superclass", sa.String(length=128), nullable=False),
        sa.Column("lock", sa.String(length=16), nullable=False),
        sa.Column("base_id", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("file_path", sa.String(length=255), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("beta", sa.Float(), nullable=False),
        sa.Column("tau", sa.Float(), nullable=False),
        sa.Column("training", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["base_id"], ["bases.id"],
                                name=op.f("fk_concepts_base_id_bases"), ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_concepts")),
        sa.UniqueConstraint("base_id", "name", name="uq_concepts_base_name"),
        sa.UniqueConstraint("content_hash", name="uq_concepts_content_hash"),
    )
    with op.batch_alter_table("concepts") as batch_op:
        batch_op.create_index(batch_op.f("ix_concepts_base_id"), ["base_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_concepts_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_concepts_superclass"), ["superclass"], unique=False)


def downgrade() -> None:
    op.drop_table("concepts")
    op.drop_table("renders")
    op.drop_table("bases")

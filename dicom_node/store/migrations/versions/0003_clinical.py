"""Safe on a clinical PACS: what eligibility found and how long delivery is retried.

Revision ID: 0003
Revises: 0002

* ``series.source_contrast``: the source contrast the header rules classified
  (e.g. ``T1w``), shown by ``rtfsyn status``;
* ``series.warnings``: a JSON list of impossible protocol values dropped before
  the prompt (patient-free text);
* ``jobs.retry_until``: the end of a job's delivery retry window (set at its
  first failed attempt); the job state ``waiting`` needs no schema change (states
  are strings).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("source_contrast", sa.String(16)))
        batch.add_column(sa.Column("warnings", sa.Text()))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retry_until", sa.DateTime()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retry_until")
    with op.batch_alter_table("series") as batch:
        batch.drop_column("warnings")
        batch.drop_column("source_contrast")

"""Scale-out: the node processes sharing a job log, and who holds which work.

Revision ID: 0002
Revises: 0001

* ``nodes``: one row per ``rtfsyn serve`` process (id, host, pid, roles), its
  heartbeat (``last_seen_at``) and when it stopped;
* ``jobs.claimed_by`` / ``jobs.lease_expires_at``: the process synthesizing or
  delivering a job and until when its claim holds without a heartbeat;
  ``jobs.processed_by``: the process whose synthesis attempt ended the job's processing;
* ``associations.receiver``, ``deliveries.sender``: the process that received
  or sent.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NODE_ID = 96  # characters of a node id (host name, pid, random suffix)


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.String(NODE_ID), primary_key=True),
        sa.Column("hostname", sa.String(64), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("roles", sa.String(32), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=False),
        sa.Column("stopped_at", sa.DateTime()))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("claimed_by", sa.String(NODE_ID)))
        batch.add_column(sa.Column("processed_by", sa.String(NODE_ID)))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime()))
        batch.create_index("ix_jobs_lease_expires_at", ["lease_expires_at"])
    with op.batch_alter_table("associations") as batch:
        batch.add_column(sa.Column("receiver", sa.String(NODE_ID)))
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("sender", sa.String(NODE_ID)))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("sender")
    with op.batch_alter_table("associations") as batch:
        batch.drop_column("receiver")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_lease_expires_at")
        batch.drop_column("lease_expires_at")
        batch.drop_column("processed_by")
        batch.drop_column("claimed_by")
    op.drop_table("nodes")

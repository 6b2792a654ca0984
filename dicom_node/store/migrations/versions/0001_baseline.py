"""Baseline: the job log as the node wrote it up to schema version 1 (PRAGMA user_version 1).

Revision ID: 0001
Revises: (none)

A SQLite job log of an earlier version has these tables and no
``alembic_version`` table; :func:`dicom_node.store.schema.upgrade` stamps it
with this revision, then upgrades it. States are stored as their values in
VARCHAR(16) columns (no database enum type).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _state(*values: str, name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, length=16)


def _index(table: str, *columns: str) -> None:
    for column in columns:
        op.create_index(f"ix_{table}_{column}", table, [column])


def upgrade() -> None:
    op.create_table(
        "associations",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("calling_aet", sa.String(16)), sa.Column("called_aet", sa.String(16)),
        sa.Column("peer_host", sa.String(64)), sa.Column("peer_port", sa.Integer()),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime()),
        sa.Column("state", _state("open", "released", "aborted", "rejected",
                                  name="associationstate"), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("n_instances", sa.Integer(), nullable=False))
    _index("associations", "state")
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("dest_ae_title", sa.String(16)), sa.Column("dest_host", sa.String(64)),
        sa.Column("dest_port", sa.Integer()),
        sa.Column("output_format", sa.String(32), nullable=False),
        sa.Column("series_number_offset", sa.Integer(), nullable=False),
        sa.Column("state", _state("queued", "running", "sending", "done", "failed", "rejected",
                                  name="jobstate"), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("send_attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime()),
        sa.Column("derived_series_uid", sa.String(64), nullable=False),
        sa.Column("derived_files", sa.Text()), sa.Column("prompt", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime()), sa.Column("processed_at", sa.DateTime()),
        sa.Column("finished_at", sa.DateTime()),
        sa.Column("process_seconds", sa.Float()), sa.Column("send_seconds", sa.Float()),
        sa.Column("stage_seconds", sa.Text()),
        sa.UniqueConstraint("series_uid", "generation", "target", "destination",
                            name="one_job_per_series_target_destination"))
    _index("jobs", "derived_series_uid", "next_attempt_at", "series_uid", "state")
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("series_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("modality", sa.String(16)), sa.Column("description", sa.String(64)),
        sa.Column("series_number", sa.Integer()),
        sa.Column("n_instances", sa.Integer(), nullable=False),
        sa.Column("first_received_at", sa.DateTime(), nullable=False),
        sa.Column("last_received_at", sa.DateTime(), nullable=False),
        sa.Column("completed_at", sa.DateTime()),
        sa.Column("state", _state("receiving", "partial", "complete", "routed", "ignored",
                                  "not_eligible", name="seriesstate"), nullable=False),
        sa.Column("reason", sa.Text()), sa.Column("routes_applied", sa.Text()),
        sa.Column("generation", sa.Integer(), nullable=False))
    _index("series", "last_received_at", "state", "study_uid")
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.Integer(), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("dest_ae_title", sa.String(16)), sa.Column("dest_host", sa.String(64)),
        sa.Column("dest_port", sa.Integer()),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("ended_at", sa.DateTime()),
        sa.Column("status", _state("running", "ok", "partial", "failed",
                                   name="deliverystatus"), nullable=False),
        sa.Column("n_sent", sa.Integer(), nullable=False),
        sa.Column("n_warning", sa.Integer(), nullable=False),
        sa.Column("n_failed", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text()))
    _index("deliveries", "job_id")
    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("series_uid", sa.String(64), nullable=False),
        sa.Column("study_uid", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("association_id", sa.Integer(), sa.ForeignKey("associations.id")),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("n_received", sa.Integer(), nullable=False),
        sa.Column("eligible", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text()))
    _index("instances", "association_id", "series_uid")
    op.create_table(
        "delivery_instances",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("delivery_id", sa.Integer(), sa.ForeignKey("deliveries.id"), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("outcome", sa.String(16), nullable=False))
    _index("delivery_instances", "delivery_id")


def downgrade() -> None:
    for table in ("delivery_instances", "instances", "deliveries", "series", "jobs",
                  "associations"):
        op.drop_table(table)

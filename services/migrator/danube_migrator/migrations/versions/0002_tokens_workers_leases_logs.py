"""Tokens, workers, job leases and step logs

For authentication (DESIGN 11): `users.is_admin`, `workers`, and `api_tokens` (a user's or
a worker's, only the SHA-256 of each token). For the worker (DESIGN 7, 12): on `jobs` the
claiming worker and node, the lease (`claimed_at`, `last_seen_at`), `cancel_requested` and
`reason`, with indexes for the claim and for the lost-worker sweep; steps' `timeout_s`
(also filled into every stored step definition), the `skipped` status, and the output in
`log_chunks` with each step's `log_length`. For more than one node (DESIGN 15):
`pipelines.next_job_number`, set from the jobs already there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 04:39:37.907216
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

STEP_TIMEOUT_DEFAULT_S = 3600
_STATUSES_BEFORE = ("pending", "running", "succeeded", "failed", "cancelled")
_STATUSES_AFTER = (*_STATUSES_BEFORE, "skipped")


def _status_type(table: str, kind: str, values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(
        *values,
        name=op.f(f"ck_{table}_{kind}"),
        native_enum=False,
        create_constraint=True,
        length=16,
    )


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
        sa.UniqueConstraint("name", name=op.f("uq_workers_name")),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("token_sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=True),
        sa.Column("worker_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(user_id IS NULL) <> (worker_id IS NULL)", name=op.f("ck_api_tokens_one_owner")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_api_tokens_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["worker_id"],
            ["workers.id"],
            name=op.f("fk_api_tokens_worker_id_workers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_api_tokens_token_sha256")),
    )
    op.create_index(
        op.f("ix_api_tokens_user_id_created_at"), "api_tokens", ["user_id", "created_at"]
    )
    op.create_index(op.f("ix_api_tokens_worker_id"), "api_tokens", ["worker_id"])

    with op.batch_alter_table("users") as batch_op:
        batch_op.add_column(
            sa.Column("is_admin", sa.Boolean(), server_default=sa.false(), nullable=False)
        )

    with op.batch_alter_table("pipelines") as batch_op:
        batch_op.add_column(
            sa.Column("next_job_number", sa.Integer(), server_default="1", nullable=False)
        )
        batch_op.create_check_constraint(
            op.f("ck_pipelines_next_job_number_positive"), "next_job_number >= 1"
        )
    jobs = sa.table(
        "jobs", sa.column("pipeline_id", sa.String()), sa.column("number", sa.Integer())
    )
    pipelines = sa.table(
        "pipelines",
        sa.column("id", sa.String()),
        sa.column("next_job_number", sa.Integer()),
        sa.column("steps", sa.JSON()),
    )
    last_number = (
        sa.select(sa.func.max(jobs.c.number))
        .where(jobs.c.pipeline_id == pipelines.c.id)
        .scalar_subquery()
    )
    op.execute(pipelines.update().values(next_job_number=sa.func.coalesce(last_number, 0) + 1))
    _rewrite_step_definitions(pipelines, _with_timeout)

    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("worker_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("node", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("reason", sa.String(length=500), nullable=True))
        batch_op.alter_column(
            "status",
            existing_type=_status_type("jobs", "job_status", _STATUSES_BEFORE),
            type_=_status_type("jobs", "job_status", _STATUSES_AFTER),
            existing_nullable=False,
            existing_server_default="pending",
        )
        batch_op.create_check_constraint(op.f("ck_jobs_status_not_skipped"), "status <> 'skipped'")
        batch_op.drop_index(op.f("ix_jobs_status"))
        batch_op.create_index(op.f("ix_jobs_status_created_at_id"), ["status", "created_at", "id"])
        batch_op.create_index(op.f("ix_jobs_status_last_seen_at"), ["status", "last_seen_at"])
        batch_op.create_foreign_key(
            op.f("fk_jobs_worker_id_workers"),
            "workers",
            ["worker_id"],
            ["id"],
            ondelete="SET NULL",
        )

    with op.batch_alter_table("steps") as batch_op:
        batch_op.add_column(
            sa.Column(
                "timeout_s",
                sa.Integer(),
                server_default=str(STEP_TIMEOUT_DEFAULT_S),
                nullable=False,
            )
        )
        batch_op.add_column(
            sa.Column("log_length", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.alter_column(
            "status",
            existing_type=_status_type("steps", "step_status", _STATUSES_BEFORE),
            type_=_status_type("steps", "step_status", _STATUSES_AFTER),
            existing_nullable=False,
            existing_server_default="pending",
        )
        batch_op.create_check_constraint(
            op.f("ck_steps_timeout_s_in_range"), "timeout_s BETWEEN 1 AND 86400"
        )
        batch_op.create_check_constraint(
            op.f("ck_steps_log_length_not_negative"), "log_length >= 0"
        )

    op.create_table(
        "log_chunks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("step_id", sa.String(length=36), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint('"offset" >= 0', name=op.f("ck_log_chunks_offset_not_negative")),
        sa.ForeignKeyConstraint(
            ["step_id"], ["steps.id"], name=op.f("fk_log_chunks_step_id_steps"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_log_chunks")),
        sa.UniqueConstraint("step_id", "offset", name=op.f("uq_log_chunks_step_id_offset")),
    )


def downgrade() -> None:
    """Back to 0001: what only 0002 knows goes (tokens, workers, logs, leases, timeouts).
    A `skipped` step becomes `cancelled`, the nearest status 0001 has."""
    op.drop_table("log_chunks")

    steps = sa.table("steps", sa.column("status", sa.String()))
    op.execute(steps.update().where(steps.c.status == "skipped").values(status="cancelled"))
    with op.batch_alter_table("steps") as batch_op:
        batch_op.drop_constraint(op.f("ck_steps_log_length_not_negative"), type_="check")
        batch_op.drop_constraint(op.f("ck_steps_timeout_s_in_range"), type_="check")
        batch_op.alter_column(
            "status",
            existing_type=_status_type("steps", "step_status", _STATUSES_AFTER),
            type_=_status_type("steps", "step_status", _STATUSES_BEFORE),
            existing_nullable=False,
            existing_server_default="pending",
        )
        batch_op.drop_column("log_length")
        batch_op.drop_column("timeout_s")

    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint(op.f("fk_jobs_worker_id_workers"), type_="foreignkey")
        batch_op.drop_index(op.f("ix_jobs_status_last_seen_at"))
        batch_op.drop_index(op.f("ix_jobs_status_created_at_id"))
        batch_op.create_index(op.f("ix_jobs_status"), ["status"])
        batch_op.drop_constraint(op.f("ck_jobs_status_not_skipped"), type_="check")
        batch_op.alter_column(
            "status",
            existing_type=_status_type("jobs", "job_status", _STATUSES_AFTER),
            type_=_status_type("jobs", "job_status", _STATUSES_BEFORE),
            existing_nullable=False,
            existing_server_default="pending",
        )
        batch_op.drop_column("reason")
        batch_op.drop_column("cancel_requested")
        batch_op.drop_column("last_seen_at")
        batch_op.drop_column("claimed_at")
        batch_op.drop_column("node")
        batch_op.drop_column("worker_id")

    pipelines = sa.table("pipelines", sa.column("id", sa.String()), sa.column("steps", sa.JSON()))
    _rewrite_step_definitions(pipelines, _without_timeout)
    with op.batch_alter_table("pipelines") as batch_op:
        batch_op.drop_constraint(op.f("ck_pipelines_next_job_number_positive"), type_="check")
        batch_op.drop_column("next_job_number")

    with op.batch_alter_table("users") as batch_op:
        batch_op.drop_column("is_admin")

    op.drop_index(op.f("ix_api_tokens_worker_id"), table_name="api_tokens")
    op.drop_index(op.f("ix_api_tokens_user_id_created_at"), table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("workers")


def _with_timeout(definition: dict[str, Any]) -> dict[str, Any]:
    return {**definition, "timeout_s": definition.get("timeout_s", STEP_TIMEOUT_DEFAULT_S)}


def _without_timeout(definition: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in definition.items() if key != "timeout_s"}


def _rewrite_step_definitions(
    pipelines: sa.TableClause, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """Apply `change` to every step definition stored in `pipelines.steps`, in place."""
    connection = op.get_bind()
    rows = connection.execute(sa.select(pipelines.c.id, pipelines.c.steps)).all()
    for pipeline_id, definitions in rows:
        loaded = json.loads(definitions) if isinstance(definitions, str) else definitions
        connection.execute(
            pipelines.update()
            .where(pipelines.c.id == pipeline_id)
            .values(steps=[change(definition) for definition in loaded])
        )

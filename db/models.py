"""Tables of the durable store.

Every decision, human action and scheduler-weight version is kept here, so
that the console and controllers can be restarted and replicated. Enumerated
states are plain strings guarded by CHECK constraints (portable across SQLite
and PostgreSQL, readable in psql).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.states import (
    AlertState,
    NotificationKind,
    NotificationState,
    RequestState,
    RolloutState,
    StepState,
    WeightState,
    values,
)
from db.base import Base

# The CHECK constraints are derived from core.states, the one list of each state's values.
REQUEST_STATES = values(RequestState)
WEIGHT_STATES = values(WeightState)
ROLLOUT_STATES = values(RolloutState)
STEP_STATES = values(StepState)
ALERT_STATES = values(AlertState)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# A 64-bit integer key on PostgreSQL that is still SQLite's ROWID alias.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class PlacementRequestRow(Base):
    """The durable placement queue: queued → claimed → placing → bound | failed; bound → removed."""

    __tablename__ = "placement_requests"
    __table_args__ = (
        CheckConstraint(_in("status", REQUEST_STATES), name="status"),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index("ix_placement_requests_claimable", "status", "available_at"),
        # The claim order straight from the index: per priority rank, oldest first
        # (``db.queue.claim`` walks the ranks from the most urgent), so a claim of one
        # request reads one index entry instead of sorting every queued row.
        Index("ix_placement_requests_claim_order", "status", "priority_rank", "id"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(128), unique=True)
    model_name: Mapped[str] = mapped_column(String(63))
    namespace: Mapped[str] = mapped_column(String(63))
    priority: Mapped[str] = mapped_column(String(16))
    # Higher first: CRITICAL 3 … LOW 0.
    priority_rank: Mapped[int] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]]
    source: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None]
    available_at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    decisions: Mapped[list[DecisionRow]] = relationship(back_populates="request")


class WeightVersionRow(Base):
    """A version of the scheduler weights, with who proposed it and why."""

    __tablename__ = "weight_versions"
    __table_args__ = (
        CheckConstraint(_in("status", WEIGHT_STATES), name="status"),
        # At most one active version, whatever races between replicas.
        Index("uq_weight_versions_one_active", "status", unique=True,
              sqlite_where=text("status = 'active'"),
              postgresql_where=text("status = 'active'")),
    )

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    efficiency: Mapped[float] = mapped_column(Float)
    affinity: Mapped[float] = mapped_column(Float)
    utilization: Mapped[float] = mapped_column(Float)
    power: Mapped[float] = mapped_column(Float)
    mps: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16))
    author: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]]
    parent_version: Mapped[int | None] = mapped_column(ForeignKey("weight_versions.version"))
    created_at: Mapped[datetime]
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime | None]


class DecisionRow(Base):
    """One placement decision with its matrix and the weight version that made it."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    request_pk: Mapped[int] = mapped_column(ForeignKey("placement_requests.id",
                                                       ondelete="CASCADE"), index=True)
    placed: Mapped[bool]
    node: Mapped[str | None] = mapped_column(String(253))
    gpu_index: Mapped[int | None] = mapped_column(Integer)
    gpu_type: Mapped[str | None] = mapped_column(String(32))
    workload_class: Mapped[str] = mapped_column(String(16))
    share_pct: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    summary: Mapped[str] = mapped_column(Text)
    matrix: Mapped[dict[str, Any]]
    weight_version: Mapped[int | None] = mapped_column(ForeignKey("weight_versions.version"))
    predicted_throughput: Mapped[float | None] = mapped_column(Float)
    decided_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(index=True)

    request: Mapped[PlacementRequestRow] = relationship(back_populates="decisions")


class MetricSampleRow(Base):
    """Raw samples (e.g. every 30 s or 1 min); rolled up into hours, then pruned."""

    __tablename__ = "metric_samples"
    __table_args__ = (Index("ix_metric_samples_series", "metric", "key", "ts", "value"),
                      Index("ix_metric_samples_ts", "ts"))

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    # Epoch seconds (UTC): numeric bucketing is identical on both backends.
    ts: Mapped[float] = mapped_column(Float)
    metric: Mapped[str] = mapped_column(String(64))
    # The series' identity, e.g. "model=llama-2-13b" or "node=a100-3/gpu=0".
    key: Mapped[str] = mapped_column(String(256))
    value: Mapped[float] = mapped_column(Float)


class MetricRollupRow(Base):
    """Aggregates of samples over fixed buckets (1 h by default), keyed by the bucket:
    a series' buckets of a tier are neighbours in the table (WITHOUT ROWID on SQLite),
    so a chart reads them in one range scan (migration 0010)."""

    __tablename__ = "metric_rollups"
    __table_args__ = (
        Index("ix_metric_rollups_age", "resolution_s", "bucket_ts"),
        {"sqlite_with_rowid": False},
    )

    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    resolution_s: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket_ts: Mapped[float] = mapped_column(Float, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    total: Mapped[float] = mapped_column(Float)
    minimum: Mapped[float] = mapped_column(Float)
    maximum: Mapped[float] = mapped_column(Float)


class AutoscalingDecisionRow(Base):
    __tablename__ = "autoscaling_decisions"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    deployment: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(16))  # up, down, hold
    replicas_before: Mapped[int] = mapped_column(Integer)
    replicas_after: Mapped[int] = mapped_column(Integer)
    inputs: Mapped[dict[str, Any]]
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class RolloutPlanRow(Base):
    __tablename__ = "rollout_plans"
    __table_args__ = (CheckConstraint(_in("status", ROLLOUT_STATES), name="status"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    strategy: Mapped[str] = mapped_column(String(32))
    update_type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(24))
    nodes: Mapped[list[Any]]
    config_diff: Mapped[dict[str, Any]]
    gate_results: Mapped[dict[str, Any]]
    predicted_impact: Mapped[dict[str, Any]]
    auto_promote: Mapped[bool]
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    steps: Mapped[list[RolloutStepRow]] = relationship(back_populates="plan",
                                                       order_by="RolloutStepRow.seq")
    approvals: Mapped[list[RolloutApprovalRow]] = relationship(back_populates="plan")


class RolloutStepRow(Base):
    __tablename__ = "rollout_steps"
    __table_args__ = (
        CheckConstraint(_in("status", STEP_STATES), name="status"),
        UniqueConstraint("plan_id", "seq", name="uq_rollout_steps_plan_seq"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("rollout_plans.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    node: Mapped[str | None] = mapped_column(String(253))
    action: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    details: Mapped[dict[str, Any]]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    plan: Mapped[RolloutPlanRow] = relationship(back_populates="steps")


class RolloutApprovalRow(Base):
    __tablename__ = "rollout_approvals"

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("rollout_plans.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # start, promote
    approver: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]

    plan: Mapped[RolloutPlanRow] = relationship(back_populates="approvals")


class AlertEventRow(Base):
    __tablename__ = "alert_events"
    __table_args__ = (CheckConstraint(_in("state", ALERT_STATES), name="state"),)

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    labels: Mapped[dict[str, Any]]
    summary: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]


class AuditEventRow(Base):
    """Who did what, when, to which object, why, and what they were shown."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_actor_at", "actor", "at"),
        Index("ix_audit_events_action_at", "action", "at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]]


class LeaderLeaseRow(Base):
    """One row per lease name; the holder leads until ``expires_at``."""

    __tablename__ = "leader_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    generation: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime]
    renewed_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class CostLedgerRow(Base):
    """Cost accrued per hour bucket and (model, namespace, node, GPU) — SPEC §3.8.

    ``model`` is empty for the idle (unallocated) share of a GPU in use. Money
    in exact decimals; rows are accumulated (upserted) as samples arrive.
    """

    __tablename__ = "cost_ledger"
    __table_args__ = (
        UniqueConstraint("bucket_start", "model", "namespace", "node", "gpu_index",
                         name="uq_cost_ledger_bucket"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    bucket_start: Mapped[datetime] = mapped_column(index=True)
    model: Mapped[str] = mapped_column(String(63))
    namespace: Mapped[str] = mapped_column(String(63))
    node: Mapped[str] = mapped_column(String(253))
    gpu_index: Mapped[int] = mapped_column(Integer)
    gpu_type: Mapped[str] = mapped_column(String(32))
    # GPU-seconds held, weighted by the share of threads held (1 GPU for 1 h at 50 % = 1800).
    share_seconds: Mapped[float] = mapped_column(Float)
    energy_kwh: Mapped[float] = mapped_column(Float)
    # Money in integer nano-dollars (exact on both backends; SQLite has no decimal type).
    gpu_cost_nusd: Mapped[int] = mapped_column(BigInteger)
    energy_cost_nusd: Mapped[int] = mapped_column(BigInteger)
    idle_cost_nusd: Mapped[int] = mapped_column(BigInteger)
    inferences: Mapped[int] = mapped_column(BigInteger)


class ControlFlagRow(Base):
    """Durable operator switches and controller status, one JSON value per key.

    For example ``autoscaling.paused`` (operator) or ``autoscaling.status`` (the
    controller's latest recommendations, for consoles in other processes).
    """

    __tablename__ = "control_flags"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[dict[str, Any]]
    updated_by: Mapped[str] = mapped_column(String(128))
    updated_at: Mapped[datetime]


class GpuReservationRow(Base):
    """A GPU slice held for a placement request, in the store (SPEC §3.3 step 7).

    One row per request (``owner``): reserving again moves it. A reservation counts
    while its request is claimed, placing or bound; the rows of failed, removed or
    requeued requests are ignored and cleaned up. ``db.reservations.reserve`` checks
    threads, memory and advertised replicas against these rows under the GPU's lock
    row, so any number of placers never over-commit a GPU.
    """

    __tablename__ = "gpu_reservations"
    __table_args__ = (
        CheckConstraint("thread_pct >= 1 AND thread_pct <= 100", name="thread_pct"),
        CheckConstraint("memory_mib >= 0", name="memory_mib"),
        Index("ix_gpu_reservations_gpu", "node", "gpu_index"),
    )

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)
    node: Mapped[str] = mapped_column(String(253))
    gpu_index: Mapped[int] = mapped_column(Integer)
    thread_pct: Mapped[int] = mapped_column(Integer)
    memory_mib: Mapped[int] = mapped_column(Integer)
    reserved_by: Mapped[str] = mapped_column(String(160))
    reserved_at: Mapped[datetime]


class GpuLockRow(Base):
    """One row per GPU that has been reserved on: the row a reservation locks first, so
    two placers checking the same GPU serialize (``SELECT … FOR UPDATE`` on PostgreSQL;
    the upsert takes SQLite's write lock)."""

    __tablename__ = "gpu_locks"

    node: Mapped[str] = mapped_column(String(253), primary_key=True)
    gpu_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)


class SignInFailureRow(Base):
    """A failed sign-in (``db.signin``): the account tried and the client address, so
    throttling holds across console processes (``core.auth.locked_until``)."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (
        Index("ix_sign_in_failures_account", "account", "at"),
        Index("ix_sign_in_failures_client", "client", "at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(64))
    client: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)


class NotificationRow(Base):
    """The webhook outbox (``db.outbox``): one message per event, queued in the event's own
    transaction, delivered by the controller's notify step with retries and backoff.

    pending → sent, or pending → dead once ``attempts`` reached the limit. A claim for
    delivery moves ``next_attempt_at`` ahead (a short lease) and counts the attempt, so
    two controllers never send the same row at once and a late finisher's report is
    ignored (``attempts`` is the fencing token). ``dedupe_key`` keeps one event from
    being queued twice (``breaker-opened:<opened_at>``).
    """

    __tablename__ = "notifications"
    __table_args__ = (
        CheckConstraint(_in("state", values(NotificationState)), name="state"),
        CheckConstraint(_in("kind", values(NotificationKind)), name="kind"),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index("ix_notifications_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    dedupe_key: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]  # indexed with state: ix_notifications_due
    sent_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(500))
    state: Mapped[str] = mapped_column(String(16), default="pending")


class RolloutSpecRow(Base):
    """The rollout plan itself (``core.rollout.plan.RolloutPlan.to_json()``), one per plan row:
    what the controller executes and the approver approved (``db.rollouts``)."""

    __tablename__ = "rollout_specs"

    plan_id: Mapped[int] = mapped_column(ForeignKey("rollout_plans.id", ondelete="CASCADE"),
                                         primary_key=True)
    spec: Mapped[dict[str, Any]]

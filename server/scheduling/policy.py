"""Batching and queue policy: the scheduler's own typed view of a model config's blocks.

Built from Triton's ``dynamic_batching`` block by the repository; the scheduler never
sees a protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from server.scheduling.ensemble import EnsemblePlan, Step, check_plan


class TimeoutAction(Enum):
    REJECT = "REJECT"
    DELAY = "DELAY"


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    timeout_action: TimeoutAction = TimeoutAction.REJECT
    default_timeout_us: int | None = None  # None: requests never time out in the queue
    allow_timeout_override: bool = False
    max_queue_size: int = 1024  # always bounded: a full queue refuses at once


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How one model's requests are queued and grouped.

    ``max_batch_size`` counts rows; 0 means the model does not batch, and every request
    runs alone. ``batching`` False (no ``dynamic_batching`` block) also runs requests
    one at a time, each with as many rows as the client sent.
    """

    max_batch_size: int = 0
    batching: bool = False
    decoupled: bool = False  # 0..n responses per request; such requests always run alone
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    preserve_ordering: bool = False
    priority_levels: int = 1  # levels are 1..priority_levels; 1 is the highest
    default_priority_level: int = 1
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    priority_queue_policy: dict[int, QueuePolicy] = field(default_factory=dict)
    # Fault isolation (deepserve's parameters `execution_timeout_ms`, `reload_after_failures`):
    # a batch running longer fails and its instance is replaced; so is an instance whose
    # batches failed this many times in a row (a runtime fault, not a client's bad input).
    execution_timeout_s: float | None = None
    reload_after_failures: int = 3
    # A runtime whose batches take less than this (moving average) is run on the event loop
    # instead of its instance thread (deepserve's parameter `inline_execution_us`; set by the
    # repository for ONNX Runtime and TensorRT models only, never for Python or decoupled ones).
    inline_below_s: float = 0.0

    def queue_policy(self, level: int) -> QueuePolicy:
        return self.priority_queue_policy.get(level, self.default_queue_policy)

    def level_for(self, priority: int | None) -> int:
        """Request priority (0 / None = default, 1 = highest) -> queue level."""
        if not priority:
            return self.default_priority_level
        return priority


def _faults(config) -> dict:
    """``execution_timeout_ms`` / ``reload_after_failures`` from the config's parameters."""
    params = {key: value.string_value for key, value in config.parameters.items()}
    out: dict = {}
    try:
        if params.get("execution_timeout_ms"):
            out["execution_timeout_s"] = float(params["execution_timeout_ms"]) / 1000
            if out["execution_timeout_s"] <= 0:
                raise ValueError
        if params.get("reload_after_failures"):
            out["reload_after_failures"] = int(params["reload_after_failures"])
            if out["reload_after_failures"] < 1:
                raise ValueError
    except ValueError:
        raise ValueError("execution_timeout_ms and reload_after_failures must be positive numbers") from None
    return out


def batch_policy_from_config(config, default_max_queue_size: int) -> BatchPolicy:
    """Build the policy from a Triton ``ModelConfig`` message."""
    decoupled = config.model_transaction_policy.decoupled
    if not config.HasField("dynamic_batching"):
        return BatchPolicy(
            max_batch_size=config.max_batch_size,
            decoupled=decoupled,
            default_queue_policy=QueuePolicy(max_queue_size=default_max_queue_size),
            **_faults(config),
        )
    db = config.dynamic_batching
    levels = max(1, db.priority_levels)
    # Requests that name no priority go to the configured level, else the lowest one,
    # so that a client which asks for priority is served ahead of those that do not.
    default_level = min(db.default_priority_level or levels, levels)

    def queue_policy(qp) -> QueuePolicy:
        return QueuePolicy(
            timeout_action=TimeoutAction.DELAY if qp.timeout_action == 1 else TimeoutAction.REJECT,
            default_timeout_us=qp.default_timeout_microseconds or None,
            allow_timeout_override=qp.allow_timeout_override,
            max_queue_size=qp.max_queue_size or default_max_queue_size,
        )

    return BatchPolicy(
        max_batch_size=config.max_batch_size,
        batching=config.max_batch_size > 0 and not decoupled,
        decoupled=decoupled,
        preferred_batch_sizes=tuple(sorted(s for s in db.preferred_batch_size if 0 < s <= config.max_batch_size)),
        max_queue_delay_us=db.max_queue_delay_microseconds,
        preserve_ordering=db.preserve_ordering,
        priority_levels=levels,
        default_priority_level=default_level,
        default_queue_policy=queue_policy(db.default_queue_policy),
        priority_queue_policy={int(k): queue_policy(v) for k, v in db.priority_queue_policy.items()},
        **_faults(config),
    )


def ensemble_plan_from_config(config) -> EnsemblePlan:
    """Triton's ``ensemble_scheduling`` block -> a checked :class:`EnsemblePlan`.

    ``model_version: -1`` (or 0) means the step model's latest ready version. Raises
    ValueError naming what is wrong (the repository reports it as the load's reason).
    """
    if not config.ensemble_scheduling.step:
        raise ValueError("an ensemble needs ensemble_scheduling { step [ ... ] } with at least one step")
    steps = tuple(
        Step(
            model=s.model_name,
            version=str(s.model_version) if s.model_version > 0 else "",
            inputs=tuple(sorted(s.input_map.items())),
            outputs=tuple(sorted(s.output_map.items())),
        )
        for s in config.ensemble_scheduling.step
    )
    for step in steps:
        if not step.model:
            raise ValueError("every ensemble step needs a model_name")
    plan = EnsemblePlan(
        inputs=tuple(t.name for t in config.input), outputs=tuple(t.name for t in config.output), steps=steps
    )
    check_plan(plan)
    return plan

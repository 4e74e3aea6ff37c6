"""The lifecycle of experiments, stages, rounds, tasks, updates and workers: the only code that writes a
state column. ``table.TRANSITIONS`` lists the allowed moves; each function here is one transition and
records its event (and, through the unit of work, wakes whoever may act on it once it is committed).
"""

from coordinator.lifecycle.experiments import (
    abort_experiment,
    complete_experiment,
    complete_stage,
    end_on_privacy_budget,
    fail_experiment,
    pause_experiment,
    resume_experiment,
    start_experiment,
    start_stage,
    submit_experiment,
)
from coordinator.lifecycle.rounds import (
    begin_aggregating,
    commit_round,
    fail_round,
    mark_folded,
    open_round,
    record_update,
    start_collecting,
)
from coordinator.lifecycle.table import TRANSITIONS, allowed, move
from coordinator.lifecycle.tasks import (
    cancel_live_tasks,
    cancel_task,
    create_task,
    drop_task,
    end_task,
    lease_task,
    register_worker,
    release_task,
    worker_offline,
    worker_online,
)

__all__ = [
    "TRANSITIONS",
    "abort_experiment",
    "allowed",
    "begin_aggregating",
    "cancel_live_tasks",
    "cancel_task",
    "commit_round",
    "complete_experiment",
    "complete_stage",
    "create_task",
    "end_on_privacy_budget",
    "drop_task",
    "end_task",
    "fail_experiment",
    "fail_round",
    "lease_task",
    "mark_folded",
    "move",
    "open_round",
    "pause_experiment",
    "record_update",
    "register_worker",
    "release_task",
    "resume_experiment",
    "start_collecting",
    "start_experiment",
    "start_stage",
    "submit_experiment",
    "worker_offline",
    "worker_online",
]

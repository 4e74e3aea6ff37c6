"""Repositories: the registry's named domain queries, one small module per aggregate.

A unit of work (``storage.uow``) carries one of each (``uow.rounds.foldable_updates(round_id)``,
``uow.stages.get(experiment_id, index)`` ...). Each module holds the abstract interface and its SQL
implementation; ``storage.memory`` holds in-memory ones for fast service tests, and
``tests/storage/test_repositories.py`` runs one contract suite against SQLite, PostgreSQL and memory.
Coordinator code reads and writes the registry only through these (never through a session).
"""

from storage.repositories.events import EventRepository, SqlEventRepository
from storage.repositories.experiments import ExperimentRepository, SqlExperimentRepository
from storage.repositories.rounds import RoundRepository, SqlRoundRepository
from storage.repositories.secagg import SecAggRepository, SqlSecAggRepository
from storage.repositories.sites import SiteRepository, SqlSiteRepository
from storage.repositories.stages import SqlStageRepository, StageRepository
from storage.repositories.tasks import SqlTaskRepository, TaskRepository
from storage.repositories.updates import SqlUpdateRepository, UpdateRepository
from storage.repositories.versions import SqlVersionRepository, VersionRepository
from storage.repositories.workers import SqlWorkerRepository, WorkerRepository

__all__ = [
    "EventRepository",
    "ExperimentRepository",
    "RoundRepository",
    "SecAggRepository",
    "SiteRepository",
    "SqlEventRepository",
    "SqlExperimentRepository",
    "SqlRoundRepository",
    "SqlSecAggRepository",
    "SqlSiteRepository",
    "SqlStageRepository",
    "SqlTaskRepository",
    "SqlUpdateRepository",
    "SqlVersionRepository",
    "SqlWorkerRepository",
    "StageRepository",
    "TaskRepository",
    "UpdateRepository",
    "VersionRepository",
    "WorkerRepository",
]

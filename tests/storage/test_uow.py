"""Unit of work: commit persists; leaving without commit or with an exception rolls back."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from storage.models import Site
from storage.uow import UnitOfWorkFactory


def _site_names(uow_factory: UnitOfWorkFactory) -> list[str]:
    with uow_factory() as uow:
        return list(uow.session.scalars(select(Site.name).order_by(Site.name)))


def test_commit_persists_changes(uow_factory: UnitOfWorkFactory) -> None:
    with uow_factory() as uow:
        uow.session.add(Site(name="hospital-a", token_hash="h"))
        uow.commit()

    assert _site_names(uow_factory) == ["hospital-a"]


def test_leaving_without_commit_rolls_back(uow_factory: UnitOfWorkFactory) -> None:
    with uow_factory() as uow:
        uow.session.add(Site(name="hospital-a", token_hash="h"))
        uow.flush()  # even flushed rows go

    assert _site_names(uow_factory) == []


def test_exception_rolls_back_and_propagates(uow_factory: UnitOfWorkFactory) -> None:
    with pytest.raises(KeyError), uow_factory() as uow:
        uow.session.add(Site(name="hospital-a", token_hash="h"))
        uow.flush()
        raise KeyError("boom")

    assert _site_names(uow_factory) == []


def test_explicit_rollback_discards_only_uncommitted_work(uow_factory: UnitOfWorkFactory) -> None:
    with uow_factory() as uow:
        uow.session.add(Site(name="kept", token_hash="h"))
        uow.commit()
        uow.session.add(Site(name="dropped", token_hash="h"))
        uow.rollback()

    assert _site_names(uow_factory) == ["kept"]


def test_entering_an_open_unit_of_work_again_is_an_error(uow_factory: UnitOfWorkFactory) -> None:
    uow = uow_factory()
    with uow:
        with pytest.raises(RuntimeError, match="already open"), uow:
            pass
        uow.session.add(Site(name="after-misuse", token_hash="h"))
        uow.commit()

    assert _site_names(uow_factory) == ["after-misuse"]


def test_session_outside_the_block_is_an_error(uow_factory: UnitOfWorkFactory) -> None:
    uow = uow_factory()

    with pytest.raises(RuntimeError, match="inside `with uow:`"):
        uow.commit()
    with uow:
        pass
    with pytest.raises(RuntimeError, match="inside `with uow:`"):
        _ = uow.session


def test_unit_of_work_can_be_reused_sequentially(uow_factory: UnitOfWorkFactory) -> None:
    uow = uow_factory()
    for name in ("a", "b"):
        with uow:
            uow.session.add(Site(name=name, token_hash="h"))
            uow.commit()

    with uow_factory() as check:
        assert check.session.scalar(select(func.count()).select_from(Site)) == 2


def test_committed_rows_stay_readable_after_the_block(uow_factory: UnitOfWorkFactory) -> None:
    with uow_factory() as uow:
        site = Site(name="hospital-a", token_hash="h")
        uow.session.add(site)
        uow.commit()

    assert site.id is not None and site.name == "hospital-a"  # expire_on_commit=False


def test_constraint_violation_rolls_back_the_whole_unit(uow_factory: UnitOfWorkFactory) -> None:
    with uow_factory() as uow:
        uow.session.add(Site(name="dup", token_hash="h"))
        uow.commit()

    with pytest.raises(Exception, match="(?i)unique"), uow_factory() as uow:
        uow.session.add(Site(name="other", token_hash="h"))
        uow.session.add(Site(name="dup", token_hash="h"))
        uow.commit()

    assert _site_names(uow_factory) == ["dup"]


def _durability(uow: object) -> str:
    """The database's commit-durability setting inside this unit of work's transaction."""
    session = uow.session  # type: ignore[attr-defined]
    if session.get_bind().dialect.name == "sqlite":
        return {0: "off", 1: "normal", 2: "full", 3: "extra"}[
            session.execute(text("PRAGMA synchronous")).scalar()
        ]
    return str(session.execute(text("SHOW synchronous_commit")).scalar())


def test_a_relaxed_unit_of_work_commits_without_waiting_for_the_disk_and_only_it(
    uow_factory: UnitOfWorkFactory,
) -> None:
    # Execute: a relaxed commit between two ordinary ones, on the same pooled connection(s)
    with uow_factory() as uow:
        before = _durability(uow)
    with uow_factory.relaxed() as uow:
        relaxed = _durability(uow)
        uow.session.add(Site(name="leased", token_hash="h"))
        uow.commit()
    with uow_factory() as uow:
        after = _durability(uow)

    # Assert: only the relaxed one skips the sync; its commit is kept like any other
    assert (before, relaxed, after) in {("full", "normal", "full"), ("on", "off", "on")}
    assert _site_names(uow_factory) == ["leased"]

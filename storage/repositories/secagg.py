"""Secure aggregation's protocol state of a round: its row, its sites' keys, the relayed share boxes."""

from __future__ import annotations

from abc import ABC, abstractmethod

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import SecAggRound, SecAggShare, SecAggSite


class SecAggRepository(ABC):
    @abstractmethod
    def add(self, row: SecAggRound | SecAggSite | SecAggShare) -> None: ...

    @abstractmethod
    def round(self, round_id: str) -> SecAggRound | None:
        """The round's protocol row; None: the round does not use secure aggregation."""

    @abstractmethod
    def sites(self, round_id: str) -> list[SecAggSite]:
        """The round's selected sites, by index."""

    @abstractmethod
    def shares(self, round_id: str, *, holder: int | None = None) -> list[SecAggShare]:
        """The round's share boxes (those addressed to `holder`), by owner then holder."""


class SqlSecAggRepository(SecAggRepository):
    def __init__(self, session: Session) -> None:
        self._session = session

    def add(self, row: SecAggRound | SecAggSite | SecAggShare) -> None:
        self._session.add(row)

    def round(self, round_id: str) -> SecAggRound | None:
        return self._session.get(SecAggRound, round_id)

    def sites(self, round_id: str) -> list[SecAggSite]:
        query = select(SecAggSite).where(SecAggSite.round_id == round_id).order_by(SecAggSite.site_index)
        return list(self._session.scalars(query))

    def shares(self, round_id: str, *, holder: int | None = None) -> list[SecAggShare]:
        query = select(SecAggShare).where(SecAggShare.round_id == round_id)
        if holder is not None:
            query = query.where(SecAggShare.holder == holder)
        return list(self._session.scalars(query.order_by(SecAggShare.owner, SecAggShare.holder)))

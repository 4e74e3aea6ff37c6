"""The coordinator's memoised epsilon (coordinator/privacy_budget.py) equals the accountant's."""

from __future__ import annotations

import pytest

from coordinator.privacy_budget import epsilon_of
from fedtune.privacy_accounting import PrivacyLedger


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_memoised_epsilon_matches_the_ledger(accountant: str) -> None:
    ledger = PrivacyLedger(delta=1e-5, accountant=accountant)  # type: ignore[arg-type]
    assert epsilon_of(ledger) == 0.0
    ledger.record(1.1, 0.1, 20)
    ledger.record(2.0, 1.0, 1)
    assert epsilon_of(ledger) == pytest.approx(ledger.epsilon())
    assert epsilon_of(ledger, (1.1, 0.1, 5)) == pytest.approx(ledger.epsilon_after(1.1, 0.1, 5))
    ledger.record(1.1, 0.1, 1)  # the content changed: a new figure, not the memo of the old one
    assert epsilon_of(ledger) == pytest.approx(ledger.epsilon()) and epsilon_of(ledger) > 0

"""Each site's epsilon over a run of bench/results/privacy-quality (record-level DP), composed from the
dp_* figures the sites reported per round with the project's accountant (fedtune/privacy_accounting.py):
    python bench/results/privacy-quality/epsilon.py dp-eps8 dp-eps1"""

import json
import logging
import sys
from pathlib import Path

from fedtune.privacy_accounting import PrivacyLedger

logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting warns about RDP orders it drops
HERE = Path(__file__).resolve().parent
for run in sys.argv[1:]:
    rounds = json.loads((HERE / run / "quality.json").read_text())["methods"]["lora"]["federated"][
        "fedprox:mu=0.01"
    ]["rounds"][1:]
    eps = {}
    for site in rounds[0]["site_metrics"]:
        ledger = PrivacyLedger(delta=1e-5, accountant="rdp")
        for rnd in rounds:
            m = rnd["site_metrics"][site]
            ledger.record(m["dp_noise_multiplier"], m["dp_sample_rate"], int(m["dp_steps"]))
        eps[site] = round(ledger.epsilon(), 2)
    print(f"{run}: largest-site epsilon {max(eps.values())} at delta 1e-5; per site {eps}")

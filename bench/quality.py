"""Quality benchmark with the issue's defaults: MiniLM + BBC News, 8 sites, Dirichlet alpha 0.1.

    python bench/quality.py [any `fedtune bench quality` option, e.g. --quick or --rounds 5]

Configurations: centralized, local-only, FedAvg, FedProx, FedYogi, fedavg_adaptive, and FedAvg /
FedProx after a fedncm class-mean head round (and once after a 2-round global stage), each with
LoRA and with prompt tuning (20 virtual tokens); fixed seeds. Same code as `fedtune bench quality`;
writes bench/results/quality/{quality.json,quality.md,quality.png}.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# `python bench/quality.py` puts bench/ first on the path, where the modules of the bench package
# (cli, config, report ...) would shadow top-level ones: import them as `bench.*` from the root.
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

from bench.cli import quality_command  # noqa: E402

DEFAULTS = [
    "--sites",
    "8",
    "--alpha",
    "0.1",
    "--seed",
    "0",
    "--configs",
    "centralized,local-only,fedavg,fedprox,fedyogi,fedavg_adaptive,"
    "ncm+fedavg,ncm+fedprox:mu=0.01,global2+ncm+fedavg",
    "--methods",
    "lora,prompt_tuning",
    "--out",
    str(ROOT / "bench" / "results" / "quality"),
]

if __name__ == "__main__":
    quality_command.main(args=DEFAULTS + sys.argv[1:], prog_name="bench/quality.py")

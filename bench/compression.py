"""Upload compression (issue 13, decision 40): bytes per update, encode / decode speed and error.

    python bench/compression.py [--repeat 5] [--large-mib 32] [--out bench/results/compression.json]

The update has the layout of a MiniLM (all-MiniLM-L6-v2) LoRA r=8 adapter on query/key/value/dense
plus the 5-class head, as the BBC News benchmark trains it (built with peft from the packaged model;
the values are a synthetic delta: Gaussian, per-tensor scales spread over two decades, like trained
LoRA deltas). For each encoding:

- bytes: what the site uploads (the encoded tensors' bytes; the stream adds ~30 bytes per chunk);
- encode: the site's work (delta, error-feedback residual, encode), ms;
- decode: the coordinator's streaming decode of the spooled file into the model's layout
  (``fedtune.compression.decode``, reads + writes files), ms, and MB/s of fp32 output;
- error: ||decoded delta - delta|| / ||delta|| (top-k: what the round misses before error feedback).

Then one large synthetic update (``--large-mib`` of fp32) decoded as int8 top-k 10 %, with
tracemalloc's peak during the decode: the decode's memory is O(chunk), not O(update).
The machine is shared: timings are indicative (load average recorded before and after).
Writes JSON and a Markdown table next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedtune.compression.codec import encode_update  # noqa: E402
from fedtune.compression.decode import decode_update  # noqa: E402
from fedtune.compression.encoding import UpdateEncoding  # noqa: E402
from fedtune.spec import TransportSpec  # noqa: E402
from fedtune.tensorstream.safetensors_file import read_arrays_float32, write_safetensors  # noqa: E402

ENCODINGS: list[tuple[str, dict[str, Any]]] = [
    ("fp32 (today)", {}),
    ("bf16", {"update_encoding": "bf16"}),
    ("int8 per tensor", {"update_encoding": "int8", "int8_block_size": 0}),
    ("int8 block 256", {"update_encoding": "int8", "int8_block_size": 256}),
    ("int8 block 64", {"update_encoding": "int8", "int8_block_size": 64}),
    ("top-k 10 % fp32", {"topk_fraction": 0.1}),
    ("top-k 10 % bf16", {"update_encoding": "bf16", "topk_fraction": 0.1}),
    ("top-k 10 % int8", {"update_encoding": "int8", "int8_block_size": 256, "topk_fraction": 0.1}),
    ("top-k 1 % fp32", {"topk_fraction": 0.01}),
]


def minilm_lora_layout() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the trainable tensors of the benchmark's MiniLM LoRA adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from bench.config import PEFT_BY_METHOD
    from demo.assets import minilm_model_dir

    lora = PEFT_BY_METHOD["lora"]
    model = AutoModelForSequenceClassification.from_pretrained(str(minilm_model_dir()), num_labels=5)
    config = LoraConfig(
        r=lora["r"],
        lora_alpha=lora["alpha"],
        target_modules=lora["target_modules"],
        modules_to_save=["classifier"],
        task_type="SEQ_CLS",
    )
    peft_model = get_peft_model(model, config)
    return {n: tuple(p.shape) for n, p in peft_model.named_parameters() if p.requires_grad}


def synthetic(
    layout: Mapping[str, tuple[int, ...]], seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    base = {n: (rng.standard_normal(s) * 0.05).astype(np.float32) for n, s in layout.items()}
    delta = {
        n: (rng.standard_normal(s) * 10 ** rng.uniform(-4, -2)).astype(np.float32) for n, s in layout.items()
    }
    return base, delta


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


def measure(
    name: str,
    transport: TransportSpec,
    base: dict[str, np.ndarray],
    delta: dict[str, np.ndarray],
    work: Path,
    repeat: int,
) -> dict[str, Any]:
    fp32_bytes = sum(a.nbytes for a in delta.values())
    norm = float(np.sqrt(sum(float(np.square(d, dtype=np.float64).sum()) for d in delta.values())))
    base_path = work / "base.safetensors"
    model = write_safetensors(base_path, base)
    row: dict[str, Any] = {"encoding": name, "transport": transport.model_dump(exclude_defaults=True)}
    if transport.is_plain:
        return {**row, "bytes": fp32_bytes, "ratio": 1.0, "relative_error": 0.0}
    encoding = UpdateEncoding(
        transport.update_encoding,
        transport.int8_block_size if transport.update_encoding == "int8" else 0,
        transport.topk_fraction is not None,
    )
    residual = {n: np.zeros_like(d) for n, d in delta.items()}
    encode_s, decode_s = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        trained = {n: base[n] + delta[n] for n in base}  # what the site holds after training
        target = {n: trained[n] - base[n] + residual[n] for n in base}
        encoded = encode_update(target, encoding, transport.topk_fraction)
        new_residual = {n: target[n] - encoded.decoded[n] for n in base}
        encode_s.append(time.perf_counter() - start)
        path = work / "update.safetensors"
        write_safetensors(path, encoded.arrays, encoded.dtypes)
        start = time.perf_counter()
        decode_update(path, encoding, model, base_path, path, max_abs_value=1e9)
        decode_s.append(time.perf_counter() - start)
    sent = sum(a.nbytes for a in encoded.arrays.values())
    rebuilt = read_arrays_float32(path)
    error = float(
        np.sqrt(sum(float(np.square(rebuilt[n] - base[n] - delta[n], dtype=np.float64).sum()) for n in base))
    )
    del new_residual
    return {
        **row,
        "bytes": sent,
        "ratio": round(fp32_bytes / sent, 2),
        "encode_ms": _ms(encode_s),
        "decode_ms": _ms(decode_s),
        "decode_mb_per_s": round(fp32_bytes / 1e6 / statistics.median(decode_s), 1),
        "relative_error": float(f"{error / norm:.3g}"),
    }


def large_decode(mib: int, work: Path) -> dict[str, Any]:
    """Decode one large int8 top-k 10 % update; tracemalloc's peak shows the O(chunk) memory."""
    numel = mib * (1 << 20) // 4
    layout = {f"layer.{i}.weight": (numel // 8,) for i in range(8)}
    base, delta = synthetic(layout, seed=1)
    encoding = UpdateEncoding("int8", 256, True)
    encoded = encode_update(delta, encoding, 0.1)
    base_path, path = work / "large-base.safetensors", work / "large-update.safetensors"
    model = write_safetensors(base_path, base)
    write_safetensors(path, encoded.arrays, encoded.dtypes)
    del base, delta, encoded
    tracemalloc.start()
    start = time.perf_counter()
    decode_update(path, encoding, model, base_path, path)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "update_fp32_mib": mib,
        "encoding": encoding.describe(),
        "decode_seconds": round(seconds, 2),
        "decode_peak_traced_mib": round(peak / (1 << 20), 1),
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Upload compression (bench/compression.py)",
        "",
        f"Update: MiniLM LoRA r=8 layout, {result['tensors']} tensors, {result['parameters']:,} parameters, "
        f"{result['fp32_bytes']:,} bytes in fp32 (synthetic delta values). {result['when']}, "
        f"{result['machine']}; load average before {result['load_before']}, after {result['load_after']} "
        "(a shared machine: timings are indicative).",
        "",
        "| encoding | bytes / update | × smaller | site encode ms | coordinator decode ms | decode MB/s "
        "| rel. error |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["encodings"]:
        lines.append(
            f"| {r['encoding']} | {r['bytes']:,} | {r['ratio']} | {r.get('encode_ms', '—')} | "
            f"{r.get('decode_ms', '—')} | {r.get('decode_mb_per_s', '—')} | {r['relative_error']} |"
        )
    big = result["large_decode"]
    lines += [
        "",
        f"Large update: {big['update_fp32_mib']} MiB of fp32 sent as {big['encoding']}, decoded in "
        f"{big['decode_seconds']} s with a traced peak of {big['decode_peak_traced_mib']} MiB "
        "(memory O(chunk), not O(update)).",
        "",
        "rel. error = ‖decoded − delta‖ / ‖delta‖ of one update; for top-k that is the part left to error "
        "feedback (sent in later rounds), not lost.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--large-mib", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "compression.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    layout = minilm_lora_layout()
    base, delta = synthetic(layout)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = [measure(n, TransportSpec(**t), base, delta, work, args.repeat) for n, t in ENCODINGS]
        big = large_decode(args.large_mib, work)
    result = {
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "tensors": len(layout),
        "parameters": sum(int(np.prod(s)) for s in layout.values()),
        "fp32_bytes": sum(a.nbytes for a in delta.values()),
        "repeat": args.repeat,
        "encodings": rows,
        "large_decode": big,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()

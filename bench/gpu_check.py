"""The GPU check: a ~1B Llama trained through the worker's own code on one CUDA GPU, in under 10 minutes.

    bench/gpu_check.sh                       # or: python -m bench.gpu_check [--out-dir bench/results]
    python -m bench.gpu_check --cpu-smoke --out-dir /tmp/x   # the same code path, tiny, on a CPU

1. Builds a Llama-architecture model from its config (TinyLlama-1.1B's shape, random weights, no hub)
   and a word-level tokenizer into a work folder, as a site's `--model-root` holds a model.
2. For bf16 LoRA and 4-bit NF4 QLoRA (bitsandbytes), each without and with gradient checkpointing,
   runs the worker's train task (`worker.tasks.run_train`, the daemon's `ModelFactory`): a warm-up task,
   then a measured one on the kept model; reports tokens/s (every sequence is `seq_len` tokens) and the
   GPU's peak allocated memory of the measured task (the task's own `gpu_peak_memory_mb`).
3. Runs one federated round through the real coordinator with two `fedtune worker run --device cuda`
   processes on the same GPU (bf16 LoRA, bench/gpu_round.py).
4. Writes gpu-check.json and gpu-check.md into --out-dir.

Without CUDA it stops at once with exit code 2 and says why (and how to run the CPU smoke instead);
without bitsandbytes likewise. `--cpu-smoke` runs every step on a tiny config on the CPU (QLoRA rows
are recorded as skipped: bitsandbytes' k-bit kernels need CUDA), for the test suite.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root first, not bench/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

MODEL_NAME = "llama-1b-random"
# TinyLlama-1.1B's shape: 1.10 B parameters.
LLAMA_1B: dict[str, Any] = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 22,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
}
LLAMA_TINY: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 600,
    "max_position_embeddings": 256,
}
WORDS = 500  # the tokenizer's words (w0 ... w499); ids past them exist in the model, unused


@dataclass(frozen=True)
class Variant:
    name: str
    quantization: str  # none | nf4
    gradient_checkpointing: bool


VARIANTS = [
    Variant("bf16 LoRA", "none", False),
    Variant("bf16 LoRA + checkpointing", "none", True),
    Variant("nf4 QLoRA", "nf4", False),
    Variant("nf4 QLoRA + checkpointing", "nf4", True),
]


@dataclass(frozen=True)
class Profile:
    device: str  # cuda | cpu
    model_config: dict[str, Any]
    seq_len: int
    batch_size: int
    warmup_steps: int
    steps: int
    round_steps: int
    lora_r: int = 16
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


GPU = Profile("cuda", LLAMA_1B, seq_len=512, batch_size=4, warmup_steps=3, steps=12, round_steps=4)
SMOKE = Profile("cpu", LLAMA_TINY, seq_len=32, batch_size=2, warmup_steps=1, steps=2, round_steps=2)


class CheckRefused(Exception):
    """This machine cannot run the check; the message says why and what to do."""


def require_cuda() -> None:
    """Fail fast: CUDA and bitsandbytes are both needed for the real check."""
    import torch

    if not torch.cuda.is_available():
        raise CheckRefused(
            "gpu_check needs a CUDA GPU: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). "
            "Run it on a machine with an NVIDIA GPU and a CUDA build of torch; "
            "`python -m bench.gpu_check --cpu-smoke` runs the same steps on a tiny model on this CPU"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise CheckRefused(
            "gpu_check measures 4-bit QLoRA, which needs bitsandbytes: pip install 'fedtune[gpu]'"
        )


def _tokenizer() -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate(specials + [f"w{i}" for i in range(WORDS)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def build_model(model_root: Path, profile: Profile) -> int:
    """A random Llama of the profile's shape saved (bf16) as `model_root/MODEL_NAME`; its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tokenizer()
    config = LlamaConfig(
        **profile.model_config,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(profile.device):
        model = LlamaForCausalLM(config)
    torch.nn.Module.to(model, torch.bfloat16)  # (transformers types its own .to narrowly)
    folder = model_root / MODEL_NAME
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    count = int(sum(p.numel() for p in model.parameters()))
    del model
    gc.collect()
    return count


def write_text_data(folder: Path, examples: int, words: int, seed: int) -> None:
    """train.jsonl of `examples` texts of `words` random words (each at least seq_len tokens)."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"text": " ".join(f"w{rng.randrange(WORDS)}" for _ in range(words))})
        for _ in range(examples)
    ]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")


def spec_dict(
    profile: Profile, variant: Variant, steps: int, rounds: int = 1, min_sites: int = 1
) -> dict[str, Any]:
    return {
        "name": "gpu-check",
        "base_model": {"name": MODEL_NAME, "dtype": "bf16", "quantization": variant.quantization},
        "task": "causal-lm",
        "data": {"train": "train.jsonl", "eval": None},
        "peft": {"method": "lora", "r": profile.lora_r, "alpha": 2 * profile.lora_r, "dropout": 0.0,
                 "target_modules": profile.targets},
        "training": {"max_steps": steps, "batch_size": profile.batch_size, "max_length": profile.seq_len,
                     "learning_rate": 1e-4, "gradient_checkpointing": variant.gradient_checkpointing},
        "stages": [{"kind": "finetune", "rounds": rounds, "selection": {"min_sites": min_sites}}],
        "seed": 0,
    }  # fmt: skip


def measure(
    profile: Profile, variant: Variant, model_root: Path, data_root: Path, work: Path
) -> dict[str, Any]:
    """One variant: a warm-up train task, then the measured one on the kept model."""
    import torch

    from fedtune.spec import parse_spec
    from fedtune.tensorstream.safetensors_file import write_safetensors
    from worker.model_factory import ModelFactory
    from worker.tasks import run_init, run_train

    if variant.quantization != "none" and profile.device != "cuda":
        return {"variant": variant.name, "skipped": "bitsandbytes' k-bit kernels need CUDA"}
    spec = parse_spec(spec_dict(profile, variant, profile.steps))
    models = ModelFactory()
    global_path = work / f"global-{variant.quantization}.safetensors"
    write_safetensors(global_path, run_init(spec, model_root, models=models, device=profile.device).arrays)
    warm = {"max_steps": profile.warmup_steps}
    run_train(spec, 0, 1, global_path, data_root, model_root, models=models, device=profile.device,
              progress=lambda _: None, training_overrides=warm)  # fmt: skip
    out = run_train(spec, 0, 1, global_path, data_root, model_root, models=models, device=profile.device,
                    progress=lambda _: None)  # fmt: skip
    tokens = profile.steps * profile.batch_size * profile.seq_len
    seconds = out.metrics["train_seconds"]
    row = {
        "variant": variant.name,
        "tokens_per_second": round(tokens / seconds, 1),
        "train_seconds": round(seconds, 3),
        "train_loss": round(out.metrics["train_loss"], 4),
        "gpu_peak_memory_mb": out.metrics.get("gpu_peak_memory_mb"),
        "worker_peak_rss_mb": out.metrics.get("worker_peak_rss_mb"),
    }
    models.clear()
    del models
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def environment() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average": os.getloadavg()[0],
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda
        )
    if importlib.util.find_spec("bitsandbytes") is not None:
        from importlib.metadata import version

        info["bitsandbytes"] = version("bitsandbytes")
    return info


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# GPU check ({report['mode']})",
        "",
        f"Model: random Llama, {report['parameters'] / 1e6:,.1f} M parameters; sequences of "
        f"{report['profile']['seq_len']} tokens, micro-batch {report['profile']['batch_size']}, "
        f"{report['profile']['steps']} measured steps after {report['profile']['warmup_steps']} warm-up; "
        f"LoRA r={report['profile']['lora_r']} on {', '.join(report['profile']['targets'])}.",
        "",
        "| variant | tokens/s | peak GPU MiB | peak RSS MiB | train loss |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report["variants"]:
        if "skipped" in row or "error" in row:
            lines.append(f"| {row['variant']} | {row.get('skipped') or row.get('error')} | | | |")
            continue
        lines.append(
            f"| {row['variant']} | {row['tokens_per_second']:.0f} | {row['gpu_peak_memory_mb'] or '-'} | "
            f"{row['worker_peak_rss_mb']} | {row['train_loss']} |"
        )
    fed = report["federated_round"]
    round_line = (
        f"Federated round (coordinator + 2 workers on one {report['profile']['device']}): "
        f"{fed.get('state')} in {fed.get('seconds')} s, {fed.get('updates_received')} updates"
    )
    if fed.get("error"):
        round_line += f"; {fed['error']}"
    environment = json.dumps(report["environment"])
    lines += ["", round_line, "", f"Environment: {environment}; total {report['seconds']} s.", ""]
    return "\n".join(lines)


def run_check(profile: Profile, out_dir: Path, mode: str) -> dict[str, Any]:
    from bench.gpu_round import federated_round

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = Path(scratch)
        model_root, data_root = work / "models", work / "data"
        print(f"[gpu-check] building the model ({mode})", flush=True)
        parameters = build_model(model_root, profile)
        write_text_data(data_root, examples=64, words=profile.seq_len + 8, seed=0)
        rows = []
        for variant in VARIANTS:
            print(f"[gpu-check] {variant.name}", flush=True)
            try:
                rows.append(measure(profile, variant, model_root, data_root, work))
            except Exception as err:  # one variant failing must not hide the others' figures
                rows.append({"variant": variant.name, "error": f"{type(err).__name__}: {err}"[:500]})
            print(f"[gpu-check]   {rows[-1]}", flush=True)
        print("[gpu-check] one federated round, two workers", flush=True)
        fed = federated_round(
            profile, work, spec_dict(profile, VARIANTS[0], profile.round_steps, min_sites=2)
        )
    report = {
        "mode": mode,
        "parameters": parameters,
        "profile": asdict(profile),
        "variants": rows,
        "federated_round": fed,
        "environment": environment(),
        "seconds": round(time.monotonic() - started, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "gpu-check.md").write_text(markdown(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="tiny model on the CPU: the same steps, no GPU"
    )
    args = parser.parse_args(argv)
    try:
        if not args.cpu_smoke:
            require_cuda()
        report = run_check(
            SMOKE if args.cpu_smoke else GPU, args.out_dir, "cpu-smoke" if args.cpu_smoke else "cuda"
        )
    except CheckRefused as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(report))
    failed = [r for r in report["variants"] if "error" in r] or report["federated_round"].get(
        "state"
    ) != "completed"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

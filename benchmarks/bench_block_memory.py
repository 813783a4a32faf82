"""Peak resident memory of one block's jobs (Hessians, then pruning) against rose's estimate.

Two models are measured: SmolLM2-135M's shape (hidden 576, MLP 1536) and a LLaMA-7B-shaped
block (hidden 4096, MLP 11008), both with random weights and one decoder block, so nothing is
downloaded. Each job runs in its own process through the `rose` command line, as the workflow
runs it, and its peak resident set size is read from the operating system after it exits.

Usage:
    python benchmarks/bench_block_memory.py [--nsamples 8] [--seqlen 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rose import planning

SHAPES = {
    "SmolLM2-135M block": {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "num_key_value_heads": 3},
    "LLaMA-7B block": {"hidden_size": 4096, "intermediate_size": 11008, "num_attention_heads": 32, "num_key_value_heads": 32},
}


def build_model(folder: Path, shape: dict) -> None:
    """Save a one-block LLaMA checkpoint with random weights and a small vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=512, num_hidden_layers=1, max_position_embeddings=4096, tie_word_embeddings=True, **shape)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)


def run_measured(command: list[str]) -> tuple[float, float]:
    """Run ``command`` and return (seconds, peak resident MiB of that process alone)."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(command[:6])} failed: {log.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nsamples", type=int, default=8, help="calibration windows (default 8)")
    parser.add_argument("--seqlen", type=int, default=256, help="tokens per window (default 256)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each job (default 2)")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {args.threads} threads, {args.nsamples} windows of {args.seqlen} tokens, float32 activations")
    header = f"{'model':<20} {'job':<8} {'seconds':>8} {'peak RSS MiB':>13} {'estimate MiB':>13}"
    print(header)
    print("-" * len(header))
    for name, shape in SHAPES.items():
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch) / "model"
            build_model(folder, shape)
            model_bytes = (folder / "model.safetensors").stat().st_size
            model_config = json.loads((folder / "config.json").read_text())
            plan = planning.estimate_block_plan(model_config, model_bytes, args.nsamples, args.seqlen, 4)

            # Random hidden states stand in for block 0's captured inputs.
            from rose.blocks import capture_block_inputs
            from rose.io import save_object, save_tensors

            tokens = torch.randint(0, 512, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
            inputs, kwargs = capture_block_inputs(folder, tokens, "cpu", torch.float32)
            save_tensors(Path(scratch) / "inputs.safetensors", {"hidden_states": inputs})
            save_object(Path(scratch) / "kwargs.pt", kwargs)

            rose = [sys.executable, "-m", "rose", "--threads", str(args.threads)]
            hessian = [
                *rose, "hessian", "--model", str(folder), "--block", "0", "--source-inputs", f"{scratch}/inputs.safetensors",
                "--kwargs", f"{scratch}/kwargs.pt", "--out", f"{scratch}/h.safetensors", "--device", "cpu",
            ]
            prune = [
                *rose, "prune-block", "--model", str(folder), "--block", "0", "--hessians", f"{scratch}/h.safetensors",
                "--method", "rose", "--sparsity", "0.5", "--out-weights", f"{scratch}/w.safetensors",
                "--out-stats", f"{scratch}/w.json", "--device", "cpu",
            ]
            # Each estimate plus about 1 GiB for Python and its libraries.
            estimates = {"hessian": plan.hessian_job, "prune": plan.prune_job}
            for job, command in (("hessian", hessian), ("prune", prune)):
                estimate_mib = (estimates[job] + 1024 * planning.MIB) / planning.MIB
                seconds, peak = run_measured(command)
                print(f"{name:<20} {job:<8} {seconds:>8.1f} {peak:>13.0f} {estimate_mib:>13.0f}")


if __name__ == "__main__":
    main()

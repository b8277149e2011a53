"""Engine benchmark: fedseed vs the MeZO reference pattern, side by side in one run.

    .venv/bin/python bench/engine.py        # CPU: all-MiniLM-L6-v2 and SmolLM2-135M, 16x64
    .venv/bin/python bench/engine.py --models minilm --repeats 5
    python bench/engine.py --device cuda    # GPU: random OPT-1.3B and 3B Llama shape, bf16, 16x256

For each model, with every parameter trainable (full-parameter ZO, as MeZO):
- forward: one forward pass of a fixed random batch (no grad);
- step / 2 fwd: one ZO step over two forwards. fedseed perturbs on the fly
  inside each module's forward (2 perturbed forwards + 1 update pass); MeZO
  perturbs in place with ``torch.manual_seed`` + ``torch.normal`` + ``add_``
  (+eps, -2eps, +eps restore, update: 4 passes);
- pass: one perturbation pass over all trainable tensors (fedseed: fused
  ``apply_entries`` in place; MeZO: ``normal`` + ``add_``);
- replay/entry: applying K (seed, coef) entries, per entry (fedseed: one
  multi-entry pass; MeZO: one pass per entry);
- peak memory over inference: peak RSS after loading (CPU, each mode in a
  fresh process, VmHWM reset through /proc/self/clear_refs) or
  ``max_memory_allocated`` (CUDA), minus inference's; compare it with the
  largest trainable tensor.

Times are medians of ``--repeats`` runs after one warm-up. Prints a table and
writes JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedseed import perturb
from fedseed.zo import TrainableSet, ZOEngine

CPU_MODELS = ("minilm", "smollm2")
GPU_MODELS = ("opt-1.3b", "llama-3b")


@dataclass
class Row:
    model: str
    device: str
    params_m: float
    forward_s: float
    ours_step_s: float
    mezo_step_s: float
    ours_pass_s: float
    mezo_pass_s: float
    ours_replay_entry_s: float
    mezo_replay_entry_s: float
    replay_entries: int
    ours_peak_over_inference_mb: float | None = None
    mezo_peak_over_inference_mb: float | None = None
    largest_tensor_mb: float = 0.0

    @property
    def ours_ratio(self) -> float:
        return self.ours_step_s / (2 * self.forward_s)

    @property
    def mezo_ratio(self) -> float:
        return self.mezo_step_s / (2 * self.forward_s)


def build(name: str, device: torch.device) -> tuple[nn.Module, int, int]:
    """(model, vocab size, sequence length) with every parameter trainable."""
    if name == "minilm":
        from fedseed import models

        model, _ = models.load_sequence_classifier(2)
        return model.to(device), model.config.vocab_size, 64
    if name == "smollm2":
        from fedseed import models

        model, _ = models.load_causal_lm()
        return model.to(device), model.config.vocab_size, 64
    from transformers import AutoModelForCausalLM, LlamaConfig, OPTConfig

    if name == "opt-1.3b":
        config: Any = OPTConfig(
            hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32,
            word_embed_proj_dim=2048, vocab_size=50272, max_position_embeddings=2048,
        )  # fmt: skip
    elif name == "llama-3b":
        config = LlamaConfig(
            hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
            num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True,
        )  # fmt: skip
    else:
        raise SystemExit(f"unknown model {name}")
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)  # random init: speed only
    return model.eval(), config.vocab_size, 256


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    fn()  # warm-up (numba/triton compile, allocator)
    samples = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


class MezoReference:
    """MeZO's pattern (princeton-nlp/MeZO, large_models/trainer.py): global RNG, in place."""

    def __init__(self, model: nn.Module, eps: float = 1e-3) -> None:
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.eps = eps

    @torch.no_grad()
    def perturb(self, seed: int, scale: float) -> None:
        torch.manual_seed(seed)
        for p in self.params:
            z = torch.normal(0, 1, size=p.shape, device=p.device, dtype=p.dtype)
            p.add_(z, alpha=scale)

    @torch.no_grad()
    def step(self, seed: int, loss: Callable[[], torch.Tensor], lr: float) -> float:
        self.perturb(seed, self.eps)
        plus = float(loss())
        self.perturb(seed, -2 * self.eps)
        minus = float(loss())
        self.perturb(seed, self.eps)
        g = (plus - minus) / (2 * self.eps)
        self.perturb(seed, -lr * g)
        return g


def measure(name: str, device: torch.device, batch: int, repeats: int, entries: int) -> Row:
    model, vocab, seq = build(name, device)
    seq = seq if device.type == "cuda" else 64
    trainable = TrainableSet.from_model(model)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=generator).to(device)

    def loss() -> torch.Tensor:
        with torch.no_grad():
            out = model(input_ids=ids)
            return out.logits.float().mean()

    engine = ZOEngine(model, trainable, eps=1e-3)
    mezo = MezoReference(model)
    lr = 1e-9  # tiny: the model barely moves across repeats; speed does not depend on it
    forward_s = timed(loss, device, repeats)
    seeds = iter(range(1, 10_000))
    ours_step_s = timed(lambda: engine.step(next(seeds), loss, lr), device, repeats)
    mezo_step_s = timed(lambda: mezo.step(next(seeds), loss, lr), device, repeats)

    def ours_pass() -> None:
        with torch.no_grad():
            for t in trainable.tensors:
                perturb.apply_entries(t.param.data, t.param.data, t.tensor_id, [next(seeds)], [1e-9])

    ours_pass_s = timed(ours_pass, device, repeats)
    mezo_pass_s = timed(lambda: mezo.perturb(next(seeds), 1e-9), device, repeats)
    replay_seeds = list(range(100, 100 + entries))
    replay_coefs = [1e-9] * entries
    ours_replay_s = timed(lambda: engine.apply(replay_seeds, replay_coefs), device, max(1, repeats // 2))
    mezo_replay_s = timed(lambda: [mezo.perturb(s, 1e-9) for s in replay_seeds[:4]], device, 1) / 4
    largest = max(t.param.numel() * t.param.element_size() for t in trainable.tensors)
    return Row(
        model=name, device=str(device), params_m=trainable.numel / 1e6, forward_s=forward_s,
        ours_step_s=ours_step_s, mezo_step_s=mezo_step_s, ours_pass_s=ours_pass_s,
        mezo_pass_s=mezo_pass_s, ours_replay_entry_s=ours_replay_s / entries,
        mezo_replay_entry_s=mezo_replay_s, replay_entries=entries, largest_tensor_mb=largest / 2**20,
    )  # fmt: skip


def memory_probe(name: str, mode: str, batch: int) -> float:
    """Peak memory (MB) of one mode in this process: 'load', 'inference', 'ours' or 'mezo'."""
    device = torch.device("cuda" if name in GPU_MODELS else "cpu")
    model, vocab, seq = build(name, device)
    seq = seq if device.type == "cuda" else 64
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0)).to(device)

    def loss() -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=ids).logits.float().mean()

    # Every mode loads the same code (numba kernels warmed on a tiny tensor), so
    # differences are the algorithm's, not the libraries' footprints.
    tiny = torch.zeros(256, device=device)
    perturb.apply_entries(tiny, tiny, 1, [1], [0.0])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) after loading
    if mode == "inference":
        loss()
    elif mode == "ours":
        ZOEngine(model, TrainableSet.from_model(model)).step(1, loss, 1e-9)
    elif mode == "mezo":
        MezoReference(model).step(1, loss, 1e-9)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    (line,) = [x for x in status.splitlines() if x.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024  # kB -> MB


def peak_memory(row: Row, batch: int) -> None:
    """Each mode in a fresh process, so one peak never hides another."""
    peaks = {}
    for mode in ("inference", "ours", "mezo"):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-probe", row.model, mode, "--batch", str(batch)],
            check=True, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"},
        )  # fmt: skip
        peaks[mode] = float(out.stdout.strip().splitlines()[-1])
    row.ours_peak_over_inference_mb = peaks["ours"] - peaks["inference"]
    row.mezo_peak_over_inference_mb = peaks["mezo"] - peaks["inference"]


def print_table(rows: list[Row]) -> None:
    print(
        "\n| model | device | params (M) | forward | step/2fwd ours | step/2fwd MeZO | pass ours "
        "| pass MeZO | replay/entry ours | replay/entry MeZO | peak-inference ours | peak-inference MeZO "
        "| largest tensor |"
    )
    print("|" + "---|" * 13)
    for r in rows:
        mem = (
            f"{r.ours_peak_over_inference_mb:.0f} MB | {r.mezo_peak_over_inference_mb:.0f} MB"
            if r.ours_peak_over_inference_mb is not None
            else "- | -"
        )
        print(
            f"| {r.model} | {r.device} | {r.params_m:.1f} | {r.forward_s * 1e3:.1f} ms | {r.ours_ratio:.2f} "
            f"| {r.mezo_ratio:.2f} | {r.ours_pass_s * 1e3:.1f} ms | {r.mezo_pass_s * 1e3:.1f} ms "
            f"| {r.ours_replay_entry_s * 1e3:.2f} ms (K={r.replay_entries}) "
            f"| {r.mezo_replay_entry_s * 1e3:.1f} ms "
            f"| {mem} | {r.largest_tensor_mb:.0f} MB |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", nargs="*", help="default: minilm smollm2 (cpu), opt-1.3b llama-3b (cuda)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--entries", type=int, default=16, help="K for the multi-entry replay")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--memory-probe", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        print(memory_probe(args.memory_probe[0], args.memory_probe[1], args.batch))
        return
    device = torch.device(args.device)
    names = args.models or (GPU_MODELS if device.type == "cuda" else CPU_MODELS)
    rows = []
    for name in names:
        print(f"measuring {name} on {device} ...", file=sys.stderr, flush=True)
        row = measure(name, device, args.batch, args.repeats, args.entries)
        if not args.no_memory:
            peak_memory(row, args.batch)
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print_table(rows)
    if args.json:
        payload = [{**asdict(r), "ours_ratio": r.ours_ratio, "mezo_ratio": r.mezo_ratio} for r in rows]
        args.json.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()

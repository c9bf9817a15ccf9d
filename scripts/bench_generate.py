"""Generation speed with and without the KV cache (gptmini.core.sampling), random weights.

    python scripts/bench_generate.py                       # tiny and 10m shapes, 256 and 512 new tokens
    python scripts/bench_generate.py --shapes tiny --new-tokens 64 --repeats 1 --json /tmp/gen.json

Shapes come from the shipped presets (configs/<shape>.yaml: model.arch and data.vocab_size /
block_size). One sample (batch 1) continues a --prompt-tokens random prompt by exactly N tokens
(stop_at_eot off, temperature 0.8, top-k 50). Past block_size both paths crop as generation does:
uncached feeds the last block_size tokens every step, cached restarts its cache from the last half
context when full. Rounds alternate the order (cached, uncached), (uncached, cached), ... so a
neighbour's load hits both alike; reported: the median over rounds of tokens/s by host CPU time
(the steadier figure on a shared machine) and by wall time, and their ratio cached/uncached.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gptmini.core.model import GPTMini, ModelConfig  # noqa: E402
from gptmini.core.sampling import SampleConfig, generate_ids  # noqa: E402


def shape_config(name: str) -> ModelConfig:
    """The model shape of preset configs/<name>.yaml (data's vocab and context, as the CLI links them)."""
    cfg = yaml.safe_load((REPO / "gptmini" / "configs" / f"{name}.yaml").read_text())
    arch = dict(cfg["model"]["arch"])
    return ModelConfig(vocab_size=cfg["data"]["vocab_size"], block_size=cfg["data"]["block_size"], **arch)


def time_one(model: GPTMini, prompt: torch.Tensor, n: int, kv_cache: bool) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to generate n tokens."""
    cfg = SampleConfig(max_new_tokens=n, stop_at_eot=False, kv_cache=kv_cache, seed=0)
    gen = torch.Generator(device=prompt.device).manual_seed(0)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = generate_ids(model, prompt, cfg, gen)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert out.shape[1] == prompt.shape[1] + n
    return cpu, wall


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["tiny", "10m"], help="preset names (configs/NAME.yaml)")
    p.add_argument("--new-tokens", nargs="+", type=int, default=[256, 512])
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3, help="rounds; each times both paths once")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared box)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    for shape in a.shapes:
        torch.manual_seed(0)
        cfg = shape_config(shape)
        model = GPTMini(cfg).to(a.device).eval()
        prompt = torch.randint(0, cfg.vocab_size, (1, a.prompt_tokens), device=a.device)
        time_one(model, prompt, 8, True)  # warm-up: allocator, kernels
        time_one(model, prompt, 8, False)
        for n in a.new_tokens:
            times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
            for r in range(a.repeats):
                for kv in (True, False) if r % 2 == 0 else (False, True):
                    times[kv].append(time_one(model, prompt, n, kv))
            row = {"shape": shape, "block_size": cfg.block_size, "new_tokens": n, "threads": a.threads,
                   "device": a.device, "repeats": a.repeats}
            for kv, name in ((True, "cached"), (False, "uncached")):
                row[f"{name}_tok_s_cpu"] = n / statistics.median(c for c, _ in times[kv])
                row[f"{name}_tok_s_wall"] = n / statistics.median(w for _, w in times[kv])
            row["speedup_cpu"] = row["cached_tok_s_cpu"] / row["uncached_tok_s_cpu"]
            row["speedup_wall"] = row["cached_tok_s_wall"] / row["uncached_tok_s_wall"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))
    print(f"\n{'shape':6} {'T':>4} {'new':>4} | {'cached tok/s':>12} {'uncached tok/s':>14} {'x':>6}  (CPU time; wall)")
    for r in rows:
        print(
            f"{r['shape']:6} {r['block_size']:4} {r['new_tokens']:4} | {r['cached_tok_s_cpu']:12.1f} "
            f"{r['uncached_tok_s_cpu']:14.1f} {r['speedup_cpu']:6.2f}  "
            f"({r['cached_tok_s_wall']:.1f} vs {r['uncached_tok_s_wall']:.1f}, x{r['speedup_wall']:.2f})"
        )
    return rows


if __name__ == "__main__":
    main()

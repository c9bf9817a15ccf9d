"""Generation speed with and without the KV cache (gptmini.core.sampling), random weights or a checkpoint.

    python scripts/bench_generate.py                       # tiny and 10m shapes, 256 and 512 new tokens
    python scripts/bench_generate.py --shapes tiny --new-tokens 64 --repeats 1 --json /tmp/gen.json
    python scripts/bench_generate.py --device cuda --checkpoint runs/10m/version_0/checkpoints/last.ckpt

The cached path is the device's default decode path (CUDA: the decode step replayed from a CUDA
graph; CPU: the dynamic forward); ``--decode`` adds others to the same alternation (CUDA:
``dynamic``, the eager cached forward, shows what the graph gives).

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

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gptmini.core.startup import collector_paused, freeze_imported  # noqa: E402

with collector_paused():  # ~1 s less CPU per start (gptmini.core.startup)
    import torch

    from gptmini.core.model import GPTMini, ModelConfig
    from gptmini.core.sampling import DECODE_PATHS, SampleConfig, default_decode, generate_ids


def shape_config(name: str) -> ModelConfig:
    """The model shape of preset configs/<name>.yaml (data's vocab and context, as the CLI links them)."""
    cfg = yaml.safe_load((REPO / "gptmini" / "configs" / f"{name}.yaml").read_text())
    arch = dict(cfg["model"]["arch"])
    return ModelConfig(vocab_size=cfg["data"]["vocab_size"], block_size=cfg["data"]["block_size"], **arch)


def time_one(model: GPTMini, prompt: torch.Tensor, n: int, path: str) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to generate n tokens along ``path`` (uncached or a decode path)."""
    kv_cache = path != "uncached"
    cfg = SampleConfig(max_new_tokens=n, stop_at_eot=False, kv_cache=kv_cache, seed=0)
    gen = torch.Generator(device=prompt.device).manual_seed(0)
    if prompt.is_cuda:
        torch.cuda.synchronize()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    out = generate_ids(model, prompt, cfg, gen, decode=path if kv_cache else None)
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
    p.add_argument("--checkpoint", help="time this model (a .ckpt or export folder) instead of --shapes")
    p.add_argument("--decode", nargs="*", default=[], choices=DECODE_PATHS, help="more cached paths to time")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    cached = default_decode(a.device)
    paths = [cached, *(d for d in a.decode if d != cached), "uncached"]
    for shape in [a.checkpoint] if a.checkpoint else a.shapes:
        torch.manual_seed(0)
        if a.checkpoint:
            from gptmini.core.checkpoint import load_model

            model = load_model(a.checkpoint, map_location=a.device)
            cfg, shape = model.cfg, "checkpoint"
        else:
            cfg = shape_config(shape)
            model = GPTMini(cfg).to(a.device).eval()
        prompt = torch.randint(0, cfg.vocab_size, (1, a.prompt_tokens), device=a.device)
        for path in paths:  # warm-up: allocator, kernels, the graph's first capture
            time_one(model, prompt, 8, path)
        for n in a.new_tokens:
            times: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}
            for r in range(a.repeats):
                for path in paths if r % 2 == 0 else paths[::-1]:
                    times[path].append(time_one(model, prompt, n, path))
            row = {"shape": shape, "block_size": cfg.block_size, "new_tokens": n, "threads": a.threads,
                   "device": a.device, "repeats": a.repeats, "cached_path": cached}
            for path in paths:
                name = {cached: "cached", "uncached": "uncached"}.get(path, path)
                row[f"{name}_tok_s_cpu"] = n / statistics.median(c for c, _ in times[path])
                row[f"{name}_tok_s_wall"] = n / statistics.median(w for _, w in times[path])
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
    freeze_imported()
    main()

"""Checkpoint load throughput next to the raw read throughput of the same files, measured in one run.

    python -m bench.load [--dir .cache/bench-model] [--repeat 3]

Generates a >= 1 GB checkpoint in the real format once (MXFP4 experts, bf16 rest), then times, with the files in
the page cache for both: (a) reading every byte of the safetensors files, (b) `load_weights` to bf16 with the
experts decoded (the reference path), (c) with the experts kept packed (the kernel path). Writes bench/results/load.json.
"""

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from engine.weights.checkpoint import load_weights
from engine.weights.tiny_model import TinyModelSpec, make_tiny_model

SPEC = TinyModelSpec(seed=0, layers=4, experts=64, experts_per_token=4, hidden=1024, heads=16, kv_heads=4,
                     head_dim=64, sliding_window=128, max_shard_bytes=512 << 20)
RESULTS = Path(__file__).parent / "results"


def checkpoint_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.safetensors"))


def raw_read_seconds(files: list[Path]) -> float:
    start = time.perf_counter()
    buf = bytearray(64 << 20)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - start


def load_seconds(directory: Path, dequantize: bool) -> tuple[float, int]:
    start = time.perf_counter()
    _, weights = load_weights(directory, torch.bfloat16, dequantize_experts=dequantize)
    seconds = time.perf_counter() - start
    return seconds, sum(t.numel() * t.element_size() for t in weights.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".cache/bench-model"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if not (args.dir / "config.json").is_file():
        print(f"generating the benchmark checkpoint in {args.dir} ...", flush=True)
        make_tiny_model(args.dir, SPEC)
    files = checkpoint_files(args.dir)
    size = sum(p.stat().st_size for p in files)
    raw_read_seconds(files)  # warm the page cache so both measurements read from memory
    raw = statistics.median(raw_read_seconds(files) for _ in range(args.repeat))
    loads = [load_seconds(args.dir, dequantize=True) for _ in range(args.repeat)]
    load = statistics.median(s for s, _ in loads)
    packed = statistics.median(load_seconds(args.dir, dequantize=False)[0] for _ in range(args.repeat))
    result = {
        "benchmark": "checkpoint_load", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, {platform.platform()}",
        "checkpoint_bytes": size, "loaded_bytes": loads[0][1], "files": len(files),
        "raw_read_seconds": raw, "raw_read_gb_per_s": size / raw / 1e9,
        "load_seconds": load, "load_gb_per_s": size / load / 1e9, "load_over_raw": raw / load,
        "load_packed_seconds": packed, "load_packed_gb_per_s": size / packed / 1e9, "load_packed_over_raw": raw / packed,
    }
    print(f"checkpoint {size / 1e9:.2f} GB in {len(files)} files -> {loads[0][1] / 1e9:.2f} GB of bf16 weights")
    print(f"{'':20}{'seconds':>10}{'GB/s':>10}")
    print(f"{'raw read':20}{raw:10.3f}{result['raw_read_gb_per_s']:10.2f}")
    print(f"{'load, experts bf16':20}{load:10.3f}{result['load_gb_per_s']:10.2f}")
    print(f"{'load, experts MXFP4':20}{packed:10.3f}{result['load_packed_gb_per_s']:10.2f}")
    print(f"load / raw throughput: {result['load_over_raw']:.2f}x decoded (reference path), "
          f"{result['load_packed_over_raw']:.2f}x packed (kernel path)")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

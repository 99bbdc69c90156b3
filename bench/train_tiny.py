"""Training the tiny harmony model: how long it takes and what it can do, with the random tiny model as baseline.

    python -m bench.train_tiny [--out .cache/tiny-harmony-bench] [--n 100] [--committed models/tiny-harmony]

Runs `gptoss train-tiny-model`'s training (default spec) into --out, timing wall clock and process CPU time (the
training is single-threaded, so CPU time is what it takes on one idle core even when the machine is shared), and
says whether the bytes equal the committed checkpoint's. Then measures every corpus task on the written checkpoint
through the engine (greedy, `engine.train.evaluation`), next to the random-weight tiny model measured the same way.
Writes bench/results/train_tiny.json.
"""

import argparse
import hashlib
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from engine.train import evaluation
from engine.train.trainer import TrainSpec, train
from engine.weights.tiny_model import make_tiny_model

RESULTS = Path(__file__).parent / "results"


def digest(directory: Path) -> str:
    return hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()


def timed_training(out: Path) -> dict:
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = train(out, TrainSpec())
    return {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu,
            "load_average_before": load_before, "load_average_after": os.getloadavg()[0],
            "final_loss": result.final_loss, "vocab_used": result.vocab_used,
            "checkpoint_bytes": sum(p.stat().st_size for p in out.iterdir())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/tiny-harmony-bench"))
    parser.add_argument("--n", type=int, default=100, help="evaluation cases per task")
    parser.add_argument("--committed", type=Path, default=Path("models/tiny-harmony"))
    args = parser.parse_args()
    training = timed_training(args.out)
    training["equals_committed"] = args.committed.is_dir() and digest(args.out) == digest(args.committed)
    print(f"trained in {training['wall_seconds']:.0f} s wall, {training['cpu_seconds']:.0f} s CPU "
          f"(load average {training['load_average_before']:.1f} -> {training['load_average_after']:.1f}); "
          f"same bytes as {args.committed}: {training['equals_committed']}")
    trained = evaluation.evaluate(args.out, args.n)
    baseline = evaluation.evaluate(make_tiny_model(args.out.with_name(args.out.name + "-random")), args.n)
    print(f"{'task':16}{'trained':>10}{'random':>10}")
    for task, accuracy in trained.items():
        print(f"{task:16}{accuracy:10.2f}{baseline[task]:10.2f}")
    result = {
        "benchmark": "train_tiny", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}, torch {torch.__version__}",
        "spec": json.loads((args.out / "training.json").read_text())["spec"], "training": training,
        "cases_per_task": args.n, "accuracy": trained, "random_model_accuracy": baseline,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_tiny.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

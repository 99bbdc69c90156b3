"""Training the tiny harmony model: how long it takes and what it can do, with the random tiny model as baseline.

    python -m bench.train_tiny [--out .cache/tiny-harmony-bench] [--n 100] [--baseline-n 20]
                               [--committed models/tiny-harmony]

Flow: `engine.train.trainer.train` with the default spec (what `gptoss train-tiny-model` runs) into --out, timing
wall clock and process CPU time and sampling the machine's load average every 10 s (training runs the spec's
`threads`, two by default: wall time is what counts, and the load average says whether the cores were free)
-> whether the bytes equal the
committed checkpoint's -> every corpus task measured on the written checkpoint through the engine (greedy,
`engine.train.evaluation`), next to the random-weight tiny model measured the same way -> the accuracy ratio
against that baseline, written to bench/results/train_tiny.json.
"""

import argparse
import hashlib
import json
import logging
import os
import platform
import threading
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


class LoadSampler:
    """The 1-minute load average, sampled every `period` seconds on a thread until `stop()`."""

    def __init__(self, period: float = 10.0):
        self.samples = [os.getloadavg()[0]]  # load averages, in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._thread.start()

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        s = self.samples
        return {"load_average_mean": round(sum(s) / len(s), 2), "load_average_min": min(s), "load_average_max": max(s)}


def timed_training(out: Path) -> dict:
    sampler = LoadSampler()
    wall, cpu = time.perf_counter(), time.process_time()
    result = train(out, TrainSpec())
    timing = {"wall_seconds": round(time.perf_counter() - wall, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}
    return timing | sampler.stop() | {
        "final_loss": result.final_loss, "vocab_used": result.vocab_used,
        "checkpoint_bytes": sum(p.stat().st_size for p in out.iterdir()), "sha256": digest(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".cache/tiny-harmony-bench"))
    parser.add_argument("--n", type=int, default=100, help="evaluation cases per task, trained model")
    parser.add_argument("--baseline-n", type=int, default=20, help="evaluation cases per task, random model")
    parser.add_argument("--committed", type=Path, default=Path("models/tiny-harmony"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the trainer's progress
    training = timed_training(args.out)
    training["equals_committed"] = args.committed.is_dir() and training["sha256"] == digest(args.committed)
    print(f"trained in {training['wall_seconds']:.0f} s wall, {training['cpu_seconds']:.0f} s CPU (load average "
          f"{training['load_average_mean']:.1f}, {training['load_average_min']:.1f}-{training['load_average_max']:.1f}"
          f"); same bytes as {args.committed}: {training['equals_committed']}")
    trained = evaluation.evaluate(args.out, args.n)
    baseline = evaluation.evaluate(make_tiny_model(args.out.with_name(args.out.name + "-random")), args.baseline_n)
    print(f"{'task':16}{'trained':>10}{'random':>10}")
    for task, accuracy in trained.items():
        print(f"{task:16}{accuracy:10.2f}{baseline[task]:10.2f}")
    mean = sum(trained.values()) / len(trained)
    mean_baseline = sum(baseline.values()) / len(baseline)
    print(f"{'mean':16}{mean:10.2f}{mean_baseline:10.2f}")
    result = {
        "benchmark": "train_tiny", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}, torch {torch.__version__}",
        "spec": json.loads((args.out / "training.json").read_text())["spec"], "training": training,
        "cases_per_task": args.n, "accuracy": trained, "accuracy_mean": round(mean, 3),
        "random_model_cases_per_task": args.baseline_n, "random_model_accuracy": baseline,
        "random_model_accuracy_mean": round(mean_baseline, 3),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "train_tiny.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Training the tiny harmony model on CPU, deterministically: `gptoss train-tiny-model DIR`.

Flow: `corpus.dialogues(seed)` -> `Renderer.render` (a sample of each task checked against harmony and the
server's render_chat) -> sequences of compact ids with targets on the assistant's tokens -> batches of similar
length -> `TrainableModel` (the unembedding tied to the embedding, free to move away only for tokens the corpus
often asks for; attention started as previous-token, induction and copy heads) -> AdamW on its loss (warm-up,
cosine decay; the experts train through MXFP4 for the last part) -> `engine.weights.tiny_model.write_checkpoint`
writes the real checkpoint format.

Bit for bit: same seed, same torch build, same CPU instruction set and `threads` give the same checkpoint bytes
(training pins the thread count and asks torch for deterministic algorithms).
"""

import argparse
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engine.text.tokenizer import Tokenizer
from engine.train import corpus
from engine.train.model import Batch, TrainableModel
from engine.train.renderer import Renderer
from engine.weights.tiny_model import TinyModelSpec, write_checkpoint

log = logging.getLogger(__name__)

# The architecture: gpt-oss's (MoE, sinks, alternating sliding/full attention, YaRN, the real vocabulary) at a size
# that learns the corpus in minutes on 2 CPU cores and stays under 60 MB on disk (the vocabulary dominates).
HARMONY_MODEL = TinyModelSpec(layers=4, experts=4, experts_per_token=2, hidden=64, intermediate=128, heads=4,
                              kv_heads=2, head_dim=32, sliding_window=64)
VERIFY_PER_TASK = 20  # dialogues of each task whose fast rendering is checked against harmony before training


@dataclass(frozen=True)
class Phase:
    until: float  # fraction of the steps at which this phase ends
    mix: dict[str, float] | None = None  # share of each corpus task in this phase (None: corpus.MIX)


@dataclass
class TrainSpec:
    seed: int = 0  # corpus, initialization and batch order
    dialogues: int = 21000  # corpus size (about what `steps` batches hold: each dialogue is seen once)
    steps: int = 2300  # optimizer steps
    batch_tokens: int = 2048  # padded tokens per step
    lr: float = 4e-3  # peak learning rate
    warmup_steps: int = 100
    weight_decay: float = 0.01
    quantize_from: float = 0.7  # fraction of the steps after which the experts train through MXFP4
    threads: int = 2  # torch CPU threads (part of what makes the result bit-reproducible)
    model: TinyModelSpec = field(default_factory=lambda: HARMONY_MODEL)  # the architecture
    tie_embeddings: bool = True  # train the unembedding as the embedding / sqrt(D) (model.TiedUnembedding)
    copy_layers: int = 2  # the last this many layers start with copy heads (model.init_copy_heads)
    induction: bool = True  # layers 0-1 start as previous-token and induction heads (model.init_induction)
    untie_from: int = 128  # a token's unembedding may leave its embedding once it is a target this often (0: all)
    phases: tuple[Phase, ...] = (Phase(1.0),)  # the curriculum: corpus mixes in turn (dialogues split by steps)


@dataclass
class Sequence:
    ids: list[int]  # prompt + target, real ids
    start: int  # index of the first target token


def render_corpus(spec: TrainSpec, tokenizer: Tokenizer, phase: int = 0) -> list[Sequence]:
    """The dialogues of one phase of the curriculum, rendered."""
    renderer = Renderer(tokenizer)
    start = spec.phases[phase - 1].until if phase else 0.0
    n = max(1, round(spec.dialogues * (spec.phases[phase].until - start)))
    dialogues = corpus.dialogues(spec.seed + phase, n, spec.phases[phase].mix)
    checked: dict[str, int] = {}
    for dialogue in dialogues:
        if checked.get(dialogue.task, 0) < VERIFY_PER_TASK:
            renderer.verify(dialogue)
            checked[dialogue.task] = checked.get(dialogue.task, 0) + 1
    rendered = [renderer.render(d) for d in dialogues]
    return [Sequence(r.prompt + r.target, len(r.prompt)) for r in rendered]


def make_batches(seqs: list[Sequence], compact: torch.Tensor, batch_tokens: int, rng: random.Random) -> list[Batch]:
    """Batches of similar-length sequences (sorted within pools of 64 batches), in a shuffled order."""
    order = list(range(len(seqs)))
    rng.shuffle(order)
    pool_size = max(1, 64 * batch_tokens // 256)
    groups: list[list[int]] = []
    for start in range(0, len(order), pool_size):
        current: list[int] = []
        for i in sorted(order[start:start + pool_size], key=lambda i: len(seqs[i].ids)):
            if current and len(seqs[i].ids) * (len(current) + 1) > batch_tokens:
                groups.append(current)
                current = []
            current.append(i)
        groups.append(current)
    rng.shuffle(groups)
    return [to_batch([seqs[i] for i in group], compact) for group in groups]


def to_batch(seqs: list[Sequence], compact: torch.Tensor) -> Batch:
    T = max(len(s.ids) for s in seqs)
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    targets = torch.full((len(seqs), T), -1, dtype=torch.long)
    for row, s in enumerate(seqs):
        c = compact[torch.tensor(s.ids)]
        ids[row, : len(s.ids)] = c
        targets[row, s.start - 1 : len(s.ids) - 1] = c[s.start:]  # position j predicts token j + 1
    return Batch(ids, targets)


def learning_rate(spec: TrainSpec, step: int) -> float:
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class TrainResult:
    directory: Path  # the written checkpoint
    seconds: float  # wall time of the whole command (corpus, training, writing)
    final_loss: float  # mean loss over the last 50 steps
    vocab_used: int  # ids with trained embedding/unembedding rows


def train(directory: str | Path, spec: TrainSpec | None = None) -> TrainResult:
    spec = spec or TrainSpec()
    started = time.perf_counter()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(spec.threads)
    torch.use_deterministic_algorithms(True)
    try:
        model, losses = _train(spec)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    path = write_checkpoint(directory, model.config, model.checkpoint_weights())
    record = {"spec": asdict(spec), "vocab_used": len(model.vocab_ids), "final_loss": round(losses, 4)}
    (Path(directory) / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return TrainResult(path, time.perf_counter() - started, losses, len(model.vocab_ids))


def _train(spec: TrainSpec) -> tuple[TrainableModel, float]:
    tokenizer = Tokenizer.load()
    phases = [render_corpus(spec, tokenizer, i) for i in range(len(spec.phases))]
    vocab = sorted({t for seqs in phases for s in seqs for t in s.ids})
    compact = torch.full((spec.model.vocab,), -1, dtype=torch.long)
    compact[torch.tensor(vocab)] = torch.arange(len(vocab))
    targets = torch.zeros(len(vocab), dtype=torch.long)
    for seq in (s for seqs in phases for s in seqs):
        targets += torch.bincount(compact[torch.tensor(seq.ids[seq.start:])], minlength=len(vocab))
    model = TrainableModel(spec.model.config(), vocab, spec.seed, spec.tie_embeddings, spec.copy_layers,
                           spec.induction, targets >= spec.untie_from)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=spec.weight_decay)
    rng = random.Random(spec.seed)
    batches: list[Batch] = []
    recent: list[float] = []
    phase = 0
    for step in range(spec.steps):
        if step >= spec.phases[phase].until * spec.steps:
            phase, batches = phase + 1, []
        if not batches:
            batches = make_batches(phases[phase], compact, spec.batch_tokens, rng)
        if step == int(spec.quantize_from * spec.steps):
            model.quantize_experts()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(spec, step)
        loss = model.loss(batches.pop())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        recent = (recent + [loss.item()])[-50:]
        if step % 50 == 0 or step == spec.steps - 1:
            log.info("step %d/%d loss %.4f", step, spec.steps, sum(recent) / len(recent))
    return model, sum(recent) / len(recent)


def add_command(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train-tiny-model", help="train the tiny harmony model on CPU and write it")
    parser.add_argument("dir", help="output directory")
    defaults = TrainSpec()
    for flag, name in (("--seed", "seed"), ("--steps", "steps"), ("--dialogues", "dialogues"),
                       ("--batch-tokens", "batch_tokens"), ("--threads", "threads")):
        parser.add_argument(flag, dest=name, type=int, default=getattr(defaults, name),
                            help=f"default {getattr(defaults, name)}")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"default {defaults.lr}")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    spec = TrainSpec(seed=args.seed, steps=args.steps, dialogues=args.dialogues, batch_tokens=args.batch_tokens,
                     threads=args.threads, lr=args.lr)
    result = train(args.dir, spec)
    print(f"wrote {result.directory} in {result.seconds:.0f} s (final loss {result.final_loss:.4f}, "
          f"{result.vocab_used} ids in use)")
    return 0

"""The `gptoss` command. Each package adds its subcommands through the `gptoss.commands` entry point group,
so the engine knows nothing of the cluster or the load tester that extend the same command."""

import argparse
import json
import sys
from importlib.metadata import entry_points

from engine.config import DTYPES, FIELD_PARTS, FIELDS, ModelConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gptoss", description="gpt-oss serving: engine, cluster, load tests")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in sorted(entry_points(group="gptoss.commands"), key=lambda e: e.name):
        entry.load()(commands)
    args = parser.parse_args(argv)
    return args.run(args) or 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The engine's own subcommands: make-tiny-model, train-tiny-model and generate."""
    from engine.train import trainer
    from engine.weights import tiny_model

    tiny_model.add_command(commands)
    trainer.add_command(commands)
    generate = commands.add_parser("generate", help="generate from a prompt with a local checkpoint")
    generate.add_argument("--model", required=True, help="checkpoint directory (HF or original/ layout)")
    prompt = generate.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text")
    prompt.add_argument("--prompt-ids", help="comma-separated token ids, e.g. 1,2,3")
    generate.add_argument("--max-tokens", type=int, default=32)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=None)
    generate.add_argument("--logprobs", type=int, default=None, help="return the top-N logprobs per token")
    defaults = ModelConfig()
    generate.add_argument("--dtype", default=defaults.dtype, choices=DTYPES)
    generate.add_argument("--device", default=defaults.device, help="cpu or cuda (default: cuda when available)")
    generate.add_argument("--json", action="store_true", help="print one JSON object instead of the text")
    add_engine_args(generate)
    generate.set_defaults(run=_run_generate)


# Engine flags: --flag-name sets the engine.config field flag_name; type, default, choices and help come from there.
# model, dtype and device are generate's own arguments; cuda_graph_batch_sizes stays a Python/YAML setting.
ENGINE_FLAGS = tuple(name for name in FIELD_PARTS
                     if name not in ("model", "dtype", "device", "cuda_graph_batch_sizes"))


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """The engine flags of ENGINE_FLAGS, typed, defaulted and documented as their EngineConfig fields."""
    group = parser.add_argument_group("engine")
    for name in ENGINE_FLAGS:
        declared = FIELDS[name]
        flag, default, meta = "--" + name.replace("_", "-"), declared.default, declared.metadata
        if "bool" in str(declared.type):  # bool | None (async_scheduling): None = the engine chooses
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=meta["doc"])
        else:
            kind = int if "int" in str(declared.type) else float if "float" in str(declared.type) else str
            group.add_argument(flag, type=kind, default=default, choices=meta.get("choices"), help=meta["doc"])


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The engine arguments (LLM / AsyncLLM keyword arguments) the flags of `add_engine_args` set."""
    return {name: getattr(args, name) for name in ENGINE_FLAGS}


def _run_generate(args: argparse.Namespace) -> int:
    from engine import LLM, SamplingParams

    if args.prompt_ids is not None:
        try:
            prompt = {"prompt_token_ids": [int(t) for t in args.prompt_ids.split(",") if t.strip()]}
        except ValueError:
            print(f"--prompt-ids must be comma-separated integers, got {args.prompt_ids!r}", file=sys.stderr)
            return 2
    else:
        prompt = args.prompt
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed,
        logprobs=args.logprobs,
    )
    llm = LLM(model=args.model, dtype=args.dtype, device=args.device, **engine_kwargs(args))
    print(llm.engine.memory.line(), file=sys.stderr)  # the start-up report: weights, KV cache, activations, RSS
    try:
        result = llm.generate([prompt], params)[0]
    finally:
        llm.engine.shutdown()
    out = result.outputs[0]
    if args.json:
        record = {
            "prompt_token_ids": result.prompt_token_ids,
            "token_ids": out.token_ids,
            "text": out.text,
            "finish_reason": out.finish_reason,
        }
        if out.logprobs is not None:
            record["logprobs"] = [{str(k): v for k, v in step.items()} for step in out.logprobs]
        print(json.dumps(record))
    else:
        print(out.text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

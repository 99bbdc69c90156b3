"""Every Triton kernel at every launch the engine makes for gpt-oss, compiled for Hopper (sm_90) and Blackwell
(sm_100) on this CPU-only machine: registers, spills, shared memory, occupancy, and a roofline per launch.

    python -m bench.kernel_resources          (make kernels-aot)  -> bench/results/kernel_resources.{json,md}

Flow: `cases()` (model x TP shards x step shape x dtype) -> `layer_launches(case, gpu)`: one layer's ops called
through their own plans (engine.kernels.*.plan_*, the code each op runs before it launches) on meta tensors of the
rank's shapes (engine.parallel.tp's sharding rules) -> each distinct launch compiled once per target
(`compile_launch`: triton.compile with the runtime's own argument specialization; ptxas's log and cuobjdump read
the cubin; results cached under .cache/kernel_resources/) -> `problems()` (spills, shared memory over the limit,
a failed compile) -> tables. The roofline (bench.roofline) gives each launch's bytes, FLOPs and predicted time on
H100 / H200 / B200.
"""

import argparse
import contextlib
import datetime
import hashlib
import io
import json
import re
import subprocess
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from bench import roofline
from bench.roofline import GPU, GPUS, Load, PlannedLaunch
from engine.model.config import FULL, SLIDING, GptOssConfig
from engine.kernels import attention, moe, norm, rope, router
from engine.kernels.launch import Launch
from engine.parallel import tp as rules
from engine.parallel.tp import RankLayout

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "bench" / "results"
CACHE_DIR = ROOT / ".cache" / "kernel_resources"
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
DECODE_CONTEXT = 4096  # tokens already cached per sequence in the decode cases
BLOCK_SIZE = 16  # KV-cache tokens per block (the engine's default)


def _model(layers: int, experts: int) -> GptOssConfig:
    """gpt-oss shapes (model card, config.json): everything but the layer and expert counts is shared."""
    return GptOssConfig(num_hidden_layers=layers, num_experts=experts, experts_per_token=4, hidden_size=2880,
                       intermediate_size=2880, num_attention_heads=64, num_key_value_heads=8, head_dim=64,
                       vocab_size=201088, sliding_window=128,
                       layer_types=tuple(SLIDING if i % 2 == 0 else FULL for i in range(layers)))


MODELS = {"gpt-oss-120b": _model(36, 128), "gpt-oss-20b": _model(24, 32)}
DECODE_TOKENS = (1, 8, 64, 256)
PREFILL_TOKENS = (2048, 8192)
TP_SIZES = (1, 2, 4, 8)


@dataclass(frozen=True)
class Arch:
    """Per-SM limits of a compile target (CUDA occupancy calculator inputs; same on sm_90 and sm_100)."""

    capability: int
    regs_per_sm: int = 65536
    max_regs_per_thread: int = 255
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    shared_per_sm: int = 233472  # 228 KiB
    shared_per_block: int = 232448  # 227 KiB, the opt-in maximum a launch may ask for
    reserved_shared_per_block: int = 1024  # taken by the driver from every resident block

    @property
    def name(self) -> str:
        return f"sm_{self.capability}"


ARCHS = {90: Arch(90), 100: Arch(100)}


@dataclass(frozen=True)
class Case:
    """One forward step of one layer on one rank."""

    model: str  # key of MODELS
    tp: int  # ranks the layer is split over (attention heads; MoE intermediate units, or whole experts with ep)
    ep: bool  # expert parallel: each rank holds E / tp whole experts
    tokens: int  # T: tokens in the step (decode: one per sequence)
    prefill: bool  # one sequence's prompt chunk of T tokens from position 0, else T decoding sequences
    dtype: str  # "bfloat16" or "float32": activations, biases and KV cache

    @property
    def label(self) -> str:
        phase = "prefill" if self.prefill else "decode"
        return f"{self.model} TP{self.tp}{' EP' if self.ep else ''} {phase} T={self.tokens} {self.dtype}"


def cases(models=tuple(MODELS), tp_sizes=TP_SIZES, decode=DECODE_TOKENS, prefill=PREFILL_TOKENS,
          dtypes=("bfloat16", "float32"), expert_parallel=True) -> list[Case]:
    """The grid of the issue: every model x TP (and EP for TP > 1) x step shape x dtype."""
    steps = [(t, False) for t in decode] + [(t, True) for t in prefill]
    splits = [(tp, False) for tp in tp_sizes] + [(tp, True) for tp in tp_sizes if tp > 1 and expert_parallel]
    return [Case(m, tp, ep, t, p, d) for m in models for tp, ep in splits for t, p in steps for d in dtypes]


# ---------------------------------------------------------------------------------------------- one layer's launches


def _meta(*shape, dtype=torch.bfloat16) -> torch.Tensor:
    return torch.empty(*shape, dtype=dtype, device="meta")


def layer_launches(case: Case, gpu: GPU) -> list[PlannedLaunch]:
    """Every launch one layer makes for `case` on one rank of `gpu`s, from the ops' own plans."""
    config, dt = MODELS[case.model], getattr(torch, case.dtype)
    layout = RankLayout(rank=0, tp_size=case.tp, dp_size=1, expert_parallel=case.ep)
    T, H = case.tokens, config.hidden_size
    x = _meta(T, H, dtype=dt)
    planned = []
    _, launches = norm.plan_rms_norm(x, _meta(H, dtype=dt), config.rms_norm_eps, _meta(T, H, dtype=dt))
    planned += [PlannedLaunch("rms_norm", launch, Load()) for launch in launches]
    planned += _attention_launches(case, config, layout, gpu)
    planned += _moe_launches(case, config, layout, gpu)
    return planned


def _attention_launches(case: Case, config: GptOssConfig, layout: RankLayout, gpu: GPU) -> list[PlannedLaunch]:
    """write_kv, rope_and_write_kv and paged_attention (sliding window and full layers) on this rank's heads."""
    dt, T, D = getattr(torch, case.dtype), case.tokens, config.head_dim
    h0, h1 = rules.q_heads(config, layout)
    k0, k1 = rules.kv_heads(config, layout)
    HQ, KV = h1 - h0, k1 - k0
    B = 1 if case.prefill else T
    seq_len = T if case.prefill else DECODE_CONTEXT + 1
    per_seq = -(-seq_len // BLOCK_SIZE)
    cache = _meta(2, 1 + B * per_seq, BLOCK_SIZE, KV, D, dtype=dt)
    q, k, v = _meta(T, HQ, D, dtype=dt), _meta(T, KV, D, dtype=dt), _meta(T, KV, D, dtype=dt)
    slots, positions = _meta(T, dtype=torch.int64), _meta(T, dtype=torch.int64)
    planned = [PlannedLaunch("write_kv", launch, Load()) for launch in attention.plan_write_kv(cache, k, v, slots)]
    cos_sin = _meta(config.max_position_embeddings, D, dtype=torch.float32)
    _, launches = rope.plan_rope_and_write_kv(q, k, v, positions, cos_sin, cache, slots)
    planned += [PlannedLaunch("rope_and_write_kv", launch, Load()) for launch in launches]
    seq_args = (_meta(B, per_seq, dtype=torch.int32), _meta(B, dtype=torch.int32), _meta(B + 1, dtype=torch.int32),
                _meta(HQ, dtype=torch.float32))
    for window in (config.sliding_window, None):
        _, launches = attention.plan_paged_attention(q, cache, *seq_args, window, D**-0.5, sms=gpu.sms)
        load = roofline.attention_load([seq_len] * B, [T // B] * B, window)
        planned += [PlannedLaunch("paged_attention", launch, load) for launch in launches]
    return planned


def _moe_launches(case: Case, config: GptOssConfig, layout: RankLayout, gpu: GPU) -> list[PlannedLaunch]:
    """router_topk (replicated) and moe_mxfp4 over this rank's experts or intermediate slice."""
    dt, T, H, K = getattr(torch, case.dtype), case.tokens, config.hidden_size, config.experts_per_token
    e0, e1 = rules.experts(config, layout)
    i0, i1 = rules.intermediate(config, layout)
    E, I = e1 - e0, i1 - i0
    _, launches = router.plan_router_topk(_meta(T, config.num_experts, dtype=dt), K)
    planned = [PlannedLaunch("router_topk", launch, Load()) for launch in launches]
    u8 = dict(dtype=torch.uint8)
    experts = (_meta(E, 2 * I, H // 32, 16, **u8), _meta(E, 2 * I, H // 32, **u8), _meta(E, 2 * I, dtype=dt),
               _meta(E, H, I // 32, 16, **u8), _meta(E, H, I // 32, **u8), _meta(E, H, dtype=dt))
    ids, weights = _meta(T, K, dtype=torch.int32), _meta(T, K, dtype=torch.float32)
    _, launches = moe.plan_moe_mxfp4(_meta(T, H, dtype=dt), ids, weights, *experts, sms=gpu.sms)
    share = E / config.num_experts  # expected fraction of assignments whose expert is on this rank
    active = roofline.expected_active_experts(T, config.num_experts, K) * share
    load = Load(active_experts=active, assignments=T * K * share)
    return planned + [PlannedLaunch("moe_mxfp4", launch, load) for launch in launches]


# ---------------------------------------------------------------------------------------------------- compiling


@dataclass
class Resources:
    """What ptxas made of one launch for one target."""

    kernel: str
    arch: str  # "sm_90" or "sm_100"
    config: str  # constexpr meta-parameters, warps and stages, and the runtime argument types
    registers: int = 0  # per thread
    spill_stores: int = 0  # bytes per thread (ptxas)
    spill_loads: int = 0
    stack: int = 0  # stack frame bytes per thread
    shared: int = 0  # bytes per block: Triton's dynamic shared memory + the cubin's static
    num_warps: int = 0
    warps_per_sm: int = 0  # resident warps per SM (occupancy), from registers, shared memory and warps
    error: str = ""  # the compile failure, if any


def describe(launch: Launch, signature: dict) -> str:
    """A readable key of a launch's specialization: meta-parameters, then non-pointer argument types."""
    meta = " ".join(f"{k}={v}" for k, v in launch.meta.items())
    scalars = ",".join(f"{k}:{v}" for k, v in signature.items() if v != "constexpr" and not v.startswith("*"))
    pointers = sorted({v[1:] for v in signature.values() if v.startswith("*")})
    return f"{meta} | ptr {'/'.join(pointers)} | {scalars}"


def specialize(launch: Launch, arch: Arch):
    """(ASTSource, options, target) exactly as JITFunction.run would build them for these arguments."""
    target = GPUTarget("cuda", arch.capability, 32)
    backend = make_backend(target)
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")  # 3.9 notes its default changes in 3.10
        bound, specialization, options = binder(*launch.args, **launch.meta)
        options, signature, constexprs, attrs = kernel._pack_args(backend, launch.meta, bound, specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), options, target


def compile_launch(launch: Launch, arch: Arch, cache_dir: Path | None = CACHE_DIR) -> Resources:
    """Compile one launch for `arch` (no GPU needed) and read its resources; cached by source, specialization,
    options, target and triton version."""
    src, options, target = specialize(launch, arch)
    key = hashlib.sha256(json.dumps([src.hash(), repr(options), arch.capability, triton.__version__]).encode())
    path = cache_dir / f"{key.hexdigest()[:32]}.json" if cache_dir else None
    if path and path.exists():
        return Resources(**json.loads(path.read_text()))
    res = Resources(launch.name, arch.name, describe(launch, src.signature), num_warps=options.num_warps)
    try:
        log, compiled = _compile(src, options, target)
        _read_ptxas_log(res, log)
        _read_cubin(res, compiled.asm["cubin"])
        res.shared += compiled.metadata.shared
        res.warps_per_sm = occupancy(res, arch)
    except Exception as error:  # noqa: BLE001 - a failed compile is a result to report, not a crash
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        res.error = f"{type(error).__name__}: {' / '.join(lines[:1] + lines[-1:])}"
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(res)))
    return res


def _compile(src, options, target):
    """triton.compile with ptxas's verbose log captured (always compiled: Triton's own cache would skip ptxas)."""
    log = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(log):
        warnings.simplefilter("ignore")
        previous = triton.knobs.nvidia.dump_ptxas_log, triton.knobs.compilation.always_compile
        triton.knobs.nvidia.dump_ptxas_log = triton.knobs.compilation.always_compile = True
        try:
            compiled = triton.compile(src, target=target, options=options.__dict__)
        finally:
            triton.knobs.nvidia.dump_ptxas_log, triton.knobs.compilation.always_compile = previous
    return log.getvalue(), compiled


def _read_ptxas_log(res: Resources, log: str) -> None:
    """ptxas -v: 'N bytes stack frame, N bytes spill stores, N bytes spill loads' and 'Used N registers'."""
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    used = re.search(r"Used (\d+) registers", log)
    if not frame or not used:
        raise RuntimeError(f"unexpected ptxas log: {log!r}")
    res.stack, res.spill_stores, res.spill_loads = (int(g) for g in frame.groups())
    res.registers = int(used.group(1))


def _read_cubin(res: Resources, cubin: bytes) -> None:
    """cuobjdump --dump-resource-usage: REG, STACK, SHARED (static), LOCAL of the kernel function."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(CUOBJDUMP), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    usage = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    if int(usage["REG"]) != res.registers:
        raise RuntimeError(f"cuobjdump reports {usage['REG']} registers, ptxas {res.registers}")
    res.stack = max(res.stack, int(usage["STACK"]), int(usage["LOCAL"]))
    res.shared = int(usage["SHARED"])


def occupancy(res: Resources, arch: Arch) -> int:
    """Resident warps per SM: the tightest of the warp, block, register and shared-memory limits."""
    regs_per_warp = -(-res.registers * 32 // 256) * 256  # allocated per warp in units of 256
    blocks = min(arch.max_warps_per_sm // res.num_warps, arch.max_blocks_per_sm,
                 arch.regs_per_sm // regs_per_warp // res.num_warps,
                 arch.shared_per_sm // (res.shared + arch.reserved_shared_per_block))
    return blocks * res.num_warps


def problems(res: Resources, arch: Arch) -> list[str]:
    """Why this compile is not fit to run: a failure, any spill, or more shared memory than a block may have."""
    if res.error:
        return [f"compile failed: {res.error}"]
    found = []
    if res.spill_stores or res.spill_loads:
        found.append(f"spills {res.spill_stores} B stores / {res.spill_loads} B loads per thread "
                     f"({res.registers} registers)")
    if res.shared > arch.shared_per_block:
        found.append(f"shared memory {res.shared} B > {arch.shared_per_block} B per block")
    return found


# ------------------------------------------------------------------------------------------------------ the sweep


TARGETS = {gpu.capability: gpu for gpu in GPUS if gpu.name != "H200"}  # whose SM count each arch's plans fill
# H200 shares H100's SMs and sm_90, so it shares its plans and compiles; only its bandwidth differs.


@dataclass
class Report:
    date: str
    triton: str
    torch: str
    compiles: list[dict] = field(default_factory=list)  # Resources + the cases that launch it + its problems
    roofline: list[dict] = field(default_factory=list)  # one row per (case, launch): bytes, flops, predicted us


def sweep(case_list: list[Case], archs=(90, 100), cache_dir: Path | None = CACHE_DIR, log=print) -> Report:
    """Plan every case for each target's GPU, compile each distinct launch once per target, and predict the bf16
    cases' times (the roofline's compute limit is the bf16 tensor-core peak: fp32 launches are compiled only)."""
    report = Report(datetime.datetime.now().isoformat(timespec="seconds"), triton.__version__, torch.__version__)
    compiled: dict[tuple[int, str], dict] = {}
    rows: dict[tuple, dict] = {}
    for capability in archs:
        arch, gpu = ARCHS[capability], TARGETS[capability]
        for case in case_list:
            counts: dict[tuple, int] = {}
            for planned in layer_launches(case, gpu):
                entry = _compiled_once(compiled, planned.launch, arch, cache_dir, log)
                entry["cases"].append(case.label)
                if case.dtype != "bfloat16":
                    continue
                key = (planned.op, planned.launch.name)
                counts[key] = counts.get(key, 0) + 1
                row = rows.setdefault((case.label, *key, counts[key]), _roofline_row(case, planned))
                _predict(row, planned, arch, gpu)
    for entry in compiled.values():
        entry["used_by"] = _used_by(entry.pop("cases"))
    report.compiles = list(compiled.values())
    report.roofline = list(rows.values())
    return report


def _compiled_once(compiled: dict, launch: Launch, arch: Arch, cache_dir, log) -> dict:
    src, options, _ = specialize(launch, arch)
    key = (arch.capability, src.hash() + repr(options))
    if key not in compiled:
        res = compile_launch(launch, arch, cache_dir)
        entry = asdict(res) | {"problems": problems(res, arch), "cases": []}
        compiled[key] = entry
        status = "; ".join(entry["problems"]) or "ok"
        log(f"{arch.name} {res.kernel:<24} regs {res.registers:>3} spill {res.spill_stores:>4} "
            f"smem {res.shared:>6} warps/SM {res.warps_per_sm:>2}  {status}  [{res.config}]")
    return compiled[key]


def _roofline_row(case: Case, planned: PlannedLaunch) -> dict:
    return dict(case=case.label, model=case.model, tp=case.tp, ep=case.ep, tokens=case.tokens,
                prefill=case.prefill, op=planned.op, kernel=planned.launch.name, plans={}, us={}, bound={})


def _predict(row: dict, planned: PlannedLaunch, arch: Arch, gpu: GPU) -> None:
    """The launch planned for `gpu`'s SMs, its work, and its predicted time on every GPU of that arch (H200 shares
    H100's plans)."""
    launch, w = planned.launch, roofline.work(planned.launch, planned.load)
    meta = " ".join(f"{k}={v}" for k, v in launch.meta.items())
    row["plans"][arch.name] = dict(grid=list(launch.grid), meta=meta, busy_programs=round(w.programs, 1),
                                   sms=gpu.sms, bytes=int(w.bytes), flops=int(w.flops))
    for other in GPUS:
        if other.capability == gpu.capability:
            row["us"][other.name] = float(f"{1e6 * w.seconds(other):.4g}")
            row["bound"][other.name] = "compute" if w.compute_seconds(other) > w.memory_seconds(other) else "memory"


# ------------------------------------------------------------------------------------------------------- output


def _used_by(labels: list[str]) -> str:
    """Case labels folded into one line: models, TP sizes, step shapes, dtypes."""
    parsed = [re.match(r"gpt-oss-(\S+) TP(\d+)( EP)? (\w+) T=(\d+) (\w+)", label).groups() for label in labels]
    models = sorted({p[0] for p in parsed})
    tps = sorted({int(p[1]) for p in parsed})
    ep = " (+EP)" if any(p[2] for p in parsed) else ""
    steps = sorted({(p[3], int(p[4])) for p in parsed}, key=lambda s: (s[0] == "prefill", s[1]))
    phases = {ph: ",".join(str(t) for p, t in steps if p == ph) for ph in ("decode", "prefill")}
    shapes = " ".join(f"{ph} {ts}" for ph, ts in phases.items() if ts)
    dtypes = "/".join(sorted({"bf16" if p[5] == "bfloat16" else "fp32" for p in parsed}))
    return f"{','.join(models)} TP{','.join(map(str, tps))}{ep}; {shapes}; {dtypes}"


def resources_markdown(report: Report) -> list[str]:
    lines = ["| kernel | target | launch (meta-parameters; pointer dtypes) | regs | spill st/ld B | stack B | smem KiB "
             "| warps/SM | used by | check |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for c in sorted(report.compiles, key=lambda c: (c["kernel"], c["arch"], c["config"])):
        meta, pointers = c["config"].split(" | ")[:2]
        check = "; ".join(c["problems"]) or "ok"
        lines.append(f"| {c['kernel']} | {c['arch']} | {meta}; {pointers} | {c['registers']} | {c['spill_stores']}/"
                     f"{c['spill_loads']} | {c['stack']} | {c['shared'] / 1024:.1f} | {c['warps_per_sm']} | "
                     f"{c['used_by']} | {check} |")
    return lines


def roofline_markdown(report: Report, expert_parallel: bool = False) -> list[str]:
    """One row per launch of the bf16 cases (the EP ones only in the JSON unless asked)."""
    names = [g.name for g in GPUS]
    lines = ["| case | kernel | busy programs / SMs (sm_90, sm_100) | MB | GFLOP | "
             + " | ".join(f"us {n}" for n in names) + " | bound (H100) |",
             "| --- | --- | --- | ---: | ---: | " + " | ".join("---:" for _ in names) + " | --- |"]
    for row in report.roofline:
        if row["ep"] and not expert_parallel:
            continue
        plans = row["plans"]
        first = plans.get("sm_90") or next(iter(plans.values()))
        fill = ", ".join(f"{p['busy_programs']:.0f}/{p['sms']}" for p in plans.values())
        times = " | ".join(f"{row['us'][n]:.2f}" if n in row["us"] else "-" for n in names)
        bound = row["bound"].get("H100 SXM", "-")
        lines.append(f"| {row['case'].replace(' bfloat16', '')} | {row['kernel']} | {fill} | "
                     f"{first['bytes'] / 1e6:.3f} | {first['flops'] / 1e9:.3f} | {times} | {bound} |")
    return lines


def write_results(report: Report, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / "kernel_resources"
    stem.with_suffix(".json").write_text(json.dumps(asdict(report), indent=None, separators=(",", ":")) + "\n")
    failing = sum(bool(c["problems"]) for c in report.compiles)
    lines = [
        f"# Kernel resources and roofline, triton {report.triton}, {report.date}",
        "",
        "`python -m bench.kernel_resources` (`make kernels-aot`): every launch the ops plan for gpt-oss-120b and "
        "gpt-oss-20b, compiled on CPU for sm_90 (H100/H200, plans filling 132 SMs) and sm_100 (B200, 148 SMs). "
        f"{len(report.compiles)} distinct compiles, {failing} with a problem.",
        "",
        "## Compiled resources (per thread: registers, spills, stack; per block: shared memory)",
        "",
        *resources_markdown(report),
        "",
        "## Roofline: PREDICTIONS, not measurements (bf16, one layer, one rank)",
        "",
        "Time = max(bytes / bandwidth, FLOPs / dense bf16 peak): "
        + "; ".join(f"{g.name}: {g.source}" for g in GPUS)
        + f". Decode: one token per sequence, {DECODE_CONTEXT} tokens cached each, routing uniform (expected "
        "active experts). Prefill: one chunk from position 0. Busy programs: the grid less the MoE GEMMs' spare "
        "tiles. Paged attention appears twice per case: sliding window (128), then full.",
        "",
        *roofline_markdown(report),
        "",
    ]
    stem.with_suffix(".md").write_text("\n".join(lines))
    return stem


QUICK = dict(models=tuple(MODELS), tp_sizes=(1, 8), decode=(1, 256), prefill=(2048,), dtypes=("bfloat16", "float32"),
             expert_parallel=False)  # the default test's subset: every kernel at decode and prefill configurations


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for kernel_resources.{json,md}")
    parser.add_argument("--quick", action="store_true", help="the small case set of the default test, sm_90 only")
    parser.add_argument("--no-cache", action="store_true", help=f"compile everything again (cache: {CACHE_DIR})")
    args = parser.parse_args(argv)
    case_list = cases(**QUICK) if args.quick else cases()
    report = sweep(case_list, (90,) if args.quick else (90, 100), None if args.no_cache else CACHE_DIR)
    stem = write_results(report, args.out)
    failing = [c for c in report.compiles if c["problems"]]
    print(f"{len(report.compiles)} compiles, {len(failing)} with problems; wrote {stem}.json and {stem}.md")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())

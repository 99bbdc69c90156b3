"""bench/results/chaos.md from chaos.json: per phase its load and outcomes, per fault what it cost and the targets
it met or missed (loadtest.accounting.targets)."""

from loadtest.accounting import OUTCOMES, targets


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Fault campaign (`make chaos`, `python -m bench.chaos`): {result['when']}", "",
             f"Machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}, load average (1 min) "
             f"{m['load_average_1m_before_after'][0]} before, {m['load_average_1m_before_after'][1]} after. "
             f"Workload: input {result['workload']['input_len']} tokens, output {result['workload']['output_len']} "
             "tokens (ignore_eos), open loop (Poisson), half over HTTP (/v1/completions) and half over gRPC "
             "(Generate): the raw prompt, so the first token is the first text (a chat answer only becomes "
             "text once harmony's channel markers arrive).", ""]
    for phase in result["phases"]:
        lines += _phase(phase)
    return "\n".join(lines) + "\n"


def _phase(p: dict) -> list[str]:
    s, cap = p["summary"], p["capacity"]
    o = s["outcomes"]
    lines = [f"## {p['phase']}", "",
             f"Capacity {cap['rps']:.2f} req/s (closed loop, concurrency {cap['concurrency']}); offered "
             f"{p['rate_rps']} req/s ({p['load_factor']:g}x) for {p['duration_s']:g} s; TTFT SLO "
             f"{p['slo_ttft_ms']:.0f} ms. {s['requests']} requests: "
             + ", ".join(f"{o[k]} {k}" for k in OUTCOMES)
             + f" ({o['rejected_without_retry_hint']} rejections without a retry hint); TTFT p50 "
             f"{_ms(s['ttft_ms']['p50'])}, p99 {_ms(s['ttft_ms']['p99'])}; good fraction {s['good_fraction']:.2f}.", ""]
    if p["faults"]:
        lines += ["| fault | planned | at s | took s | in flight (no 1st token: completed) | " + " | ".join(OUTCOMES)
                  + " | no hint | failed streams ended within s | recovery s | by protocol (c/r/f/l) | targets missed |",
                  "| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in OUTCOMES)
                  + " | ---: | ---: | ---: | --- | --- |"]
        for f in p["faults"]:
            oc = f["outcomes"]
            missed = [k for k, ok in targets(f).items() if not ok] + ([f"action failed: {f['error']}"] if f["error"]
                                                                       else [])
            by = "; ".join(f"{t}: " + "/".join(str(c[k]) for k in OUTCOMES) for t, c in f["outcomes_by_target"].items())
            rec = "-" if f["recovery_s"] is None else f"{f['recovery_s']:.1f}"
            ended = f["failed_in_flight_ended_within_s"]
            lines.append(f"| {f['label']} | {'yes' if f['planned'] else 'no'} | {f['start']:.1f} | "
                         f"{f['end'] - f['start']:.1f} | {f['in_flight_at_start']} ({f['in_flight_without_first_token']}"
                         f": {f['of_which_completed']}) | " + " | ".join(str(oc[k]) for k in OUTCOMES)
                         + f" | {oc['rejected_without_retry_hint']} | {'-' if ended is None else f'{ended:.1f}'} | "
                         f"{rec} | {by} | {', '.join(missed) or 'none'} |")
        lines.append("")
    if p.get("targets"):
        lines += ["Targets: " + "; ".join(f"{k}: {'met' if ok else 'MISSED'}" for k, ok in p["targets"].items()), ""]
    lines += [f"- warning: {w}" for w in p["warnings"]]
    return lines + [""]


def _ms(v) -> str:
    return "-" if v is None else f"{v:.0f} ms"

"""Alert rules and the dashboard against Prometheus' own promtool and against the metrics the code exports.

- `promtool check rules` on the rule file and on the PrometheusRule the chart renders from it;
- `promtool test rules`: for every alert, input series that must fire it and series that must not (CASES);
- every metric name in every PromQL expression (rules, dashboard panels and variables) is one that
  cluster/metrics.py really exports (read from a real exposition) or that a rule of the file records.
"""

import json
import re
import subprocess
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import yaml

from cluster import metrics
from tests.helm import tools
from tests.helm.chart import CHART, one, render

RULES_FILE = CHART / "files" / "alerts.yaml"
DASHBOARD_FILE = CHART / "files" / "dashboard.json"
REQUIRED_ALERTS = {"GptossTTFTP99OverSLO", "GptossKVCacheNearlyFull", "GptossWaitingQueueGrowing",
                   "GptossHighErrorRatio", "GptossReplicaUnhealthy", "GptossMetricsAbsent",
                   "GptossQuotaLedgerFailing", "GptossAuditWriteFailing", "GptossGuardFilterFailing"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tools.promtool()), *args], capture_output=True, text=True, timeout=120)


def rule_groups() -> list[dict]:
    return yaml.safe_load(RULES_FILE.read_text())["groups"]


def alert_rules() -> dict[str, dict]:
    return {r["alert"]: r for g in rule_groups() for r in g["rules"] if "alert" in r}


@pytest.fixture(scope="module")
def rendered_rules(tmp_path_factory):
    """The chart's PrometheusRule (default values) as a plain rule file."""
    path = tmp_path_factory.mktemp("rules") / "rendered.yaml"
    path.write_text(yaml.safe_dump({"groups": one(render(), "PrometheusRule")["spec"]["groups"]}))
    return path


def test_promtool_checks_the_rule_file_and_the_rendered_rule(rendered_rules):
    for path in (RULES_FILE, rendered_rules):
        proc = promtool("check", "rules", str(path))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "SUCCESS: 11 rules found" in proc.stdout


def test_every_required_alert_has_severity_summary_and_runbook():
    rules = alert_rules()
    assert REQUIRED_ALERTS <= set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and len(rule["annotations"]["runbook"].splitlines()) >= 3, name
        assert rule.get("for"), f"{name} fires on a single evaluation"


# -- promtool unit tests ---------------------------------------------------------------------------------------------

NS = 'namespace="serving"'


@dataclass
class Case:
    """Input series and, per evaluation time, the label sets the alert must fire with ([] = must not fire)."""

    alert: str
    series: dict[str, str]
    checks: dict[str, list[dict]]
    value: str = ""  # how {{ $value ... }} renders in the annotations when it fires
    notes: str = field(default="")


def ttft_buckets(model: str, bucket: str) -> dict[str, str]:
    """One request per second, every one inside bucket `bucket`: p99 interpolates within it."""
    bounds = ["0.5", "1", "2.5", "5", "+Inf"]
    return {f'gptoss_time_to_first_token_seconds_bucket{{{NS},model_name="{model}",replica="r1",le="{le}"}}':
            ("0+60x30" if bounds.index(le) >= bounds.index(bucket) else "0x30") for le in bounds}


CASES = [
    Case("GptossTTFTP99OverSLO", {**ttft_buckets("slow", "5"), **ttft_buckets("fast", "1")},
         {"20m": [{"namespace": "serving", "model_name": "slow"}], "8m": []},
         value="4.975s", notes="p99 4.975 s > SLO 2 s fires after 10m; p99 0.995 s never"),
    Case("GptossKVCacheNearlyFull",
         {f'gptoss_kv_cache_usage_perc{{{NS},model_name="m",replica="full"}}': "0.97x20",
          f'gptoss_kv_cache_usage_perc{{{NS},model_name="m",replica="spiky"}}': "0.5x5 0.99x3 0.5x12",
          f'gptoss_kv_cache_usage_perc{{{NS},model_name="m",replica="busy"}}': "0.9x20"},
         {"10m": [{"namespace": "serving", "model_name": "m", "replica": "full"}], "3m": []}, value="97%"),
    Case("GptossWaitingQueueGrowing",
         {f'gptoss_num_requests_waiting{{{NS},model_name="growing",replica="r1"}}': "20+1x40",
          f'gptoss_num_requests_waiting{{{NS},model_name="steady",replica="r1"}}': "50x40",
          f'gptoss_num_requests_waiting{{{NS},model_name="small",replica="r1"}}': "0+0.1x40"},
         {"25m": [{"namespace": "serving", "model_name": "growing"}], "8m": []}, value="45"),
    Case("GptossHighErrorRatio",
         {f'gptoss_http_requests_total{{{NS},route="/v1/chat/completions",status_code="200"}}': "0+100x20",
          f'gptoss_http_requests_total{{{NS},route="/v1/chat/completions",status_code="500"}}': "0+10x20",
          'gptoss_http_requests_total{namespace="fine",route="/v1/completions",status_code="200"}': "0+100x20",
          'gptoss_http_requests_total{namespace="fine",route="/v1/completions",status_code="503"}': "0+1x20"},
         {"15m": [{"namespace": "serving"}], "3m": []}, value="9.091%"),
    Case("GptossReplicaUnhealthy",
         {f'gptoss_num_requests_running{{{NS},model_name="m",replica="{r}"}}': running
          for r, running in (("stuck", "2x30"), ("working", "2x30"), ("idle", "0x30"))} |
         {f'gptoss_num_requests_waiting{{{NS},model_name="m",replica="{r}"}}': "0x30"
          for r in ("stuck", "working", "idle")} |
         {f'gptoss_generation_tokens_total{{{NS},model_name="m",replica="{r}"}}': tokens
          for r, tokens in (("stuck", "0+50x10 500x20"), ("working", "0+50x30"), ("idle", "100x30"))},
         {"21m": [{"namespace": "serving", "model_name": "m", "replica": "stuck"}], "18m": []},
         notes="the last token at 10m: no rate for 5m, then 5m pending"),
    Case("GptossReplicaLost",
         {f'gptoss_replicas_lost_total{{{NS},model_name="crashy"}}': "0x5 1x25",
          f'gptoss_replicas_lost_total{{{NS},model_name="stable"}}': "0x30"},
         {"8m": [{"namespace": "serving", "model_name": "crashy"}], "4m": [], "28m": []},
         notes="one loss at 6m: fires while it is inside the 15m window"),
    Case("GptossQuotaLedgerFailing",
         {f'gptoss_quota_ledger_errors_total{{{NS},frontdoor="ingress-a",policy="closed"}}': "0x5 0+2x25",
          f'gptoss_quota_ledger_errors_total{{{NS},frontdoor="ingress-b",policy="open"}}': "0x30"},
         {"12m": [{"namespace": "serving", "policy": "closed"}], "5m": []}, value="12",
         notes="2 failures a minute from 5m on: fires after 5m pending"),
    Case("GptossAuditWriteFailing",
         {f'gptoss_audit_errors_total{{{NS},frontdoor="ingress-a"}}': "0x5 0+3x25",
          'gptoss_audit_errors_total{namespace="fine",frontdoor="ingress-a"}': "0x30"},
         {"12m": [{"namespace": "serving"}], "5m": []}, value="18"),
    Case("GptossGuardFilterFailing",
         {f'gptoss_guard_checks_total{{{NS},frontdoor="i",filter="policy",stage="input",outcome="{o}"}}': v
          for o, v in (("allow", "0+8x40"), ("error", "0+2x40"))} |
         {f'gptoss_guard_checks_total{{{NS},frontdoor="i",filter="pii",stage="input",outcome="{o}"}}': v
          for o, v in (("allow", "0+99x40"), ("error", "0+1x40"))},
         {"25m": [{"namespace": "serving", "filter": "policy", "stage": "input"}], "8m": []}, value="20%",
         notes="a fifth of the policy filter's checks fail; the regex filter's 1% does not alert"),
    Case("GptossMetricsAbsent", {'up{job="something-else"}': "1x20"}, {"15m": [{}], "5m": []}),
    Case("GptossMetricsAbsent", {f'gptoss_num_requests_running{{{NS},model_name="m",replica="r"}}': "1x20"},
         {"15m": []}),
]


def expand(template: str, labels: dict, value: str) -> str:
    """Prometheus' annotation templating, for the two forms the rule file uses."""
    template = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    return re.sub(r"\{\{\s*\$value[^}]*\}\}", value, template)


def promtool_test_file(rules_path, cases: list[Case]) -> dict:
    rules = alert_rules()
    tests = []
    for case in cases:
        rule = rules[case.alert]
        evals = []
        for eval_time, fires in case.checks.items():
            expected = [{"exp_labels": {**labels, **rule["labels"]},
                         "exp_annotations": {k: expand(v, labels, case.value) for k, v in rule["annotations"].items()}}
                        for labels in fires]
            evals.append({"eval_time": eval_time, "alertname": case.alert, "exp_alerts": expected})
        tests.append({"name": f"{case.alert} {case.notes}".strip(), "interval": "1m",
                      "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
                      "alert_rule_test": evals})
    return {"rule_files": [str(rules_path)], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_has_cases_that_fire_and_cases_that_do_not():
    fires = {c.alert for c in CASES for labels in c.checks.values() if labels}
    quiet = {c.alert for c in CASES for labels in c.checks.values() if not labels}
    assert fires == quiet == set(alert_rules())


def test_promtool_unit_tests_of_every_alert(rendered_rules, tmp_path):
    spec = tmp_path / "alerts_test.yaml"
    spec.write_text(yaml.safe_dump(promtool_test_file(rendered_rules, CASES), sort_keys=False))
    proc = promtool("test", "rules", str(spec))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_can_fail(rendered_rules, tmp_path):
    """The harness is an oracle: a case that expects the wrong replica fails promtool."""
    wrong = Case("GptossKVCacheNearlyFull", CASES[1].series,
                 {"10m": [{"namespace": "serving", "model_name": "m", "replica": "spiky"}]}, value="99%")
    spec = tmp_path / "wrong_test.yaml"
    spec.write_text(yaml.safe_dump(promtool_test_file(rendered_rules, [wrong])))
    assert promtool("test", "rules", str(spec)).returncode != 0


# -- metric names ----------------------------------------------------------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (Grafana's $variables and label_values() understood)."""
    label_values = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", expr, re.S)
    if label_values:
        expr = label_values.group(1)
    s = re.sub(r"\$\{?\w+\}?", " ", expr)                                  # Grafana variables
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', s)        # string literals
    s = re.sub(r"\{[^{}]*\}", " ", s)                                      # label matchers
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", s)  # label lists
    s = re.sub(r"\[[^\]]*\]", " ", s)                                      # ranges, subqueries
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", s):
        if m.group() not in PROMQL_WORDS and not s[m.end():].lstrip().startswith("("):
            names.add(m.group())
    return names


def test_metric_name_parser():
    assert metric_names('histogram_quantile(0.99, sum by (model_name, le) (rate(a_bucket{x="y{z}"}[5m])))'
                        ' > on () group_left () b:slo') == {"a_bucket", "b:slo"}
    assert metric_names('sum(rate(c_total{namespace=~"$namespace"}[$__rate_interval])) / 1e3 + vector(2)') == \
           {"c_total"}
    assert metric_names('label_values(d{namespace=~"$namespace"}, model_name)') == {"d"}
    assert metric_names("absent(e) or f offset 5m and g unless h") == {"e", "f", "g", "h"}


def exported_names() -> set[str]:
    """Sample names in a real exposition made by cluster/metrics.py (one replica, one HTTP response)."""
    fields = {**metrics.ENGINE_GAUGES, **metrics.ENGINE_COUNTERS}.values()
    replica = metrics.ReplicaMetrics("m", "r", lambda: SimpleNamespace(**dict.fromkeys(fields, 0)))
    replica.on_tokens(1, None)
    replica.on_tokens(2, 0.05)
    replica.on_finished(3, "stop", metrics.RequestTimes(arrival=0.0, scheduled=0.1, first_token=0.2, finished=0.3))
    http = metrics.HttpMetrics()
    http.on_response("/v1/chat/completions", 200)
    safety = metrics.SafetyMetrics(lambda: {"ledger_errors": {"closed": 1}})
    safety.on_request("team-a", "chat", 200, SimpleNamespace(prompt_tokens=3, completion_tokens=2,
                                                             reasoning_tokens=1))
    safety.on_refusal("team-a", "quota")
    safety.on_check("pii", "input", "redact")
    store = metrics.MetricsStore(ttl_s=60)  # the hub: it adds gptoss_replicas_lost_total
    store.push("m/r", replica.snapshot())
    store.push("ingress/i", metrics.labelled(http.snapshot() + safety.snapshot(), frontdoor="ingress-i"))
    store.push("ledger/quota", metrics.quota_families([("team-a", "tokens_per_min", 0.5)]))
    text = store.render().decode()
    return {re.split(r"[{ ]", line)[0] for line in text.splitlines() if line and not line.startswith("#")}


def test_the_exposition_has_every_declared_series():
    names = exported_names()
    for name in metrics.HISTOGRAMS:
        assert {f"{name}_bucket", f"{name}_sum", f"{name}_count"} <= names
    assert set(metrics.GAUGES) | set(metrics.COUNTERS) | set(metrics.HTTP_COUNTERS) | set(metrics.HUB_COUNTERS) <= names
    assert set(metrics.KEY_COUNTERS) | set(metrics.SAFETY_COUNTERS) | set(metrics.KEY_GAUGES) <= names


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_every_promql_expression_uses_exported_metrics():
    recorded = {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}
    exprs = [r["expr"] for g in rule_groups() for r in g["rules"]] + dashboard_exprs()
    known = exported_names() | recorded
    used = set()
    for expr in exprs:
        names = metric_names(expr)
        assert names or re.fullmatch(r"vector\([\d.]+\)", expr), f"no metric in {expr!r}"
        assert names <= known, f"{sorted(names - known)} in {expr!r} are not exported by cluster/metrics.py"
        used |= names
    assert len(exprs) > 30
    assert {f"{h}_bucket" for h in metrics.HISTOGRAMS} <= used  # every latency histogram has a panel


def test_dashboard_uses_its_datasource_variable():
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    assert dashboard["uid"] == "gptoss-serve"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]

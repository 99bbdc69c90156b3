"""The safety layer in the chart: named keys and guard policies from existing Secrets (mounted, so a changed Secret
reaches the front doors without a restart), the audit log to PostgreSQL from a Secret or to a shared volume. Oracles:
the real helm, and the cluster's own config loader reading the rendered serveConfigV2."""

from cluster.config import load_config
from tests.helm.chart import pod_templates, render, serve_config, template_error

KEYS = ("auth.existingSecret=team-keys", "auth.keysKey=keys.yaml", "auth.apiKeysKey=", "auth.metricsKeyKey=",
        "metrics.serviceMonitor.enabled=false")


def _config(objs):
    return load_config(serve_config(objs)["applications"][0]["args"]["config"])


def test_named_keys_come_from_the_secret_and_are_reread():
    objs = render(set=(*KEYS, "auth.rotationGraceSeconds=600", "auth.reloadIntervalSeconds=2"))
    auth = _config(objs).auth
    assert (auth.keys_file, auth.api_keys_file, auth.rotation_grace_s, auth.reload_interval_s) == (
        "/etc/gptoss/auth/keys.yaml", None, 600, 2)
    for template in pod_templates(objs).values():
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        # mounted as a directory (no subPath): the kubelet swaps the file in when the Secret changes
        assert volumes["api-keys"]["secret"]["items"] == [{"key": "keys.yaml", "path": "keys.yaml"}]
        mounts = template["spec"]["containers"][0]["volumeMounts"]
        assert {"name": "api-keys", "mountPath": "/etc/gptoss/auth", "readOnly": True} in mounts
        assert not any("subPath" in m for m in mounts)
    both = render(set=(*KEYS, "auth.apiKeysKey=flat.txt"))
    head = pod_templates(both)["head"]["spec"]
    assert {"key": "flat.txt", "path": "flat.txt"} in {v["name"]: v for v in head["volumes"]}["api-keys"]["secret"][
        "items"]
    assert "names no keys" in template_error(set=(*KEYS[:1], "auth.apiKeysKey=", "auth.metricsKeyKey=",
                                                  "metrics.serviceMonitor.enabled=false"))


def test_guard_policies_are_mounted_on_every_ray_pod():
    objs = render(set=("guards.policySecret=guard-policies", "config.guards.filters.safety.type=policy_model",
                       "config.guards.filters.safety.model=gpt-oss-20b",
                       "config.guards.filters.safety.policy_file=/etc/gptoss/policies/weapons.txt"))
    for template in pod_templates(objs).values():
        assert {"name": "guard-policies", "secret": {"secretName": "guard-policies", "defaultMode": 0o440}} in \
            template["spec"]["volumes"]
        assert {"name": "guard-policies", "mountPath": "/etc/gptoss/policies", "readOnly": True} in \
            template["spec"]["containers"][0]["volumeMounts"]
    assert _config(objs).guards.filters["safety"].policy_file == "/etc/gptoss/policies/weapons.txt"


def test_the_audit_log_goes_to_postgresql_from_a_secret(monkeypatch):
    objs = render(set=("audit.dsnSecret=audit-pg", "audit.dsnKey=url", "config.audit.include_text=true"))
    config = _config(objs)
    assert config.audit.dsn_env == "GPTOSS_AUDIT_DSN" and config.audit.include_text
    for template in pod_templates(objs).values():
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        assert env["GPTOSS_AUDIT_DSN"]["valueFrom"]["secretKeyRef"] == {"name": "audit-pg", "key": "url"}
    monkeypatch.setenv("GPTOSS_AUDIT_DSN", "postgresql://u@db/audit")
    assert config.audit.database() == "postgresql://u@db/audit"
    error = template_error(set=("audit.dsnSecret=audit-pg", "config.audit.dsn=postgresql://x"))
    assert "config.audit.dsn is written by the chart (from audit.dsnSecret)" in error


def test_the_audit_log_goes_to_a_shared_volume():
    objs = render(set=("audit.existingClaim=audit-rwx",))
    assert _config(objs).audit.dir == "/var/lib/gptoss/audit"
    for template in pod_templates(objs).values():
        assert {"name": "audit", "persistentVolumeClaim": {"claimName": "audit-rwx"}} in template["spec"]["volumes"]
        assert {"name": "audit", "mountPath": "/var/lib/gptoss/audit"} in \
            template["spec"]["containers"][0]["volumeMounts"]
    assert "config.audit.dir is written by the chart" in template_error(
        set=("audit.existingClaim=audit-rwx", "config.audit.dir=/tmp"))


def test_without_safety_values_nothing_is_mounted():
    objs = render()
    for template in pod_templates(objs).values():
        names = {v["name"] for v in template["spec"]["volumes"]}
        assert not names & {"guard-policies", "audit", "api-keys"}
    assert _config(objs).audit.dsn_env is None and _config(objs).audit.dir is None

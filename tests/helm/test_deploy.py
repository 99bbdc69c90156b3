"""deploy/: the single sources the chart packages, the image recipe, and the on-prem recipe's config blocks."""

import re
import subprocess
import tarfile
import tomllib

import yaml

from cluster.config import load_config
from tests.helm.chart import CHART, ROOT, helm
from tests.helm.test_alerts import promtool

DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DEPENDENCIES = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["cluster"]


def pin(package: str) -> str:
    return next(re.search(r"==([\w.]+)", d).group(1) for d in DEPENDENCIES if re.match(rf"{package}\b", d))


def test_deploy_points_to_the_files_the_chart_includes():
    for link, source in [("prometheus/alerts.yaml", "files/alerts.yaml"),
                         ("grafana/dashboard.json", "files/dashboard.json")]:
        assert (DEPLOY / link).is_symlink(), f"deploy/{link} must point into the chart, not copy it"
        assert (DEPLOY / link).resolve() == (CHART / source).resolve()


def test_the_packaged_chart_holds_the_rules_and_the_dashboard(tmp_path):
    proc = helm("package", str(CHART), "--destination", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    (package,) = tmp_path.glob("gptoss-serve-*.tgz")
    with tarfile.open(package) as tar:
        for name in ("files/alerts.yaml", "files/dashboard.json"):
            member = tar.getmember(f"gptoss-serve/{name}")
            assert member.isfile() and tar.extractfile(member).read() == (CHART / name).read_bytes()
        assert not [m.name for m in tar.getmembers() if "/ci/" in m.name and not m.name.endswith(".yaml")]


def test_versions_agree_with_pyproject():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart["appVersion"] == PYPROJECT["project"]["version"]  # the image tag the chart defaults to
    assert values["ray"]["version"] == pin("ray")  # KubeRay's rayVersion is the Ray in the image
    assert f"torch=={pin('torch')}" in (DEPLOY / "Dockerfile").read_text()


def test_dockerfile_builds_a_non_root_cuda_image_with_the_project():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:\S+$", text, re.M) and "FROM ${CUDA_IMAGE}" in text
    assert "pip install '.[cluster,kernels]'" in text and "python -m engine.text.vocab install" in text
    assert "userdel --remove ubuntu" in text and "useradd --uid 1000 --gid 1000" in text  # the chart's runAsUser
    assert re.search(r"^USER 1000:1000$", text, re.M)
    assert re.search(r"apt-get install [^\n]*\bwget\b", text)  # the chart's probes run wget
    copied = {src for line in re.findall(r"^COPY (.+)$", text, re.M) for src in line.split()[:-1]}
    kept = set(re.findall(r"^!(\S+?)/?$", (DEPLOY / "Dockerfile.dockerignore").read_text(), re.M))
    assert copied == kept == {"pyproject.toml", "setup.py", "README.md", "proto", "engine", "cluster", "loadtest"}


def blocks(markdown: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", markdown, re.S)


def test_onprem_config_loads_with_the_cluster_code():
    (config,) = [b for b in blocks((DEPLOY / "onprem.md").read_text(), "yaml") if b.startswith("# gptoss.yaml")]
    loaded = load_config(yaml.safe_load(config))
    assert loaded.auth.api_keys_file and not loaded.auth.api_keys  # keys by reference only
    assert [m.name for m in loaded.models] == ["gpt-oss-120b"]


def test_onprem_prometheus_config_passes_promtool(tmp_path):
    (config,) = [b for b in blocks((DEPLOY / "onprem.md").read_text(), "yaml") if "scrape_configs:" in b]
    config = config.replace("/etc/prometheus/gptoss-alerts.yaml", str(DEPLOY / "prometheus" / "alerts.yaml"))
    config = config.replace("/etc/prometheus/gptoss-api-key", str(tmp_path / "key"))
    (tmp_path / "key").write_text("scrape-key-0123456789\n")
    (tmp_path / "prometheus.yml").write_text(config)
    proc = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_onprem_recipe_keeps_ray_ports_off_clients():
    text = (DEPLOY / "onprem.md").read_text()
    assert "--dashboard-host 127.0.0.1" in text and "--dashboard-host 0.0.0.0" not in text
    for command in re.findall(r"ray start --head[^\n]*", text):
        assert "--num-cpus 0" in command and "--dashboard-host 127.0.0.1" in command


def test_makefile_fetches_the_tools():
    proc = subprocess.run(["make", "-n", "-B", "install"], cwd=ROOT, capture_output=True, text=True)
    assert "tests.helm.tools install" in proc.stdout

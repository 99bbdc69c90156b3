"""Rendering the chart with the real helm binary, and reading what it rendered.

`render(*value_files, set=...)` runs `helm template` and returns the objects; `template_error(...)` returns helm's
message for values that must fail. Helpers below find objects and the pod templates inside the RayService.
"""

import functools
import os
import subprocess
from pathlib import Path

import yaml

from tests.helm import tools

ROOT = tools.ROOT
CHART = ROOT / "helm" / "gptoss-serve"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
CI = {path.stem: path for path in CI_VALUES}  # e.g. CI["gpt-oss-120b-2node-ep"]
RELEASE, NAMESPACE = "llm", "serving"
CRD_DIR = Path(os.environ.get("GPTOSS_CRD_DIR", ROOT.parent / "shared" / "data" / "crds"))
RAY_DASHBOARD_PORT, RAY_GCS_PORT = 8265, 6379

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class RenderError(AssertionError):
    """helm template failed; the message is helm's."""


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tools.helm()), *args], capture_output=True, text=True, timeout=120)


def _template_args(value_files, set_values) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in value_files:
        args += ["-f", str(f)]
    for s in set_values:
        args += ["--set", s]
    return args


@functools.lru_cache(maxsize=None)
def _render(value_files: tuple, set_values: tuple) -> tuple:
    proc = helm(*_template_args(value_files, set_values))
    if proc.returncode != 0:
        raise RenderError(proc.stderr)
    return tuple(d for d in yaml.load_all(proc.stdout, Loader=Loader) if d)


def render(*value_files, set: tuple | list = ()) -> list[dict]:  # noqa: A002 - helm's flag name
    """Every object `helm template` renders for these value files and --set flags (deep copies: mutate freely)."""
    import copy  # noqa: PLC0415

    return copy.deepcopy(list(_render(tuple(str(f) for f in value_files), tuple(set))))


def template_error(*value_files, set: tuple | list = ()) -> str:  # noqa: A002
    """helm's stderr for values that must not render (fails the test if they render)."""
    proc = helm(*_template_args(value_files, set))
    assert proc.returncode != 0, f"helm template rendered values that should fail: {value_files} {set}"
    return proc.stderr


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def ray_cluster(objects: list[dict]) -> dict:
    return one(objects, "RayService")["spec"]["rayClusterConfig"]


def pod_templates(objects: list[dict]) -> dict[str, dict]:
    """'head' and each worker group's name -> its pod template."""
    rc = ray_cluster(objects)
    out = {"head": rc["headGroupSpec"]["template"]}
    out.update({g["groupName"]: g["template"] for g in rc.get("workerGroupSpecs", [])})
    return out


def serve_config(objects: list[dict]) -> dict:
    return yaml.safe_load(one(objects, "RayService")["spec"]["serveConfigV2"])


def services(objects: list[dict]) -> list[dict]:
    """Every Service the chart renders, including the one KubeRay makes from RayService.spec.serveService."""
    out = of_kind(objects, "Service")
    for rs in of_kind(objects, "RayService"):
        if "serveService" in rs["spec"]:
            out.append({"apiVersion": "v1", "kind": "Service", **rs["spec"]["serveService"]})
    return out


def values_id(path) -> str:
    return Path(path).stem if path else "defaults"

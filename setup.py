"""Build step of the wheel (the rest of the packaging is pyproject.toml): the gRPC stubs, generated from proto/ by
cluster/grpc/codegen.py, and the .proto files themselves go into the built package (cluster/grpc/_gen/,
cluster/grpc/proto/), so a non-editable install (the image) serves gRPC without the repository beside it."""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithStubs(build_py):
    def run(self):
        super().run()
        if self.dry_run:
            return
        target = Path(self.build_lib) / "cluster" / "grpc"
        shutil.rmtree(target / "_gen", ignore_errors=True)
        (target / "_gen").mkdir(parents=True)
        _codegen().build(target / "_gen")
        shutil.rmtree(target / "proto", ignore_errors=True)
        shutil.copytree(ROOT / "proto", target / "proto", ignore=shutil.ignore_patterns("README.md"))


def _codegen():
    """cluster/grpc/codegen.py loaded by path (importing the cluster package would import its dependencies)."""
    spec = importlib.util.spec_from_file_location("_gptoss_codegen", ROOT / "cluster" / "grpc" / "codegen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


setup(cmdclass={"build_py": BuildPyWithStubs})

"""bench/peer_install.py's requirement filter (nothing is installed)."""

from bench.peer_install import peer_requirements


def test_the_torch_family_extras_and_other_platforms_are_left_out():
    requires = [
        "regex",
        "torch==2.13.0+cpu; platform_machine == \"x86_64\"",
        "torchvision; platform_machine != \"riscv64\"",
        "torchaudio", "torchcodec>=0.14", "Torch_Audio; extra == 'x'",
        "numba==0.65.0",
        "pandas; extra == \"bench\"",
        "zentorch==2.13.0.1; extra == \"zen\"",
        "protobuf==7.36.1; platform_machine == \"no-such-machine\"",
        "xgrammar==0.2.8; python_version >= \"3\"",
    ]
    assert peer_requirements(requires) == ["regex", "numba==0.65.0", "xgrammar==0.2.8; python_version >= \"3\""]

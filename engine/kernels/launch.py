"""Launch decisions: what every Triton kernel is launched with, decided once and read by all who need it.

Flow: an op's `plan_*` function (moe.plan_moe_mxfp4, attention.plan_paged_attention, ...) takes the op's
tensors, allocates its outputs and returns them with the `Launch`es that fill them; the op runs the launches in
order. The tools call the same plans on meta tensors (no memory, no device): bench.kernel_resources compiles each
launch for sm_90 / sm_100 on CPU, bench.roofline predicts its time, bench.gpu times it on a GPU. No table of
launch settings exists anywhere else.

What a plan may depend on: tensor shapes and dtypes, the streaming multiprocessors it should fill (`sms`, from the
device, or given by a tool that plans for a GPU it does not have) and INTERPRET (CPU tests). Never tensor data:
every grid comes from shapes, so plans need no host sync and decode can be graph-captured.
"""

import functools
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Launch:
    """One kernel launch: kernel[grid](*args, **meta)."""

    kernel: Any  # the @triton.jit function (an interpreted one under TRITON_INTERPRET=1)
    grid: tuple[int, ...]  # programs along each grid axis
    args: tuple  # runtime arguments in the kernel's order: tensors, ints, floats
    meta: dict = field(default_factory=dict)  # constexpr meta-parameters, num_warps, num_stages

    @property
    def name(self) -> str:
        """The kernel's function name, e.g. `_moe_gemm1_kernel`."""
        fn = getattr(self.kernel, "fn", self.kernel)
        return fn.__name__

    @property
    def programs(self) -> int:
        """Programs the grid launches (some may exit at once: spare tiles, empty key splits)."""
        n = 1
        for g in self.grid:
            n *= g
        return n

    def __call__(self) -> None:
        self.kernel[self.grid](*self.args, **self.meta)

    def tensor(self, name: str) -> torch.Tensor:
        """The argument passed for the kernel parameter `name` (tools read shapes and dtypes from it)."""
        return self.args[self.kernel.arg_names.index(name)]


def run(launches: list[Launch]) -> None:
    """Run an op's launches in order (each reads what the earlier ones wrote)."""
    for launch in launches:
        launch()


@functools.lru_cache
def _cuda_multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def multiprocessors(device: torch.device) -> int | None:
    """Streaming multiprocessors of a CUDA device; None elsewhere (CPU, meta: plans then do not split for fill)."""
    if device.type != "cuda":
        return None
    return _cuda_multiprocessors(device.index if device.index is not None else torch.cuda.current_device())

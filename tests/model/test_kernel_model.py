"""The whole model on the kernel path (packed MXFP4 experts, Triton kernels under TRITON_INTERPRET=1) generates the
reference model's greedy tokens. Runs in a subprocess so the interpreter settings apply before triton loads."""

import json
import os
import subprocess
import sys

import pytest

from engine import LLM, SamplingParams

SCRIPT = """
import json, sys
from engine import LLM, SamplingParams, kernels
assert kernels.use_triton("cpu"), "the Triton path is not forced"
llm = LLM(sys.argv[1], dtype="float32", device="cpu", backend="kernels")
worker = llm.engine.executor.worker
assert worker.packed
assert worker.model.layers[0].mlp.w1_blocks.dtype.is_floating_point is False  # experts stay packed
if sys.argv[3] == "graphs":  # decode steps through the padded static buffers of engine.cuda_graphs, run eagerly
    worker.runner.capture_decode_graphs(worker.max_blocks_per_sequence, (1, 2, 4), capture=False)
outs = llm.generate(json.loads(sys.argv[2]), SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
graphs = worker.runner.graphs
assert graphs is None or graphs.replays >= 7, graphs.replays  # every decode step of the 3 prompts
print(json.dumps([o.outputs[0].token_ids for o in outs]))
"""


@pytest.mark.parametrize("mode", ["eager", "graphs"])
def test_triton_path_matches_reference_greedy_tokens(checkpoints, mode):
    """`graphs`: decode batches of 3 padded to the captured size 4 (padding rows in the null block)."""
    pytest.importorskip("triton")
    path = checkpoints("mha-e8k3-w8")  # 3 layers, 8 experts, top-3, window 8: prompts cross the window
    prompts = [{"prompt_token_ids": list(range(1, 30))}, {"prompt_token_ids": list(range(100, 105))},
               {"prompt_token_ids": list(range(200, 213))}]
    env = {**os.environ, "TRITON_INTERPRET": "1", "GPTOSS_FORCE_TRITON": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(path), json.dumps(prompts), mode], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    triton_tokens = json.loads(result.stdout.strip().splitlines()[-1])
    reference = LLM(path, dtype="float32", device="cpu", backend="reference")
    expected = reference.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert triton_tokens == [o.outputs[0].token_ids for o in expected]

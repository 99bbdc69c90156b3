"""The decode-graph path (engine/cuda_graphs.py) off CUDA: `capture=False` runs the same padded static buffers
eagerly, so the padding, the copies into the buffers and the null-block rows are checked here; the capture itself
needs a GPU (bench/gpu.py times decode with and without graphs).

Oracle: the same engine without graphs. Greedy tokens and logprobs must be equal for a workload whose decode
batches are sometimes a captured size, sometimes padded up to one, and sometimes larger than the largest (eager).
"""

import pytest

from engine import LLM, SamplingParams
from engine.cuda_graphs import DecodeGraphs


def run(tiny_model, graphs: bool):
    llm = LLM(tiny_model, dtype="float32", device="cpu", kv_cache_memory=8 << 20, max_num_seqs=8)
    if graphs:
        worker = llm.engine.executor.worker
        worker.runner.capture_decode_graphs(worker.max_blocks_per_sequence, (1, 2, 4), capture=False)
    prompts = [{"prompt_token_ids": list(range(10 + i, 10 + i + 3 + 7 * i))} for i in range(7)]
    params = [SamplingParams(temperature=0, max_tokens=4 + 5 * i, logprobs=2, ignore_eos=True) for i in range(7)]
    outs = llm.generate(prompts, params)
    return [(o.outputs[0].token_ids, o.outputs[0].logprobs) for o in outs], llm.engine.executor.worker.runner.graphs


def test_padded_decode_buffers_give_the_eager_outputs(tiny_model):
    expected, _ = run(tiny_model, graphs=False)
    got, graphs = run(tiny_model, graphs=True)
    assert graphs.replays > 10  # batches of 7..5 ran eagerly, 4..1 through the buffers (3 padded to 4)
    for (tokens, logprobs), (want_tokens, want_logprobs) in zip(got, expected):
        assert tokens == want_tokens
        for entry, want in zip(logprobs, want_logprobs):
            assert entry.keys() == want.keys()
            assert list(entry.values()) == pytest.approx(list(want.values()), abs=1e-5)


def test_sizes_padding_and_limits():
    from engine.kv_cache_manager import KVCacheLayout

    layout = KVCacheLayout(16, (None, 128), ((0, 0), (1, 0)), 1)
    graphs = DecodeGraphs(lambda *a: None, layout, max_blocks_per_seq=8, device="cpu", batch_sizes=(8, 1, 2, 4, 4),
                          capture=False)
    assert graphs.batch_sizes == (1, 2, 4, 8)
    assert [graphs.padded_size(b) for b in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]
    assert graphs.can_run(8, 8, 8) and not graphs.can_run(9, 9, 1)  # more requests than the largest size
    assert not graphs.can_run(5, 4, 1)  # a prefill token in the step
    assert not graphs.can_run(2, 2, 9)  # a block table wider than the buffers
    assert graphs.buf.query_start_loc.tolist() == list(range(9))


@pytest.mark.gpu
def test_captured_graphs_give_the_eager_tokens_on_cuda(tiny_model):
    """On a GPU (make test-gpu): the kernel backend with graphs captured at start-up against enforce_eager."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    prompts = [{"prompt_token_ids": list(range(10 + i, 30 + 3 * i))} for i in range(5)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outs = {}
    for eager in (True, False):
        llm = LLM(tiny_model, dtype="bfloat16", device="cuda", kv_cache_memory=64 << 20, max_num_seqs=8,
                  enforce_eager=eager, cuda_graph_batch_sizes=(1, 2, 4, 8))
        outs[eager] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        graphs = llm.engine.executor.worker.runner.graphs
        assert (graphs is None) == eager and (eager or graphs.replays > 0)
    assert outs[False] == outs[True]

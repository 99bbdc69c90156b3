"""The offline API and CLI: generation through `LLM` equals transformers' greedy output; chat parses channels."""

import json
import subprocess
import sys

import pytest

from engine import LLM, SamplingParams
from tests.hf_oracle import hf_greedy


@pytest.fixture(scope="module")
def llm(tiny_model):
    return LLM(model=tiny_model, dtype="float32", device="cpu")


def test_greedy_generation_and_logprobs_match_transformers(llm, tiny_model):
    prompt = list(range(100, 140))  # longer than the sliding window (16)
    result = llm.generate([{"prompt_token_ids": prompt}], SamplingParams(temperature=0, max_tokens=64, logprobs=5,
                                                                           ignore_eos=True))[0]
    out = result.outputs[0]
    expected, expected_logprobs = hf_greedy(tiny_model, prompt, 64)
    assert out.token_ids == expected and out.finish_reason == "length"
    for step, (token, entry) in enumerate(zip(out.token_ids, out.logprobs)):
        assert token in entry and len(entry) == 5  # the chosen token is the top-1 here
        for tid, lp in entry.items():
            assert abs(lp - expected_logprobs[step, tid].item()) < 1e-4


def test_text_prompt_and_string_decoding(llm):
    result = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=5))[0]
    assert result.prompt == "The capital of France is"
    assert result.prompt_token_ids == llm.tokenizer.encode("The capital of France is")
    assert result.outputs[0].text == llm.tokenizer.decode(result.outputs[0].token_ids)


def test_seeded_sampling_is_reproducible(llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, max_tokens=8, seed=11)
    a = llm.generate(["one", "two"], params)
    b = llm.generate(["two"], params)
    assert a[1].outputs[0].token_ids == b[0].outputs[0].token_ids


def test_stop_token_ids_and_max_tokens(llm):
    greedy = llm.generate({"prompt_token_ids": [5, 6, 7]}, SamplingParams(temperature=0, max_tokens=6))[0]
    third = greedy.outputs[0].token_ids[2]
    stopped = llm.generate({"prompt_token_ids": [5, 6, 7]},
                           SamplingParams(temperature=0, max_tokens=6, stop_token_ids=[third]))[0].outputs[0]
    assert stopped.token_ids == greedy.outputs[0].token_ids[:3]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == third


def test_token_ids_only(llm):
    """detokenize=False (vLLM's name): the same tokens, no text; stop strings, matched in the text, are refused."""
    full = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=8))[0].outputs[0]
    ids = llm.generate("The capital of France is", SamplingParams(temperature=0, max_tokens=8, detokenize=False))[0]
    assert ids.outputs[0].token_ids == full.token_ids and full.text and ids.outputs[0].text == ""
    with pytest.raises(ValueError, match="stop must be empty when detokenize is False"):
        SamplingParams(stop=["."], detokenize=False)


@pytest.mark.parametrize("prompt, message", [
    ({"prompt_token_ids": [1, 201088]}, "prompt_token_ids must be in [0, 201088)"),
    ({"prompt_token_ids": []}, "non-empty list of token ids"),
])
def test_bad_prompts(llm, prompt, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        llm.generate(prompt, SamplingParams(max_tokens=1))


def test_chat_renders_with_harmony_and_parses_channels(llm):
    result = llm.chat([{"role": "user", "content": "Say hi"}], SamplingParams(temperature=0, max_tokens=12),
                      reasoning_effort="low")
    # a random model rarely follows harmony: whatever it emits must come back parsed or flagged, never raise
    assert result.finish_reason in ("stop", "length") and len(result.token_ids) <= 12
    assert isinstance(result.analysis, str) and isinstance(result.final, str)
    prompt = llm.tokenizer.render_chat([{"role": "user", "content": "Say hi"}], reasoning_effort="low")
    assert llm.tokenizer.decode(prompt).endswith("<|start|>assistant")


def test_cli_generate_json(tiny_model):
    cmd = [sys.executable, "-m", "engine.cli", "generate", "--model", str(tiny_model), "--prompt-ids", "1,2,3",
           "--max-tokens", "4", "--temperature", "0", "--dtype", "float32", "--json"]
    record = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    llm = LLM(model=tiny_model, dtype="float32", device="cpu")
    expected = llm.generate({"prompt_token_ids": [1, 2, 3]}, SamplingParams(temperature=0, max_tokens=4))[0]
    assert record["token_ids"] == expected.outputs[0].token_ids and record["finish_reason"] == "length"


def test_cli_make_tiny_model(tmp_path):
    cmd = [sys.executable, "-m", "engine.cli", "make-tiny-model", str(tmp_path / "m"), "--seed", "4", "--layers", "1",
           "--experts", "2", "--experts-per-token", "1", "--hidden", "32", "--heads", "2", "--kv-heads", "1",
           "--head-dim", "8", "--sliding-window", "4", "--vocab", "300", "--format", "original"]
    subprocess.run(cmd, check=True, capture_output=True)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["num_experts"] == 2 and config["sliding_window"] == 4 and config["vocab_size"] == 300
    twice = tmp_path / "again"
    subprocess.run(cmd[:4] + [str(twice)] + cmd[5:], check=True, capture_output=True)
    assert (twice / "model.safetensors").read_bytes() == (tmp_path / "m" / "model.safetensors").read_bytes()

"""transformers' GptOssForCausalLM as the oracle, loaded from the same generated checkpoint, in fp32."""

import functools
import logging

import torch


def load_hf_model(path):
    """The oracle in fp32, its MXFP4 experts decoded on load. `dequantize=True` is said outright: transformers 5.25
    otherwise fetches its MXFP4 kernels from the Hugging Face Hub (no network in CI) whenever triton is installed."""
    from transformers import GptOssForCausalLM, Mxfp4Config
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = GptOssForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager",
                                              quantization_config=Mxfp4Config(dequantize=True))
    return model.float().eval()


@functools.lru_cache(maxsize=4)
def hf_model(path):
    return load_hf_model(path)


@torch.no_grad()
def hf_logits(path, ids: list[int]) -> torch.Tensor:
    return hf_model(path)(torch.tensor([ids])).logits[0].float()


@torch.no_grad()
def hf_greedy(path, ids: list[int], n: int) -> tuple[list[int], torch.Tensor]:
    """(n greedy tokens, their full-vocabulary logprobs [n, V]); eos suppressed so exactly n come back."""
    out = hf_model(path).generate(
        torch.tensor([ids]), do_sample=False, max_new_tokens=n, min_new_tokens=n, output_logits=True,
        return_dict_in_generate=True, pad_token_id=0, temperature=None, top_p=None, top_k=None)
    tokens = out.sequences[0, len(ids):].tolist()
    return tokens, torch.log_softmax(torch.stack(out.logits)[:, 0].float(), dim=-1)

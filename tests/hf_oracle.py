"""transformers' GptOssForCausalLM as the oracle, loaded from the same generated checkpoint, in fp32."""

import functools
import logging

import torch


@functools.lru_cache(maxsize=4)
def hf_model(path):
    from transformers import GptOssForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    model = GptOssForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    return model.float().eval()


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

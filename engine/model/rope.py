"""YaRN rotary position embedding for gpt-oss (half-split: dimension i pairs with i + d/2).

Source: the YaRN paper (Peng et al., 2023, arXiv:2309.00071) as gpt-oss and transformers' `_compute_yarn_parameters`
implement it: frequencies below the `beta_slow` correction dimension are interpolated by `factor`, those above
`beta_fast` are kept, a linear ramp blends between; cos and sin are scaled by 0.1 * ln(factor) + 1.
"""

import math

import torch

from engine.model.config import GptOssConfig


def yarn_inv_freq(config: GptOssConfig) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim / 2] fp32, the attention scale applied to cos and sin)."""
    d, base, factor = config.head_dim, config.rope_theta, config.rope_scaling_factor
    freq = base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)

    def correction_dim(rotations: float) -> float:
        return d * math.log(config.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(config.rope_beta_fast), correction_dim(config.rope_beta_slow)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    inv_freq = (1 / (factor * freq)) * ramp + (1 / freq) * (1 - ramp)
    return inv_freq, 0.1 * math.log(factor) + 1.0

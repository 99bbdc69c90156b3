"""The model's architecture: the shape of a gpt-oss checkpoint, read from HF `config.json` or `original/config.json`.

One typed, validated dataclass for both layouts (`GptOssConfig`, transformers' name for the same file). Errors
name the file, the key and what to change. How the engine runs the model (path, dtype, context limit) is
`engine.config.ModelConfig`, which points at the checkpoint this describes.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

SLIDING = "sliding_attention"
FULL = "full_attention"


class ConfigError(ValueError):
    """A config.json that is missing keys or whose values contradict each other."""


@dataclass(frozen=True)
class GptOssConfig:
    """One checkpoint's architecture (D hidden, I intermediate per expert, Hq query / KV key-value heads)."""

    num_hidden_layers: int
    num_experts: int
    experts_per_token: int
    hidden_size: int  # D
    intermediate_size: int  # I, per expert
    num_attention_heads: int  # Hq
    num_key_value_heads: int  # KV
    head_dim: int
    vocab_size: int
    sliding_window: int  # keys visible to a sliding layer, the query's own included
    layer_types: tuple[str, ...]  # SLIDING or FULL per layer
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    original_max_position_embeddings: int = 4096
    max_position_embeddings: int = 131072
    swiglu_limit: float = 7.0
    rms_norm_eps: float = 1e-5
    eos_token_ids: tuple[int, ...] = (200002, 199999, 200012)
    pad_token_id: int = 199999
    layout: str = "hf"  # which file it was read from: "hf" or "original"
    extra: dict = field(default_factory=dict, compare=False, repr=False)  # keys we carry but do not use

    def __post_init__(self):
        self._check_positive()
        self._check_consistent()

    def _check_positive(self):
        for name in ("num_hidden_layers", "num_experts", "experts_per_token", "hidden_size", "intermediate_size",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size", "sliding_window",
                     "max_position_embeddings", "original_max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("rope_theta", "rope_scaling_factor", "swiglu_limit", "rms_norm_eps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")

    def _check_consistent(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_key_value_heads}): each KV head serves a whole group of query heads")
        if self.experts_per_token > self.num_experts:
            raise ConfigError(f"experts_per_token ({self.experts_per_token}) cannot exceed num_experts "
                              f"({self.num_experts})")
        for name in ("hidden_size", "intermediate_size"):
            if getattr(self, name) % 32:
                raise ConfigError(f"{name} ({getattr(self, name)}) must be a multiple of 32, the MXFP4 block size")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim ({self.head_dim}) must be even for rotary embeddings")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is "
                              f"{self.num_hidden_layers}")
        bad = sorted(set(self.layer_types) - {SLIDING, FULL})
        if bad:
            raise ConfigError(f"layer_types may hold only {SLIDING!r} or {FULL!r}, found {bad}")

    # ---- derived ----
    @property
    def q_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def window_of(self, layer: int) -> int | None:
        """Keys a query of this layer sees (None: all earlier keys)."""
        return self.sliding_window if self.layer_types[layer] == SLIDING else None

    def to_hf_dict(self) -> dict:
        """The HF `config.json` form (what transformers' GptOssConfig reads)."""
        return {
            "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss",
            "num_hidden_layers": self.num_hidden_layers, "num_local_experts": self.num_experts,
            "num_experts_per_tok": self.experts_per_token, "experts_per_token": self.experts_per_token,
            "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "vocab_size": self.vocab_size, "sliding_window": self.sliding_window,
            "layer_types": list(self.layer_types), "rope_theta": self.rope_theta,
            "rope_scaling": self._rope_scaling(), "max_position_embeddings": self.max_position_embeddings,
            "initial_context_length": self.original_max_position_embeddings,
            "swiglu_limit": self.swiglu_limit, "rms_norm_eps": self.rms_norm_eps, "attention_bias": True,
            "attention_dropout": 0.0, "hidden_act": "silu", "tie_word_embeddings": False,
            "eos_token_id": self.eos_token_ids[0], "pad_token_id": self.pad_token_id, "torch_dtype": "bfloat16",
            "output_router_logits": False, "router_aux_loss_coef": 0.9, "use_cache": True,
            "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
                "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
        }

    def _rope_scaling(self) -> dict:
        return {"rope_type": "yarn", "factor": self.rope_scaling_factor, "beta_fast": self.rope_beta_fast,
                "beta_slow": self.rope_beta_slow, "truncate": False,
                "original_max_position_embeddings": self.original_max_position_embeddings}

    def to_original_dict(self) -> dict:
        """The `original/config.json` form."""
        return {
            "num_hidden_layers": self.num_hidden_layers, "num_experts": self.num_experts,
            "experts_per_token": self.experts_per_token, "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size,
            "swiglu_limit": self.swiglu_limit, "head_dim": self.head_dim,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "sliding_window": self.sliding_window, "initial_context_length": self.original_max_position_embeddings,
            "rope_theta": self.rope_theta, "rope_scaling_factor": self.rope_scaling_factor,
            "rope_ntk_alpha": self.rope_beta_slow, "rope_ntk_beta": self.rope_beta_fast,
        }

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("extra")
        return d


def _require(raw: dict, key: str, source: Path):
    if key not in raw:
        raise ConfigError(f"{source}: missing key {key!r}")
    return raw[key]


def _alternating_layers(n: int) -> tuple[str, ...]:
    """gpt-oss's pattern: even layers slide, odd layers see everything."""
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(n))


def _from_hf(raw: dict, source: Path) -> GptOssConfig:
    rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if rope.get("rope_type", "yarn") != "yarn":
        raise ConfigError(f"{source}: rope_scaling.rope_type must be 'yarn', got {rope.get('rope_type')!r}")
    n_layers = _require(raw, "num_hidden_layers", source)
    eos = raw.get("eos_token_id", 200002)
    return GptOssConfig(
        num_hidden_layers=n_layers, num_experts=_require(raw, "num_local_experts", source),
        experts_per_token=_require(raw, "num_experts_per_tok", source),
        hidden_size=_require(raw, "hidden_size", source), intermediate_size=_require(raw, "intermediate_size", source),
        num_attention_heads=_require(raw, "num_attention_heads", source),
        num_key_value_heads=_require(raw, "num_key_value_heads", source), head_dim=_require(raw, "head_dim", source),
        vocab_size=_require(raw, "vocab_size", source), sliding_window=_require(raw, "sliding_window", source),
        layer_types=tuple(raw.get("layer_types") or _alternating_layers(n_layers)),
        rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 150000.0))),
        rope_scaling_factor=float(rope.get("factor", 32.0)), rope_beta_fast=float(rope.get("beta_fast", 32.0)),
        rope_beta_slow=float(rope.get("beta_slow", 1.0)),
        original_max_position_embeddings=int(rope.get("original_max_position_embeddings",
                                                      raw.get("initial_context_length", 4096))),
        max_position_embeddings=raw.get("max_position_embeddings", 131072),
        swiglu_limit=float(raw.get("swiglu_limit", 7.0)), rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
        eos_token_ids=tuple(eos) if isinstance(eos, list) else (eos,),
        pad_token_id=raw.get("pad_token_id", 199999), layout="hf",
    )


def _from_original(raw: dict, source: Path) -> GptOssConfig:
    n_layers = _require(raw, "num_hidden_layers", source)
    initial = int(raw.get("initial_context_length", 4096))
    factor = float(raw.get("rope_scaling_factor", 32.0))
    return GptOssConfig(
        num_hidden_layers=n_layers, num_experts=_require(raw, "num_experts", source),
        experts_per_token=_require(raw, "experts_per_token", source),
        hidden_size=_require(raw, "hidden_size", source), intermediate_size=_require(raw, "intermediate_size", source),
        num_attention_heads=_require(raw, "num_attention_heads", source),
        num_key_value_heads=_require(raw, "num_key_value_heads", source), head_dim=_require(raw, "head_dim", source),
        vocab_size=_require(raw, "vocab_size", source), sliding_window=_require(raw, "sliding_window", source),
        layer_types=_alternating_layers(n_layers), rope_theta=float(raw.get("rope_theta", 150000.0)),
        rope_scaling_factor=factor, rope_beta_fast=float(raw.get("rope_ntk_beta", 32.0)),
        rope_beta_slow=float(raw.get("rope_ntk_alpha", 1.0)), original_max_position_embeddings=initial,
        max_position_embeddings=int(initial * factor), swiglu_limit=float(raw.get("swiglu_limit", 7.0)),
        layout="original",
    )


def config_path(model_dir: str | Path) -> Path:
    """The config.json describing the weights in `model_dir` (the directory itself, else its original/)."""
    model_dir = Path(model_dir)
    for candidate in (model_dir / "config.json", model_dir / "original" / "config.json"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{model_dir}: no config.json (looked for config.json and original/config.json); "
                      "point --model at a gpt-oss checkpoint directory")


def load_config(model_dir: str | Path) -> GptOssConfig:
    """Read and validate the config of the checkpoint in `model_dir`, whichever layout it is in."""
    source = config_path(model_dir)
    try:
        raw = json.loads(source.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a JSON object")
    try:
        return _from_original(raw, source) if "num_experts" in raw else _from_hf(raw, source)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") if not str(e).startswith(str(source)) else e

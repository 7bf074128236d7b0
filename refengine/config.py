"""Frozen configuration dataclasses: what a model is, independent of where its weights came from."""

from __future__ import annotations

from dataclasses import dataclass, field

from refengine.errors import UnsupportedModelError

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """Rotary position embedding scaling, as Hugging Face names it (`rope_type`).

    default: inv_freq = theta^(-2i/D)
    linear:  positions divided by `factor` (same as inv_freq / factor)
    dynamic: NTK-aware; theta grows once a forward pass reaches beyond `original_max_position`
    llama3:  long wavelengths divided by `factor`, short kept, a smooth ramp between
             (`low_freq_factor`, `high_freq_factor`, `original_max_position`)
    """
    type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 0

    def __post_init__(self):
        if self.type not in ROPE_TYPES:
            raise UnsupportedModelError(
                f"rope_scaling type {self.type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
        if self.type != "default" and not self.factor > 0:
            raise UnsupportedModelError(f"rope_scaling factor must be > 0, got {self.factor}")


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-family decoder: the numbers the forward pass needs, nothing about file layout."""
    family: str                      # key of refengine.model.arch.FAMILIES
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                     "intermediate_size", "vocab_size"):
            if int(getattr(self, name)) <= 0:
                raise UnsupportedModelError(f"config field {name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise UnsupportedModelError(
                f"num_attention_heads ({self.num_heads}) is not a multiple of num_key_value_heads "
                f"({self.num_kv_heads})")
        if self.head_dim % 2:
            raise UnsupportedModelError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def qkv_size(self) -> int:
        """Rows of the fused qkv projection: [q heads | k heads | v heads] × head_dim."""
        return self.q_size + 2 * self.kv_size


# ---------------------------------------------------------------- engine (LMDeploy TurbomindEngineConfig names)

@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: `block_size` tokens per block; how many blocks `cache_max_entry_count` says."""
    block_size: int = 64
    cache_max_entry_count: float = 0.8    # (0, 1): fraction of free memory after the weights; >= 1: blocks
    enable_prefix_caching: bool = False


@dataclass(frozen=True)
class SchedulerConfig:
    max_batch_size: int = 128             # sequences in one step
    max_prefill_token_num: int = 8192     # tokens in one step (prefill chunks + one per decoding sequence)
    session_len: int = 4096               # tokens a session may hold: history + prompt + output


@dataclass(frozen=True)
class EngineConfig:
    """What a user sets; names as LMDeploy's TurbomindEngineConfig. session_len None: the model's context."""
    session_len: int | None = None
    max_batch_size: int = 128
    cache_max_entry_count: float = 0.8
    cache_block_seq_len: int = 64
    max_prefill_token_num: int = 8192
    enable_prefix_caching: bool = False
    lookahead: bool = True          # launch decode step n+1 before step n's tokens reach the host (core.py)

    def __post_init__(self):
        from refengine.engine.errors import EngineConfigError
        checks = [("session_len", self.session_len is None or self.session_len >= 2, "an integer >= 2"),
                  ("max_batch_size", self.max_batch_size >= 1, "an integer >= 1"),
                  ("cache_max_entry_count", self.cache_max_entry_count > 0,
                   "> 0 (a fraction of free memory below 1, a number of blocks from 1)"),
                  ("cache_block_seq_len", self.cache_block_seq_len >= 1, "an integer >= 1"),
                  ("max_prefill_token_num", self.max_prefill_token_num >= 1, "an integer >= 1")]
        for name, ok, want in checks:
            if not ok:
                raise EngineConfigError(f"{name} must be {want}, got {getattr(self, name)!r}")

    def cache_config(self) -> CacheConfig:
        return CacheConfig(self.cache_block_seq_len, self.cache_max_entry_count, self.enable_prefix_caching)

    def scheduler_config(self, session_len: int) -> SchedulerConfig:
        return SchedulerConfig(self.max_batch_size, self.max_prefill_token_num, session_len)

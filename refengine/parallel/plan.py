"""Which part of the model each tensor-parallel rank holds, and the checks that refuse a `--tp` that cannot work.

With tp ranks, rank r computes a contiguous block of the attention heads and of the MLP channels; the
hidden size is never split (every rank holds the whole residual stream):

    query heads   H    ->  H/tp per rank             rank r: [r·H/tp, (r+1)·H/tp)
    kv heads      KVH  ->  KVH/tp per rank           when tp divides KVH
                       ->  1 per rank, replicated    when KVH divides tp: rank r holds head r // (tp/KVH),
                                                     the head its query heads read (GQA group = H/KVH)
    intermediate  I    ->  I/tp per rank             rank r: [r·I/tp, (r+1)·I/tp)
    vocabulary    V    ->  ceil(V/tp) per rank       the last rank's block is short; padded with zero rows

A rank's query heads must all read its own KV heads in one uniform group (that is what paged attention
computes), which is why KVH and tp must divide one another. The int4 linears split along their input
(o and down, row-parallel) are cut between groups: the group size must divide each rank's share of the
input (H/tp·D for o, I/tp for down), since a group's scale and zero belong to exactly one rank.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from refengine.config import ModelConfig
from refengine.errors import RefengineError


class TensorParallelError(RefengineError):
    """A --tp that cannot run: not a power of two, more ranks than GPUs, or a model it does not split."""


@dataclass(frozen=True)
class RankShard:
    """The slices of the model that rank `rank` holds (ranges of heads, channels and vocabulary rows)."""
    rank: int
    q_heads: range
    kv_heads: range
    inter: range
    vocab: range        # real rows; the rank's LM-head block is padded to TPPlan.vocab_per_rank rows


@dataclass(frozen=True)
class TPPlan:
    cfg: ModelConfig
    tp: int

    @property
    def heads_per_rank(self) -> int:
        return self.cfg.num_heads // self.tp

    @property
    def kv_heads_per_rank(self) -> int:
        return max(1, self.cfg.num_kv_heads // self.tp)

    @property
    def kv_replicas(self) -> int:
        """How many ranks hold each KV head: 1 when tp divides KVH, tp/KVH when the heads are replicated."""
        return max(1, self.tp // self.cfg.num_kv_heads)

    @property
    def inter_per_rank(self) -> int:
        return self.cfg.intermediate_size // self.tp

    @property
    def vocab_per_rank(self) -> int:
        return -(-self.cfg.vocab_size // self.tp)

    def shard(self, rank: int) -> RankShard:
        if not 0 <= rank < self.tp:
            raise ValueError(f"rank {rank} outside [0, {self.tp})")
        hq, hkv, i, v = self.heads_per_rank, self.kv_heads_per_rank, self.inter_per_rank, self.vocab_per_rank
        kv_lo = (rank // self.kv_replicas) * hkv
        return RankShard(rank, range(rank * hq, (rank + 1) * hq), range(kv_lo, kv_lo + hkv),
                         range(rank * i, (rank + 1) * i),
                         range(min(rank * v, self.cfg.vocab_size), min((rank + 1) * v, self.cfg.vocab_size)))

    def local_config(self) -> ModelConfig:
        """The config of one rank's shard: a smaller model of the same hidden size (what LlamaModel and
        KVCache.allocate need to run a rank), vocab_size = the rank's padded LM-head rows."""
        return replace(self.cfg, num_heads=self.heads_per_rank, num_kv_heads=self.kv_heads_per_rank,
                       intermediate_size=self.inter_per_rank, vocab_size=self.vocab_per_rank)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def make_plan(cfg: ModelConfig, tp: int, group_size: int | None = None) -> TPPlan:
    """The plan for splitting `cfg` over tp ranks, or a TensorParallelError saying why it cannot be split."""
    if cfg.num_heads % tp:
        raise TensorParallelError(f"--tp {tp} does not divide the model's {cfg.num_heads} attention heads")
    kvh = cfg.num_kv_heads
    if kvh % tp and tp % kvh:
        raise TensorParallelError(f"--tp {tp} cannot split the model's {kvh} key-value heads: tp must divide "
                                  f"them, or they must divide tp (then each is replicated)")
    if cfg.intermediate_size % tp:
        raise TensorParallelError(f"--tp {tp} does not divide the model's MLP intermediate size "
                                  f"{cfg.intermediate_size}")
    plan = TPPlan(cfg, tp)
    if group_size is not None:
        shares = {"o_proj": plan.heads_per_rank * cfg.head_dim, "down_proj": plan.inter_per_rank}
        for name, share in shares.items():
            if share % group_size:
                raise TensorParallelError(
                    f"--tp {tp} gives each GPU {share} of {name}'s {share * tp} input channels, which the int4 "
                    f"group size {group_size} does not divide (choose a smaller --tp, or quantize with a group "
                    f"size that divides {share})")
    return plan


def check_tp(tp: int, config: ModelConfig, quant_group_size: int | None, visible_gpus: int | None) -> TPPlan:
    """Refuse a --tp that cannot run, with a one-line message, before any process starts; the plan otherwise.

    visible_gpus: the GPUs this process can see; None when the ranks are CPU processes (--backend numpy)."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise TensorParallelError(f"--tp must be a positive integer, got {tp!r}")
    if tp & (tp - 1):
        raise TensorParallelError(f"--tp {tp} is not a power of two (use 1, 2, 4 or 8)")
    if tp > 1 and visible_gpus is not None and tp > visible_gpus:
        seen = "none is" if visible_gpus == 0 else f"only {visible_gpus} {'is' if visible_gpus == 1 else 'are'}"
        raise TensorParallelError(f"--tp {tp} needs {_plural(tp, 'GPU')}, one per rank, but {seen} visible "
                                  f"(see CUDA_VISIBLE_DEVICES)")
    return make_plan(config, tp, quant_group_size)

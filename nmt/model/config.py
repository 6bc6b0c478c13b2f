"""Model configuration: one frozen dataclass, and the paper's architectures as named presets."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from nmt.tokens import PAD


@dataclass(frozen=True)
class ModelConfig:
    """Transformer hyper-parameters; names follow the paper (§3, Table 3)."""

    vocab_size: int = 37000
    d_model: int = 512
    d_ff: int = 2048
    heads: int = 8
    d_k: int | None = None  # queries and keys per head; None: d_model / heads (Table 3, rows A and B vary it)
    d_v: int | None = None  # values per head; None: d_model / heads
    encoder_layers: int = 6
    decoder_layers: int = 6
    dropout: float = 0.1  # P_drop (§5.4): embeddings+PE and every sub-layer output before the residual add
    attention_dropout: float = 0.0  # not in the paper; t2t v1.0 and fairseq default to 0
    relu_dropout: float = 0.0  # likewise
    pre_norm: bool = False  # the paper is post-norm: LayerNorm(x + Sublayer(x)) (§3.1)
    share_embeddings: bool = True  # one matrix for source, target and pre-softmax (§3.4); needs a joint vocabulary
    layer_norm_eps: float = 1e-6  # tensor2tensor's value
    max_positions: int = 1024
    positions: str = "sinusoidal"  # or "learned": Table 3, row E (embeddings per position, trained)

    def __post_init__(self) -> None:
        if (self.d_k is None or self.d_v is None) and self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}; give d_k and d_v")
        if self.positions not in ("sinusoidal", "learned"):
            raise ValueError(f"positions must be 'sinusoidal' or 'learned', not '{self.positions}'")

    @property
    def key_dim(self) -> int:
        return self.d_k or self.d_model // self.heads

    @property
    def value_dim(self) -> int:
        return self.d_v or self.d_model // self.heads


PRESETS: dict[str, ModelConfig] = {
    "base": ModelConfig(),
    # Big: dropout 0.3 is the paper's EN-DE value (Table 3); its EN-FR model used 0.1 (§6.1).
    "big": ModelConfig(d_model=1024, d_ff=4096, heads=16, dropout=0.3),
    "tiny": ModelConfig(d_model=128, d_ff=512, heads=4, encoder_layers=2, decoder_layers=2, dropout=0.1),
}


def config_from_dict(values: dict) -> ModelConfig:
    """The ``ModelConfig`` a checkpoint stored as plain data.

    Checkpoints of version 0.1 also stored ``pad_id``; the id is now fixed (``nmt.tokens.PAD``).
    """
    values = dict(values)
    pad = values.pop("pad_id", PAD)
    if pad != PAD:
        raise ValueError(f"padding id {pad} is not {PAD}")
    return ModelConfig(**values)


def model_config(arch: str, **overrides: object) -> ModelConfig:
    """A preset with any field overridden; unknown presets or fields raise ValueError naming them."""
    if arch not in PRESETS:
        raise ValueError(f"unknown architecture '{arch}' (known: {', '.join(PRESETS)})")
    names = {f.name for f in fields(ModelConfig)}
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"unknown model field(s) {', '.join(sorted(unknown))}")
    return replace(PRESETS[arch], **{k: v for k, v in overrides.items() if v is not None})


def body_parameters(cfg: ModelConfig) -> int:
    """Closed-form parameter count outside the embedding (with biases), as derived in docs/architecture.md.

    Attention 4d²+4d (with d_k = d_v = d/h; generally d·h·(2d_k+d_v) + h·(2d_k+d_v) + h·d_v·d + d), feed-forward
    2·d·d_ff+d_ff+d, layer norm 2d; the encoder layer has one attention and two norms, the decoder layer two
    attentions and three norms; pre-norm adds one final norm per stack.
    """
    d, f = cfg.d_model, cfg.d_ff
    qkv = cfg.heads * (2 * cfg.key_dim + cfg.value_dim)  # projections' outputs: 3d when d_k = d_v = d/h
    attention = d * qkv + qkv + cfg.heads * cfg.value_dim * d + d
    ffn, norm = 2 * d * f + f + d, 2 * d
    encoder = cfg.encoder_layers * (attention + ffn + 2 * norm)
    decoder = cfg.decoder_layers * (2 * attention + ffn + 3 * norm)
    return encoder + decoder + (2 * norm if cfg.pre_norm else 0)


def total_parameters(cfg: ModelConfig) -> int:
    embeddings = cfg.vocab_size * cfg.d_model * (1 if cfg.share_embeddings else 3)
    positions = cfg.max_positions * cfg.d_model if cfg.positions == "learned" else 0
    return body_parameters(cfg) + embeddings + positions


def train_flops_per_target_token(cfg: ModelConfig, src_len: float, tgt_len: float) -> float:
    """Training FLOPs (forward + backward = 3 × forward, 2 FLOPs per multiply-add) per target token.

    Counts the matrix multiplications: every projection of both stacks (the encoder's scaled by the
    source/target length ratio), cross-attention keys/values over the source, the pre-softmax projection,
    and the attention score and value products.
    """
    d, f, V = cfg.d_model, cfg.d_ff, cfg.vocab_size
    a, b = cfg.heads * cfg.key_dim, cfg.heads * cfg.value_dim  # both d unless d_k, d_v are set
    ratio = src_len / max(tgt_len, 1e-9)
    self_projections = d * (2 * a + b) + b * d  # 4d²
    enc = cfg.encoder_layers * (self_projections + 2 * d * f + src_len * (a + b)) * ratio
    dec = cfg.decoder_layers * (self_projections + 2 * d * f + (d * a + b * d) + tgt_len * (a + b) / 2 + src_len * (a + b))
    cross_kv = cfg.decoder_layers * d * (a + b) * ratio
    return 6.0 * (enc + dec + cross_kv + d * V)

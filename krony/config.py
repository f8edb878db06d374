"""The typed configs of krony: the model's shape and what a run trains. Plain dataclasses with
a docstring per field and no torch import, so a run's config is checked in a blink before
anything heavy is imported (`krony.validate`), and the code that builds models, optimizers and
losses reads the same fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

INIT_METHODS = ("vanloan", "prune", "random")
"""Initialisations of the Kronecker factors, by name (`krony.inits.INITS` maps them to functions)."""
KINDS = ("krony", "distil", "dense")
"""What a run trains: krony (compressed FFNs), distil (a shallower student), dense (the teacher as is)."""
SCHEDULES = ("constant", "cosine", "wsd")
"""Learning-rate schedules of `krony.train.optim`."""
LAYER_SETS = ("all", "odd", "even")
"""Named sets of blocks to compress (besides a list of indices): odd is TQCompressedGPT2's choice."""
ACTIVATIONS = ("gelu_new", "gelu")
"""FFN activations by their HF names: gelu_new (tanh approximation, GPT-2's) | gelu (exact erf, the authors' nanoGPT fork)."""
DECAY_PARTS = ("wte", "wpe", "scalars")
"""Parameters `optim.decay_overrides` can give their own weight decay."""
EVAL_PROTOCOLS = ("paper", "sliding", "harness")
"""Evaluation protocols (`krony.evaluate`): krony's paper and sliding windows, lm-evaluation-harness."""
EVAL_DATASETS = ("wikitext103", "wikitext2", "lambada")
"""Datasets of the paper and sliding protocols (the harness takes lm-eval task names)."""
HARNESS_TASKS = ("wikitext", "lambada_openai")
"""Default lm-eval tasks of the harness protocol, the two that also run offline from local files."""
DISTILGPT2_LAYERS = [0, 2, 4, 7, 9, 11]
"""Teacher blocks DistilGPT2 copies into its 6-block student."""


@dataclass
class GPTConfig:
    """Shape and regularisation of a GPT-2 model."""

    block_size: int = 1024
    """Context length: the number of learned positions (HF `n_positions`)."""
    vocab_size: int = 50257
    """Token vocabulary (GPT-2 BPE: 50257)."""
    n_layer: int = 12
    """Transformer blocks."""
    n_head: int = 12
    """Attention heads per block; must divide `n_embd`."""
    n_embd: int = 768
    """Residual width d."""
    n_inner: int | None = None
    """FFN width; None means 4 * n_embd (3072 for GPT-2 small)."""
    dropout: float = 0.0
    """Dropout on embeddings, attention probabilities and residual branches (the paper used 0)."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon (HF `layer_norm_epsilon`)."""
    tie_embeddings: bool = True
    """Share `wte` and `lm_head` weights, as GPT-2 does."""
    activation: str = "gelu_new"
    """FFN activation: gelu_new (tanh approximation, GPT-2's) | gelu (exact erf)."""

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_head={self.n_head} must divide n_embd={self.n_embd}")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")

    @property
    def ffn_dim(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """A named size ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2") with overrides."""
        key = name.split("/")[-1].lower()
        if key not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid choices: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[key], **overrides})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**d)


PRESETS: dict[str, dict[str, int]] = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "distilgpt2": dict(n_layer=6, n_head=12, n_embd=768),  # 82M
}


@dataclass
class ModelConfig:
    """The model a run trains: which teacher checkpoint, and what student is made of it."""

    kind: str = "krony"
    """krony (compress the teacher's FFNs) | distil (keep some teacher blocks) | dense (the teacher as is)."""
    teacher: str | None = "gpt2"
    """Hub name or local path of the dense checkpoint; None: random weights from `teacher_config`."""
    teacher_config: dict[str, Any] | None = None
    """For teacher=None: {"preset": "gpt2", ...GPTConfig overrides}, e.g. n_layer=2 for smoke runs."""
    scheme: str = "81m"
    """krony: Table-1 name or "m1xn1" A dims of c_fc."""
    init: str = "vanloan"
    """krony: vanloan | prune | random."""
    init_options: dict[str, Any] = field(default_factory=dict)
    """krony: options of the init, e.g. {normalize: true} or {fill: 0.1}."""
    factors: int = 1
    """krony: Kronecker products per matrix (r)."""
    scalars: bool = False
    """krony: learnable scalar per factor."""
    layers: Any = "all"
    """krony: blocks to compress: all | odd | even | a list of indices."""
    student_layers: list[int] = field(default_factory=lambda: list(DISTILGPT2_LAYERS))
    """distil: teacher blocks copied into the student (DistilGPT2: 0, 2, 4, 7, 9, 11)."""
    dropout: float = 0.0
    """Dropout of the student during training (the paper used 0)."""
    compile: bool = False
    """torch.compile the student's forward."""
    untie_head: bool = False
    """Give the student its own lm_head (a copy of wte), as TQCompressedGPT2 and KnGPT-2 train."""
    activation: str | None = None
    """The student's FFN activation: gelu_new | gelu (exact erf, as the authors' code ran); None: the teacher's."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.teacher is None and not self.teacher_config:
            raise ValueError("model.teacher is null: set model.teacher_config (a preset and overrides) for random weights")


@dataclass
class OptimConfig:
    """AdamW and its schedule. Defaults follow the authors' code."""

    lr: float = 6e-4
    """Peak learning rate."""
    min_lr: float = 6e-5
    """Floor of the cosine and wsd schedules."""
    weight_decay: float = 0.1
    """Decoupled weight decay on weight matrices and Kronecker factors only."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    schedule: str = "cosine"
    """constant | cosine (warm-up then cosine to min_lr) | wsd (warm-up, stable, decay to min_lr)."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to lr."""
    decay_fraction: float = 0.2
    """wsd: fraction of the total steps spent decaying at the end."""
    fused: bool | None = None
    """Fused AdamW kernel; None: on when training on CUDA."""
    decay_overrides: dict[str, float] = field(default_factory=dict)
    """Weight decay of named parameters instead of the default groups: wte, wpe, scalars
    (the authors' code: {wte: 0.01, scalars: 0.01, wpe: 0.1})."""

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        self.decay_overrides = {str(k): float(v) for k, v in dict(self.decay_overrides).items()}
        unknown = sorted(set(self.decay_overrides) - set(DECAY_PARTS))
        if unknown:
            raise ValueError(f"optim.decay_overrides: unknown parts {unknown}; valid: {', '.join(DECAY_PARTS)}")
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be > 0, got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"optim.decay_fraction must be in [0, 1], got {self.decay_fraction}")


@dataclass
class FreezeConfig:
    """What stays fixed during training (all off: train every weight)."""

    embeddings: bool = False
    """Freeze `wte` (and so the tied `lm_head`) and `wpe`."""
    attention: bool = False
    """Freeze every attention `c_attn` and `c_proj`."""
    layer_norms: bool = False
    """Freeze every LayerNorm (ln_1, ln_2, ln_f)."""
    scalars: bool = False
    """Freeze the Kronecker scalars s_i."""
    scalars_value: float | None = None
    """Set every scalar to this value and freeze it (the paper observed they settle near 4)."""


@dataclass
class DistillConfig:
    """Distillation from the teacher: alpha_ce * KL(T) * T^2 + alpha_clm * CE + alpha_cos * cosine."""

    enabled: bool = False
    """Distil from the teacher (off: plain next-token cross-entropy)."""
    temperature: float = 2.0
    """Softmax temperature T of both distributions in the KL term."""
    alpha_ce: float = 0.5
    """Weight of the soft-target KL term (scaled by T^2)."""
    alpha_clm: float = 0.5
    """Weight of the hard-target next-token cross-entropy."""
    alpha_cos: float = 0.0
    """Weight of the cosine loss between student and teacher last hidden states (0: off)."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"distill.temperature must be > 0, got {self.temperature}")
        if min(self.alpha_ce, self.alpha_clm, self.alpha_cos) < 0:
            raise ValueError("distill.alpha_ce, alpha_clm and alpha_cos must be >= 0")


__all__ = [
    "DISTILGPT2_LAYERS", "INIT_METHODS", "KINDS", "LAYER_SETS", "PRESETS", "SCHEDULES",
    "DistillConfig", "FreezeConfig", "GPTConfig", "ModelConfig", "OptimConfig",
]

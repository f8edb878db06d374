"""The typed configs of krony: the model's shape and what a run trains. Plain dataclasses with
a docstring per field and no torch import. Each checks its own fields in `__post_init__` (the
one place a single value is checked); `from_config` builds one from a composed Hydra node and
reports an unknown key, a wrong type or a bad value as a `ConfigError` naming the key the user
typed. The run config's `model`, `optim`, `freeze` and `distill` nodes name these classes in
their `_target_`, and `hydra.utils.instantiate` builds them for the LightningModule.
"""

from __future__ import annotations

import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Mapping

from krony.structures import REGISTRY, STRUCTURE_NAMES
from krony.suggest import suggest

INIT_METHODS = ("vanloan", "prune", "random")
"""Initialisations of the Kronecker factors, by name (`krony.layers.kronecker_init.INITS` maps them to functions)."""
CONVENTIONS = ("table1", "no_output_embedding", "non_embedding")
"""Parameter counting conventions (`krony.compression.count_params`, docs/method.md)."""
MATCHES = ("params", "flops")
"""What lowrank and monarch match of their scheme's Kronecker layers: parameter count or multiply-adds per token."""
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
"""Evaluation protocols (`krony.eval.protocols`): krony's paper and sliding windows, lm-evaluation-harness."""
EVAL_DATASETS = ("wikitext103", "wikitext2", "lambada")
"""Datasets of the paper and sliding protocols (the harness takes lm-eval task names)."""
HARNESS_TASKS = ("wikitext", "lambada_openai")
"""Default lm-eval tasks of the harness protocol, the two that also run offline from local files."""
DISTILGPT2_LAYERS = [0, 2, 4, 7, 9, 11]
"""Teacher blocks DistilGPT2 copies into its 6-block student."""
INIT_OPTIONS = {"vanloan": ("normalize", "svd", "niter"), "prune": ("offsets", "fill"), "random": ("std", "generator")}
"""The options each init takes (`model.init_options`); the init functions' signatures, checked by a test."""


class ConfigError(ValueError):
    """A config value that cannot work: `key`, `value` and a one-line `hint` of what is valid."""

    def __init__(self, key: str, value: Any, hint: str) -> None:
        self.key, self.value, self.hint = key, value, hint
        super().__init__(f"{key}={value!r}: {hint}")


def check_factors(factors: Any, key: str = "factors") -> int:
    """`factors` as an int; `ConfigError` unless it is an integer >= 1 (the one place this is checked)."""
    if isinstance(factors, bool) or not isinstance(factors, (int, float)) or int(factors) != factors or factors < 1:
        raise ConfigError(key, factors, "the number of Kronecker factors must be an integer >= 1")
    return int(factors)


def check_init_for(structure: str, init: str) -> None:
    """`ConfigError` unless `structure` takes the init `init` (the registry's `inits`)."""
    inits = REGISTRY[structure].inits
    if init not in inits:
        raise ConfigError("init", init, f"not an init of {structure}; it takes {', '.join(inits)} "
                          "(vanloan: its optimal projection)")


def check_layers(layers: Any) -> None:
    """`ConfigError` unless `layers` is a named set of blocks or a non-empty list of block indices."""
    if not (layers in LAYER_SETS or isinstance(layers, (list, tuple)) and layers
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)):
        raise ConfigError("layers", layers, f"give {', '.join(LAYER_SETS)} or a list of block indices such as [0, 2, 4]")


def check_choice(key: str, value: Any, choices: typing.Sequence[str]) -> None:
    """`ConfigError` unless `value` is one of `choices` (with a suggestion when one is close)."""
    if value not in choices:
        raise ConfigError(key, value, f"valid choices: {', '.join(choices)}{suggest(value, choices)}")


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
            tuple: "a list", dict: "a mapping"}.get(origin or hint, str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value fits a type hint (ints pass for floats; lists for tuples)."""
    if hint is Any:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


_INTERPOLATION = re.compile(r"^\$\{([\w.]+)\}$")


def from_config(cls: type, values: Mapping[str, Any], prefix: str, raw: Mapping[str, Any] | None = None) -> Any:
    """An instance of the dataclass `cls` from a config node (`_target_` ignored).

    Unknown keys, values of the wrong type and values `__post_init__` refuses raise a
    `ConfigError` named "<prefix>.<field>", or the key the field interpolates (`raw` is the
    unresolved node: `scheme: ${decomp}` reports a bad scheme as `decomp`).
    """
    def key_of(name: str) -> str:
        source = (raw or {}).get(name)
        m = _INTERPOLATION.match(source) if isinstance(source, str) else None
        return m.group(1) if m else f"{prefix}.{name}"

    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    kwargs = {k: v for k, v in values.items() if k != "_target_"}
    for name, value in kwargs.items():
        if name not in known:
            raise ConfigError(f"{prefix}.{name}", value, f"unknown key{suggest(name, known)}; valid keys: {', '.join(known)}")
        if not _matches(value, hints[name]):
            advice = cls.type_advice(name, value) if hasattr(cls, "type_advice") else ""
            raise ConfigError(key_of(name), value, f"must be {_type_name(hints[name])}{advice}")
    try:
        return cls(**kwargs)
    except ConfigError as e:
        name = e.key.split(".")[0]
        key = key_of(name) + e.key[len(name):] if name in known else f"{prefix}.{e.key}"
        raise ConfigError(key, e.value, e.hint) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass (or a mapping) as a plain dict, for checkpoints and logs."""
    return asdict(cfg) if is_dataclass(cfg) else dict(cfg or {})


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
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(name, getattr(self, name), "must be >= 1")
        if self.n_embd % self.n_head:
            raise ConfigError("n_head", self.n_head, f"must divide n_embd={self.n_embd}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", self.dropout, "must be in [0, 1)")
        check_choice("activation", self.activation, ACTIVATIONS)

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
class CompressConfig:
    """What `krony.compress` does to a model: which matrices, which structure, what size, which init.

    The size is one of `scheme` (Kronecker A dims of the expand matrices, or a Table-1 name),
    `ffn_fraction` (any model: keep this fraction of each targeted matrix's parameters) or
    `budget` (lowrank / monarch: the whole model's parameter count). With none of them the
    paper's 81m scheme is used."""

    structure: str = "kronecker"
    """kronecker | lowrank | monarch (`krony.structures.REGISTRY`)."""
    scheme: Any = None
    """A scheme name ("81m"), A dims of the expand matrices ("768x768" or [768, 768]; contract
    matrices take them transposed), "ffnNN" (= ffn_fraction NN/100), or an int: parameters per
    matrix. Lowrank and monarch are sized to its Kronecker parameter count."""
    ffn_fraction: float | None = None
    """Keep this fraction of every targeted matrix's parameters, in (0, 1]: Kronecker dims from
    `krony.schemes.choose_dims`, the others' rank from their parameter count."""
    budget: int | None = None
    """lowrank / monarch: the whole model's parameter count to aim at (Table-1 convention)."""
    init: str = "vanloan"
    """The init: vanloan (each structure's optimal projection) | prune (Kronecker) | random."""
    init_options: dict[str, Any] = field(default_factory=dict)
    """Options of the init, e.g. {"normalize": True}, {"fill": 0.1}."""
    factors: int = 1
    """Kronecker: products per matrix (r); also sizes a scheme's budget for the other structures."""
    scalars: bool = False
    """Kronecker: a learnable scalar per factor."""
    layers: Any = "all"
    """Blocks to compress: all | odd | even | a list of indices."""
    targets: Any = None
    """None: the family's FFN matrices (`krony.targets.FAMILIES`); a list of module names (a
    module matches when its name ends with one) or one regular expression, as peft's `target_modules`."""
    attention: bool = False
    """Also compress the family's attention projections (with `targets=None`; sized by `ffn_fraction`)."""
    structure_options: dict[str, Any] = field(default_factory=dict)
    """Constructor options of the structure, e.g. {"nblocks": 8} for monarch."""
    match: str = "params"
    """lowrank / monarch sized to a scheme: its parameter count (params) or its Kronecker layers'
    multiply-adds per token (flops)."""
    path: str = "auto"
    """Kronecker: the forward path (auto: the cheapest by the cost model)."""

    def __post_init__(self) -> None:
        check_choice("structure", self.structure, STRUCTURE_NAMES)
        check_choice("match", self.match, MATCHES)
        self.structure_options, self.init_options = dict(self.structure_options or {}), dict(self.init_options or {})
        if self.structure == "kronecker":
            self.match = "params"  # a Kronecker layer is its own scheme: nothing to match
        if not callable(self.init):
            check_init_for(self.structure, self.init)
        self.factors = check_factors(self.factors)
        if isinstance(self.scheme, list):
            self.scheme = tuple(self.scheme)
        from krony.schemes import get_scheme, parse_fraction

        try:
            fraction = parse_fraction(self.scheme) if isinstance(self.scheme, str) else None
            if fraction is not None:
                self.scheme, self.ffn_fraction = None, fraction if self.ffn_fraction is None else self.ffn_fraction
            elif self.scheme is not None and not isinstance(self.scheme, int):  # an int: parameters per matrix
                get_scheme(self.scheme)
        except ValueError as e:
            raise ConfigError("scheme", self.scheme, str(e)) from None
        sizes = [k for k in ("scheme", "ffn_fraction", "budget") if getattr(self, k) is not None]
        if len(sizes) > 1:
            raise ConfigError(sizes[1], getattr(self, sizes[1]), f"give one size: {sizes[0]} is set too")
        if not sizes:
            self.scheme = "81m"
        if self.ffn_fraction is not None and not 0 < self.ffn_fraction <= 1:
            raise ConfigError("ffn_fraction", self.ffn_fraction, "the fraction of parameters to keep must be in (0, 1]")
        if self.budget is not None:
            if self.structure == "kronecker":
                raise ConfigError("budget", self.budget, "a Kronecker layer is sized by a scheme or ffn_fraction; "
                                  "budget= sizes lowrank and monarch")
            if self.match != "params":
                raise ConfigError("match", self.match, "budget= is a parameter count; match='flops' takes a scheme, "
                                  "whose Kronecker layers' multiply-adds are the target")
        if self.match == "flops" and self.scheme is None:
            raise ConfigError("match", self.match, "flops-matching sizes to a scheme's Kronecker layers; give scheme=")
        if self.attention and self.scheme is not None:
            raise ConfigError("attention", True, "a scheme sizes the FFN matrices only; size attention with ffn_fraction=")
        check_layers(self.layers)


@dataclass
class ModelConfig:
    """The model a run trains: which teacher checkpoint, and what student is made of it."""

    name: str = ""
    """The run's name (`81m-vanloan-r1`): names its directory and its TensorBoard run."""
    kind: str = "krony"
    """krony (compress the teacher's FFNs) | distil (keep some teacher blocks) | dense (the teacher as is)."""
    teacher: str | None = "gpt2"
    """Hub name or local path of the dense checkpoint; None: random weights from `teacher_config`."""
    teacher_config: dict[str, Any] | None = None
    """For teacher=None: {"preset": "gpt2", ...GPTConfig overrides}, e.g. n_layer=2 for smoke runs."""
    scheme: str = "81m"
    """krony: a scheme name (`python -m krony schemes`), A dims of the expand matrices as "m1xn1", or
    "ffnNN" (keep NN% of the FFN parameters; Kronecker dims from the chooser); set by `decomp=`."""
    init: str = "vanloan"
    """krony: vanloan | prune | random (vanloan: each structure's optimal projection)."""
    structure: str = "kronecker"
    """krony: kronecker | lowrank | monarch (the latter two sized to the scheme's parameter count); set by `structure=`."""
    structure_options: dict[str, Any] = field(default_factory=dict)
    """krony: constructor options of the structure, e.g. {nblocks: 4} for monarch."""
    structure_match: str = "params"
    """krony: lowrank / monarch match the scheme's parameter count (params) or its Kronecker layers'
    multiply-adds per token (flops); Kronecker is its own scheme either way."""
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

    def compress_config(self) -> CompressConfig:
        """What `krony.compress` does to the teacher for this model."""
        return CompressConfig(structure=self.structure, scheme=self.scheme, init=self.init,
                              init_options=self.init_options, factors=self.factors, scalars=self.scalars,
                              layers=self.layers, structure_options=self.structure_options, match=self.structure_match)

    @staticmethod
    def type_advice(name: str, value: Any) -> str:
        """What to write instead of a value of the wrong type (`decomp=81` -> did you mean 81m?)."""
        if name != "scheme" or not isinstance(value, (int, float)):
            return ""
        from krony.schemes import NAMED

        guess = f"{value:g}m"
        close = f" (did you mean {guess}?)" if any(s.name == guess for s in NAMED) else ""
        return f", a scheme name, A dims or an FFN fraction such as 81m, 768x768 or ffn50{close}"

    def __post_init__(self) -> None:
        from krony.schemes import get_scheme, parse_fraction

        check_choice("kind", self.kind, KINDS)
        if self.teacher is None and not self.teacher_config:
            raise ConfigError("teacher", None, "set model.teacher_config (a preset and overrides) for random weights")
        if self.activation is not None:
            check_choice("activation", self.activation, ACTIVATIONS)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", self.dropout, "must be in [0, 1)")
        if self.kind == "krony":
            try:
                if parse_fraction(self.scheme) is None:
                    get_scheme(self.scheme)
            except ValueError as e:
                raise ConfigError("scheme", self.scheme, str(e)) from None
            check_choice("init", self.init, INIT_METHODS)
            check_choice("structure", self.structure, STRUCTURE_NAMES)
            check_choice("structure_match", self.structure_match, MATCHES)
            check_init_for(self.structure, self.init)
            unknown = sorted(set(self.init_options) - set(INIT_OPTIONS[self.init]))
            if unknown:
                raise ConfigError(f"init_options.{unknown[0]}", self.init_options[unknown[0]],
                                  f"not an option of init {self.init}; valid: {', '.join(INIT_OPTIONS[self.init])}")
            self.factors = check_factors(self.factors)
            check_layers(self.layers)


@dataclass
class OptimConfig:
    """AdamW and its schedule. Defaults follow the authors' code."""

    name: str = "constant"
    """The option's name in the `optim` group (for logs)."""
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
        for part in self.decay_overrides:
            check_choice(f"decay_overrides.{part}", part, DECAY_PARTS)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", self.lr, "the learning rate must be a finite number > 0, e.g. 6e-5")
        if not (math.isfinite(self.min_lr) and self.min_lr >= 0):  # a schedule may decay to 0
            raise ConfigError("min_lr", self.min_lr, "the learning-rate floor must be a finite number >= 0")
        check_choice("schedule", self.schedule, SCHEDULES)
        if not 0 <= self.decay_fraction <= 1:
            raise ConfigError("decay_fraction", self.decay_fraction, "must be in [0, 1]")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps", self.warmup_steps, "must be >= 0")


@dataclass
class FreezeConfig:
    """What stays fixed during training (all off: train every weight)."""

    embeddings: bool = False
    """Freeze the input embedding (`wte`, and so a tied head) and learned positions (`wpe`)."""
    attention: bool = False
    """Freeze every attention module (GPT-2's `attn`, Llama's `self_attn`: the family table's)."""
    layer_norms: bool = False
    """Freeze every normalisation layer (GPT-2's ln_1, ln_2, ln_f; Llama's RMSNorms)."""
    scalars: bool = False
    """Freeze the Kronecker scalars s_i."""
    scalars_value: float | None = None
    """Set every scalar to this value and freeze it (the paper observed they settle near 4)."""
    tag: str = ""
    """Added to run names (`-frz_emb`)."""

    def check_model(self, model: ModelConfig) -> None:
        """`ConfigError` when scalars are to be frozen but `model` has none."""
        if (self.scalars or self.scalars_value is not None) and not (model.kind == "krony" and model.scalars):
            raise ConfigError("freeze.scalars", self.scalars_value if self.scalars_value is not None else self.scalars,
                              "the model has no Kronecker scalars to freeze; set model.scalars=true on a krony model")


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
    tag: str = ""
    """Added to run names (`-kd`)."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ConfigError("temperature", self.temperature, "must be > 0")
        for key in ("alpha_ce", "alpha_clm", "alpha_cos"):
            if getattr(self, key) < 0:
                raise ConfigError(key, getattr(self, key), "must be >= 0")


NEST_SCHEDULES = ("off", "all", "sandwich", "sample")
"""Nested-training schedules (`krony.train.nest`)."""


@dataclass
class NestConfig:
    """Nested (Matryoshka) training: each step trains prefixes of the Kronecker factors on the same
    batch, one optimizer step for their weighted sum (docs/method.md, "Nested factors")."""

    schedule: str = "off"
    """off | all (every prefix in `prefixes`) | sandwich (the largest, the smallest and one random
    middle prefix; the smaller two learn the largest's predictions, stop-gradient KL) | sample
    (one random prefix a step, the largest every `largest_every`-th step)."""
    prefixes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    """Factor counts trained and validated, increasing; the largest is the model's factors."""
    weights: list[float] | None = None
    """λ_k, one per prefix (None: 1 each)."""
    largest_every: int = 4
    """sample: the largest prefix every n-th step."""
    per_layer: bool = False
    """sandwich / sample: draw the middle (sampled) prefix per layer, so mixed sizes are trained too."""
    temperature: float = 1.0
    """sandwich: softmax temperature of the KL to the largest prefix's predictions."""
    tag: str = ""
    """Added to run names (`-nest_sandwich`)."""

    def __post_init__(self) -> None:
        check_choice("schedule", self.schedule, NEST_SCHEDULES)
        ks = list(self.prefixes)
        if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks) or ks != sorted(set(ks)):
            raise ConfigError("prefixes", ks, "give increasing factor counts >= 1, e.g. [1, 2, 4, 8, 16]")
        if self.weights is not None and (len(self.weights) != len(ks) or any(w < 0 for w in self.weights)):
            raise ConfigError("weights", self.weights, f"give {len(ks)} weights >= 0, one per prefix, or null")
        if self.largest_every < 1:
            raise ConfigError("largest_every", self.largest_every, "must be >= 1")
        if self.temperature <= 0:
            raise ConfigError("temperature", self.temperature, "must be > 0")

    @property
    def enabled(self) -> bool:
        return self.schedule != "off"

    def weight(self, k: int) -> float:
        """λ_k of prefix k."""
        return 1.0 if self.weights is None else float(self.weights[self.prefixes.index(k)])

    def check_model(self, model: ModelConfig) -> None:
        """`ConfigError` when nesting is on but `model` is not a Kronecker model with the largest prefix's factors."""
        if not self.enabled:
            return
        if model.kind != "krony" or model.structure != "kronecker":
            raise ConfigError("nest.schedule", self.schedule, "nests Kronecker factors: use a krony model with structure=kronecker")
        if model.factors != self.prefixes[-1]:
            raise ConfigError("nest.prefixes", self.prefixes, f"the largest prefix must be the model's factors "
                              f"(model.factors={model.factors}); e.g. decomp=768x192 model.factors=16")


__all__ = [
    "CompressConfig", "DISTILGPT2_LAYERS", "INIT_METHODS", "INIT_OPTIONS", "KINDS", "LAYER_SETS", "NEST_SCHEDULES", "PRESETS", "SCHEDULES",
    "STRUCTURE_NAMES", "ConfigError", "DistillConfig", "FreezeConfig", "GPTConfig", "ModelConfig", "NestConfig", "OptimConfig",
    "check_choice", "check_factors", "from_config", "suggest", "to_dict",
]

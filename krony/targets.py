"""Which matrices of a model krony compresses: the one table of module names per model family.

Every path that touches a model (compression, counting, export, training, evaluation) asks
this module where things are; none of them names a family's modules itself. A family is
transformers' `model_type` (krony's own `GPT` is `krony_gpt`). For each it records the blocks'
`ModuleList`, the FFN matrices inside a block with their role, and the attention projections
(compressed only when asked):

- *expand*: d_model -> d_ff (GPT-2's `c_fc`, Llama's `gate_proj` and `up_proj`);
- *contract*: d_ff -> d_model (`c_proj`, `down_proj`).

A Kronecker scheme gives the A dims of the expand matrices; contract matrices take them
transposed, so a block's pair shares its hidden factorisation (docs/families.md).
A user filter overrides the table as peft's `target_modules` does: a list of names (a module
matches when its name ends with one of them) or one regular expression (full match); a
module the table does not give a role gets one from its shape (wider output: expand).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

EXPORT_PREFIX = "krony_"
"""A krony export's `model_type` is its family's with this prefix (`krony_llama`)."""
KRONY_GPT = "krony_gpt"
"""The family name of krony's own `GPT` (its `model_type`)."""
GPT2_TYPES = ("gpt2", "krony_gpt2")
"""config.json model types krony runs as its own `GPT` (krony's GPT-2 exports included)."""
ROLES = ("expand", "contract", "square")
"""What a matrix does to the width: d -> wider (expand), wider -> d (contract), d -> d (square)."""


@dataclass(frozen=True)
class Family:
    """Where one model family keeps the modules krony touches (names relative to the model or a block)."""

    blocks: str
    """The `ModuleList` of transformer blocks, e.g. "model.layers"."""
    expand: tuple[str, ...]
    """FFN matrices d_model -> d_ff inside a block, e.g. ("mlp.gate_proj", "mlp.up_proj")."""
    contract: tuple[str, ...]
    """FFN matrices d_ff -> d_model inside a block, e.g. ("mlp.down_proj",)."""
    attention: tuple[str, ...] = ()
    """Attention projections inside a block, compressed only with `attention=True`."""
    transposed: bool = False
    """The matrices are transformers' `Conv1D`, weight stored (in, out) (GPT-2)."""
    positions: str | None = None
    """A learned position embedding, counted with the embeddings (GPT-2's `transformer.wpe`)."""
    ffn: str | None = "mlp"
    """The FFN module inside a block, which a structure may fuse (None: the FFN has no module of its own, OPT)."""
    act: str = "act"
    """The FFN's activation attribute."""
    dropout: str | None = None
    """The FFN's dropout attribute, applied to its output (None: it has none)."""
    gated: bool = False
    """The FFN computes contract(act(expand[0](x)) * expand[1](x)) (SwiGLU / GeGLU)."""

    def ffn_parts(self) -> tuple[list[str], str] | None:
        """(expand names, contract name) inside the FFN module when it can be fused (one contract
        matrix, every matrix a child of `ffn`), else None."""
        prefix = f"{self.ffn}." if self.ffn else None
        names = self.expand + self.contract
        if prefix is None or len(self.contract) != 1 or not all(n.startswith(prefix) for n in names):
            return None
        return [n[len(prefix):] for n in self.expand], self.contract[0][len(prefix):]

    def role_of(self, suffix: str) -> str | None:
        """The role of a module named `suffix` inside a block, or None if the table does not list it."""
        if suffix in self.expand:
            return "expand"
        if suffix in self.contract:
            return "contract"
        if suffix in self.attention:
            return "square"
        return None


_GPT2 = dict(blocks="transformer.h", expand=("mlp.c_fc",), contract=("mlp.c_proj",),
             attention=("attn.c_attn", "attn.c_proj"), positions="transformer.wpe", dropout="dropout")
_LLAMA = Family("model.layers", ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",),
                ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"), act="act_fn", gated=True)

FAMILIES: dict[str, Family] = {
    KRONY_GPT: Family(**_GPT2),
    "gpt2": Family(**_GPT2, transposed=True),
    "llama": _LLAMA,  # SmolLM2 is llama
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "gpt_neox": Family("gpt_neox.layers", ("mlp.dense_h_to_4h",), ("mlp.dense_4h_to_h",),
                       ("attention.query_key_value", "attention.dense")),
    "opt": Family("model.decoder.layers", ("fc1",), ("fc2",),
                  ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
                  positions="model.decoder.embed_positions", ffn=None),
}
"""Every family krony knows, by transformers' `model_type` (a krony export's `EXPORT_PREFIX` + type is its family's)."""


@dataclass(frozen=True)
class Target:
    """One matrix to compress."""

    name: str
    """Its module name in the model, e.g. "model.layers.3.mlp.up_proj"."""
    role: str
    """expand | contract | square (see `ROLES`)."""
    block: int | None
    """The index of the block it sits in (None: outside the blocks)."""
    in_features: int
    out_features: int


def family_name(model: Any) -> str:
    """The family of `model`: transformers' `config.model_type`, or krony's `GPT` ("krony_gpt")."""
    name = getattr(model, "model_type", None) or getattr(getattr(model, "config", None), "model_type", None)
    return str(name) if name else type(model).__name__


def family_words(model: Any) -> str:
    """The family in a sentence's words: "GPT-2" for krony's `GPT` and GPT-2, else the model type."""
    name = family_name(model).removeprefix(EXPORT_PREFIX)
    return "GPT-2" if name in (KRONY_GPT.removeprefix(EXPORT_PREFIX), "gpt2") else name


def get_family(model: Any, required: bool = True) -> Family | None:
    """The table's entry for `model`; ValueError naming the known families (or None) when it has none."""
    name = family_name(model)
    family = FAMILIES.get(name) or FAMILIES.get(name.removeprefix(EXPORT_PREFIX))
    if family is not None:
        return family
    if required:
        known = ", ".join(FAMILIES)
        raise ValueError(f"krony has no module table for model type {name!r} (known: {known}); "
                         f"name the matrices to compress with targets=[...] (module names or a regex)")
    return None


def weight_shape(module: Any, transposed: bool = False) -> tuple[int, int]:
    """(out, in) of a linear module: an `nn.Linear`, or with `transposed` a `Conv1D` (weight (in, out))."""
    out, inp = module.weight.shape[-2:]
    return (inp, out) if transposed else (out, inp)


def dense_weight(module: Any, transposed: bool = False) -> Any:
    """The weight of a linear module in `nn.Linear` layout (out, in)."""
    return module.weight.t() if transposed else module.weight


def _linear_shape(module: Any, transposed: bool) -> tuple[int, int] | None:
    """(out, in) of a linear module (a dense one, or a factored one already swapped in); None otherwise."""
    weight = getattr(module, "weight", None)
    if weight is not None and weight.ndim == 2:
        return weight_shape(module, transposed)
    if isinstance(getattr(module, "in_features", None), int) and isinstance(getattr(module, "out_features", None), int):
        return module.out_features, module.in_features
    return None


def n_blocks(model: Any) -> int:
    """Transformer blocks of `model` (its family's `blocks` list)."""
    return len(model.get_submodule(get_family(model).blocks))


def _shape_role(out: int, inp: int) -> str:
    return "expand" if out > inp else "contract" if out < inp else "square"


_BLOCK = re.compile(r"\.(\d+)\.")


def find_targets(model: Any, targets: str | Sequence[str] | None = None, attention: bool = False,
                 blocks: Iterable[int] | None = None) -> list[Target]:
    """The matrices to compress, in module order.

    Args:
        targets: None: the family's FFN matrices (and attention projections with `attention`);
            a list of module names (a module matches when its name is one, or ends with "." + one)
            or one regular expression (full match on the module name), as peft's `target_modules`.
        attention: add the family's attention projections (with `targets=None` only).
        blocks: only matrices in these block indices (None: all).
    """
    family = get_family(model, required=targets is None)
    wanted = None if blocks is None else set(blocks)
    if targets is None:
        suffixes = family.expand + family.contract + (family.attention if attention else ())
        pattern = re.compile(rf"{re.escape(family.blocks)}\.(\d+)\.({'|'.join(map(re.escape, suffixes))})")
        match = pattern.fullmatch
    elif isinstance(targets, str):
        regex = re.compile(targets)
        match = regex.fullmatch
    else:
        names = [str(t) for t in targets]
        match = lambda n: any(n == t or n.endswith("." + t) for t in names)  # noqa: E731
    prefix = f"{family.blocks}." if family else None
    found = []
    for name, module in model.named_modules():
        if not name or not match(name):
            continue
        shape = _linear_shape(module, family.transposed if family else False)
        m = _BLOCK.search(name)
        block = int(m.group(1)) if m else None
        if shape is None or wanted is not None and block not in wanted:
            continue
        out, inp = shape
        role = None
        if family and prefix and name.startswith(prefix):
            role = family.role_of(name[len(prefix):].split(".", 1)[1])
        found.append(Target(name, role or _shape_role(out, inp), block, inp, out))
    if not found:
        what = f"targets={targets!r}" if targets is not None else f"the {family_name(model)} table"
        raise ValueError(f"no matrix of the model matches {what}; module names look like "
                         f"{next((n for n, m in model.named_modules() if getattr(m, 'weight', None) is not None and n), '?')!r}")
    return found


def embedding_params(model: Any) -> tuple[list[Any], list[Any]]:
    """(input embeddings and learned positions, output embedding) parameters of `model`, for the
    counting conventions; with tied embeddings the output list holds the input's tensor."""
    if not hasattr(model, "get_input_embeddings"):  # not a language model: nothing is an embedding
        return [], []
    inputs = [model.get_input_embeddings().weight]
    family = get_family(model, required=False)
    if family is not None and family.positions:
        inputs += list(model.get_submodule(family.positions).parameters())
    head = model.get_output_embeddings()
    return inputs, [] if head is None else [head.weight]


__all__ = ["EXPORT_PREFIX", "FAMILIES", "GPT2_TYPES", "KRONY_GPT", "ROLES", "Family", "Target", "dense_weight", "embedding_params", "family_name", "family_words", "find_targets",
           "get_family", "n_blocks", "weight_shape"]

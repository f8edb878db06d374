"""A transformers causal LM whose matrices are factored by krony (Kronecker sums, low-rank or
Monarch), for transformers' remote code: `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`.

Written by krony into every compressed export with the family's classes on the two lines
marked `krony: base`; it imports only torch and transformers, so the folder loads where
krony is not installed. The model is the family's own transformers class (attention, KV
cache, masks, generation, pipelines) with each module of `config.krony_layers` replaced by
the layer class that entry names (`krony_layers.py`). Everything else keeps the family's
layout and keys.
"""

from torch import nn
from transformers import GPT2Config as BaseConfig, GPT2LMHeadModel as BaseModel  # krony: base classes

from .krony_layers import LAYERS

MODEL_TYPE = "krony_gpt2"  # krony: base model type


class KronyConfig(BaseConfig):
    """The family's configuration plus `krony_layers`: {module name: {"class": a class of
    krony_layers.py, "structure": its name, **its constructor's arguments}}."""

    model_type = MODEL_TYPE

    def __init__(self, krony_layers=None, **kwargs):
        self.krony_layers = dict(krony_layers or {})
        super().__init__(**kwargs)


class KronyForCausalLM(BaseModel):
    """The family's causal LM with the factored layers of `config.krony_layers` in place of its dense matrices."""

    config_class = KronyConfig

    def __init__(self, config):
        super().__init__(config)
        for name, spec in config.krony_layers.items():
            cls = LAYERS[spec["class"]]
            parent, _, child = name.rpartition(".")
            setattr(self.get_submodule(parent), child, cls(**{k: v for k, v in spec.items() if k not in ("class", "structure")}))

    def _init_weights(self, module):
        if isinstance(module, tuple(LAYERS.values())):  # overwritten by the checkpoint; a valid start otherwise
            for p in module.parameters():
                if p is not module.bias:
                    nn.init.normal_(p, std=0.02 ** 0.5)
            return
        super()._init_weights(module)

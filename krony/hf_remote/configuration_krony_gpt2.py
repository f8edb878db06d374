"""Configuration of a GPT-2 whose FFN matrices are factored (Krony-PT), for transformers'
remote code: `AutoConfig.from_pretrained(dir, trust_remote_code=True)`.

Written by krony into every compressed export; it imports only transformers, so the folder
loads where krony is not installed.
"""

from transformers import GPT2Config


class KronyGPT2Config(GPT2Config):
    """GPT-2's configuration plus `krony_layers`: {module name: {"structure", "in_features",
    "out_features", "a_dims", "factors", "scalars", "bias"}} for every factored matrix."""

    model_type = "krony_gpt2"

    def __init__(self, krony_layers=None, **kwargs):
        self.krony_layers = dict(krony_layers or {})
        super().__init__(**kwargs)

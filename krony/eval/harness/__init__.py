"""lm-evaluation-harness on krony models: the engine behind `protocol=harness`.

A transformers model of any family (compressed or not) runs as lm-eval's own `HFLM`, given the
model object and its tokenizer. krony's GPT-2 runs as `KronyLM`, an lm-eval model (a
`TemplateLM`) that scores with krony's own `GPT`, factored layers and all, batched. It is registered in lm-eval's model registry as "krony" when this
module is imported, so

    python -m krony.eval model=<run dir | model dir | hub name> protocol=harness tasks=[wikitext,lambada_openai]
    python -m krony.eval.harness run --model krony --model_args pretrained=<...> --tasks hellaswag

both run `lm_eval`'s own evaluation: the second is lm-eval's command line itself, started after
the registration (lm-eval 0.4 has no plugin discovery, so a bare `lm_eval --model krony` cannot
see a model class that lives in another package). Any lm-eval task works; the scoring,
detokenisation and metrics are lm-eval's.

Offline, `data_dir=` (or `--data_dir` on the command line) swaps in our definitions of
`wikitext` and `lambada_openai` (`krony/eval/harness/tasks/`): the same YAML as lm-eval's, the same
scoring functions, but the documents come from local files: the WikiText pages rebuilt from
`wikitext-2-raw/wiki.test.raw` exactly as the hub's `EleutherAI/wikitext_document_level`
builds them, and OpenAI's LAMBADA jsonl.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    handle_stop_sequences,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from krony.config import HARNESS_TASKS
from krony.eval.data import file_sha256, lambada_rows_from_file, local_file
from krony.tokenizer import EOT, TextTokenizer, gpt2_encoding

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).parent / "tasks"
"""lm-eval task definitions that read local files (`include_path` for lm-eval's TaskManager)."""
LOCAL_TASKS = {"wikitext": "wikitext-2-raw/wiki.{split}.raw", "lambada_openai": "lambada/lambada_test.jsonl"}
"""The offline tasks and the file under `data_dir` each reads."""


# ---------------------------------------------------------------- the model adapter


@register_model("krony")
class KronyLM(TemplateLM):
    """A krony `GPT` as an lm-eval model.

    Args:
        pretrained: a run directory (its `export/`), a model directory, a weights file or a
            hub name; ignored when `model` is given.
        model: an already loaded `GPT` (what `krony.eval` and the training callback pass).
        batch_size: sequences per forward pass.
        device: "auto" (cuda if available), "cpu", "cuda", ...
        dtype: "float32" (default), "bfloat16" or "float16": autocast dtype of the forward.
        max_length: context in tokens; default the model's block size.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        model: Any = None,
        batch_size: int | str = 8,
        device: str | None = "auto",
        dtype: str = "float32",
        max_length: int | None = None,
        max_gen_toks: int = 256,
        **_: Any,
    ) -> None:
        super().__init__()
        if model is None:
            if pretrained is None:
                raise ValueError("KronyLM needs pretrained=<run dir, model dir, weights file or hub name>")
            from krony.causal_lm import resolve_model

            model, _ = resolve_model(str(pretrained))
        if device in (None, "auto"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda:0 unless told otherwise; run where we can, as its HF model does
            log.warning("device=%s requested but CUDA is not available: running on the CPU", device)
            device = "cpu"
        self.model = model.to(device).eval()
        self._device = torch.device(device)
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8
        dtypes = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if str(dtype) not in dtypes:
            raise ValueError(f"dtype={dtype!r}: valid choices: {', '.join(dtypes)}")
        self.dtype = dtypes[str(dtype)]
        self.max_length = int(max_length or model.config.block_size)
        self.max_gen_toks = int(max_gen_toks)
        self.enc = gpt2_encoding()

    # -- tokenizer

    @property
    def eot_token_id(self) -> int:
        return EOT

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """GPT-2 BPE; "<|endoftext|>" in the text is the EOT token, as in HF's GPT-2 tokenizer."""
        return self.enc.encode(string, allowed_special="all")

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.enc.decode(tokens)

    # -- scoring

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(self._device.type, dtype=self.dtype, enabled=self.dtype is not None):
            return self.model(x)[0].float()

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(sum of log p(continuation | context), whether greedy decoding gives the continuation)
        per (key, context tokens, continuation tokens), as lm-eval's HF model scores them: the
        last max_length + 1 tokens, the continuation's log-probabilities from the positions
        before each of its tokens. Batched, longest first, right-padded."""
        items = []
        for i, (_, context, continuation) in enumerate(requests):
            inp = (list(context) + list(continuation))[-(self.max_length + 1) :][:-1]
            items.append((i, inp, list(continuation)[-len(inp) :]))  # a continuation longer than the context window is cut
        items.sort(key=lambda t: -len(t[1]))
        out: list[tuple[float, bool]] = [(0.0, False)] * len(items)
        for start in tqdm(range(0, len(items), self.batch_size), desc="loglikelihood", disable=disable_tqdm, unit="batch"):
            batch = items[start : start + self.batch_size]
            width = len(batch[0][1])
            x = torch.zeros(len(batch), width, dtype=torch.long)
            for row, (_, inp, _) in enumerate(batch):
                x[row, : len(inp)] = torch.tensor(inp)
            logp = F.log_softmax(self._logits(x.to(self._device)), dim=-1)  # (B, width, vocab)
            for row, (i, inp, cont) in enumerate(batch):
                lp = logp[row, len(inp) - len(cont) : len(inp)]  # (len(cont), vocab)
                target = torch.tensor(cont, device=lp.device)
                out[i] = (float(lp.gather(-1, target[:, None]).sum()), bool(torch.equal(lp.argmax(-1), target)))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole documents: EOT, then the text in disjoint windows of
        max_length tokens, each window with as much earlier text as context as fits (lm-eval's
        rolling windows)."""
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    self.tok_encode(string), self.prefix_token_id, self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, scores):
            totals[i] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample and temperature) continuations, one request at a
        time with the KV cache, cut at the first stop sequence."""
        out = []
        eos = self.tok_decode([EOT])
        for context, gen_kwargs in tqdm([r.args for r in requests], desc="generate", disable=disable_tqdm):
            kw = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kw.pop("until", None), eos=eos)
            max_new = int(kw.pop("max_gen_toks"))
            temperature = float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0
            ids = self.tok_encode(context)[-(self.max_length - max_new) :]
            text = self._generate(ids, max_new, temperature, until)
            out.append(postprocess_generated_text(text, until, None))
        return out

    @torch.no_grad()
    def _generate(self, ids: list[int], max_new: int, temperature: float, until: list[str]) -> str:
        caches = self.model.new_caches(1, len(ids) + max_new)
        step = torch.tensor([ids], device=self._device)
        new: list[int] = []
        for _ in range(max_new):
            with torch.autocast(self._device.type, dtype=self.dtype, enabled=self.dtype is not None):
                logits = self.model.lm_head(self.model.hidden_states(step, caches)[:, -1]).float()  # (1, vocab)
            nxt = logits.argmax(-1) if temperature == 0 else torch.multinomial(F.softmax(logits / temperature, -1), 1)[0]
            new.append(int(nxt))
            text = self.tok_decode(new)
            if any(stop and stop in text for stop in until):
                break
            step = nxt.view(1, 1)
        return self.tok_decode(new)


# ---------------------------------------------------------------- local data for the offline tasks


def wikitext_pages(path: str | Path) -> list[str]:
    """The documents of the hub's `EleutherAI/wikitext_document_level` for one raw WikiText file.

    The file is split at "\\n" (the lines keep no newline; blank lines are " "); a page starts
    at each top-level heading " = Title = " (after reading "= = =" and "= =" as single
    headings, so section headings do not count); the lines of a page are joined with "\\n";
    pages that are only whitespace are skipped, except the last one, which is always kept.
    """
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    pages, current = [], []
    for line in lines:
        squeezed = line.replace("= = =", "===").replace("= =", "==").strip()
        if squeezed.startswith("= ") and squeezed.endswith(" ="):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    pages.append("\n".join(current))
    return pages


def _local_file(task: str, data_dir: str | None, split: str = "test") -> Path:
    if not data_dir:
        raise ValueError(f"the offline '{task}' task reads local files: pass data_dir=<folder with "
                         f"{LOCAL_TASKS[task].format(split=split)}> (the layout of krony's evaluation data)")
    return local_file(data_dir, LOCAL_TASKS[task].format(split=split))


def local_wikitext(data_dir: str | None = None, **_: Any):
    """`custom_dataset` of the offline `wikitext` task: {"test": pages} from wiki.test.raw."""
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"page": wikitext_pages(_local_file("wikitext", data_dir))})})


def local_lambada_openai(data_dir: str | None = None, **_: Any):
    """`custom_dataset` of the offline `lambada_openai` task: OpenAI's LAMBADA test jsonl."""
    import datasets

    rows = lambada_rows_from_file(_local_file("lambada_openai", data_dir))
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": rows})})


# ---------------------------------------------------------------- running it


def lm_eval_model(model: Any, batch_size: int = 8, dtype: str = "float32", tokenizer: TextTokenizer | None = None) -> Any:
    """The lm-eval model for `model`: `KronyLM` for krony's `GPT`, lm-eval's `HFLM` for a
    transformers model (which needs the model's `tokenizer`)."""
    from krony.model import GPT

    device = str(next(model.parameters()).device)
    if isinstance(model, GPT):
        return KronyLM(model=model, batch_size=batch_size, device=device, dtype=dtype)
    if tokenizer is None or tokenizer.hf() is None:
        raise ValueError(f"the harness needs the tokenizer of this {type(model).__name__}: pass the model's "
                         f"(krony.tokenizer.tokenizer_for(<model folder, hub id or .gguf>))")
    from lm_eval.models.huggingface import HFLM

    mixed = None if dtype == "float32" else dtype
    return HFLM(pretrained=model, tokenizer=tokenizer.hf(), batch_size=batch_size, device=device,
                mixed_precision_dtype=mixed)


def evaluate(
    model: Any,
    tasks: list[str] | tuple[str, ...] = HARNESS_TASKS,
    data_dir: str | None = None,
    batch_size: int = 8,
    limit: int | None = None,
    dtype: str = "float32",
    num_fewshot: int | None = None,
    progress: bool = True,
    tokenizer: TextTokenizer | None = None,
) -> dict[str, dict[str, Any]]:
    """{task: {metric: value, ..., "source": ...}} from `lm_eval.simple_evaluate` on a loaded model:
    krony's `GPT` (`KronyLM`, GPT-2's BPE) or a transformers model with `tokenizer` (lm-eval's `HFLM`).

    `data_dir` runs `wikitext` and `lambada_openai` from local files (`LOCAL_TASKS`); other
    tasks come from the hub (or its cache). `limit` scores only the first N documents of each
    task (quick checks)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    local = data_dir is not None
    if local:
        for task in tasks:
            if task in LOCAL_TASKS:
                _local_file(task, data_dir)  # fail before loading anything
    manager = TaskManager(include_path=str(TASKS_DIR) if local else None, metadata={"data_dir": data_dir} if local else None)
    lm = lm_eval_model(model, batch_size, dtype, tokenizer)
    try:
        res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, verbosity="WARNING", log_samples=False,
                                      bootstrap_iters=0)
    except ConnectionError as e:  # datasets' offline failure: the hub cache alone is not enough for it
        offline = ", ".join(t for t in tasks if t in LOCAL_TASKS) or "wikitext, lambada_openai"
        raise ValueError(f"lm-eval could not load its task data ({str(e).splitlines()[0]}): run once with internet "
                         f"(the datasets cache then serves it offline), or for {offline} pass data_dir=<local files>") from e
    out: dict[str, dict[str, Any]] = {}
    for task, metrics in res["results"].items():
        row: dict[str, Any] = {k.split(",")[0]: v for k, v in metrics.items() if "," in k and "_stderr" not in k}
        row["documents"] = res.get("n-samples", {}).get(task, {}).get("effective")
        if local and task in LOCAL_TASKS:
            path = _local_file(task, data_dir)
            row["source"] = {"path": str(path), "sha256": file_sha256(path)}
        else:
            cfg = res.get("configs", {}).get(task, {})
            row["source"] = {"hub": cfg.get("dataset_path"), "config": cfg.get("dataset_name"),
                             "revision": (cfg.get("dataset_kwargs") or {}).get("revision")}
        out[task] = row
    return out

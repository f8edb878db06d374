"""What transformers alone sees of krony's exports: a fresh interpreter in which `import krony` fails."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

# run by a fresh interpreter: krony is made unimportable before anything else
SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["krony"] = None  # `import krony` raises ImportError from here on
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    try:
        import krony  # noqa: F401
        sys.exit("krony is importable")
    except ImportError:
        pass
    seen = []
    for folder, ref in zip(sys.argv[1::2], map(torch.load, sys.argv[2::2])):
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
        with torch.no_grad():
            logits = model(ref["idx"]).logits
        greedy = model.generate(ref["prompt"], max_new_tokens=ref["new"], do_sample=False, pad_token_id=ref.get("pad", 50256))
        tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
        text = pipeline("text-generation", model=model, tokenizer=tok)("Hello world", max_new_tokens=4, do_sample=False)
        seen.append({
            "class": type(model).__name__,
            "params": model.num_parameters(),
            "max_diff": (logits - ref["logits"]).abs().max().item(),
            "rel_diff": ((logits - ref["logits"]).abs().max() / ref["logits"].abs().max()).item(),
            "greedy": greedy.tolist(),
            "text": text[0]["generated_text"],
            "factored": sorted(n for n, m in model.named_modules()
                               if type(m).__name__ in ("KroneckerLinear", "LowRankLinear", "MonarchLinear")),
        })
    print(json.dumps(seen))
""")


def transformers_view(exports: list[tuple[Path, dict]], tmp_path: Path) -> list[dict]:
    """What transformers sees of each (folder, reference) in one fresh process without krony."""
    args = []
    for i, (folder, ref) in enumerate(exports):
        torch.save(ref, tmp_path / f"ref{i}.pt")
        args += [str(folder), str(tmp_path / f"ref{i}.pt")]
    script = tmp_path / "load.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(script), *args], env=env,
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])

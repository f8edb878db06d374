"""`python -m krony.eval.harness ...`: lm-eval's own command line with the "krony" model registered.

    python -m krony.eval.harness run --model krony --model_args pretrained=<run dir | model dir> --tasks hellaswag
    python -m krony.eval.harness run --model krony --model_args pretrained=<dir> --tasks wikitext,lambada_openai --data_dir ../shared/data

`--data_dir DIR` is ours: it adds `--include_path` (krony's offline task definitions) and
`--metadata '{"data_dir": DIR}'`; everything else is lm-eval's.
"""

from __future__ import annotations

import json
import sys

from krony.eval.harness import TASKS_DIR  # registers the "krony" model with lm-eval


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    if "--data_dir" in args:
        i = args.index("--data_dir")
        if i + 1 >= len(args):
            sys.exit("--data_dir needs a folder (the layout of krony's evaluation data)")
        data_dir = args[i + 1]
        del args[i : i + 2]
        args += ["--include_path", str(TASKS_DIR), "--metadata", json.dumps({"data_dir": data_dir})]
    sys.argv = ["lm_eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()

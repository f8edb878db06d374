#!/usr/bin/env bash
# CPU mini experiment of nested (Matryoshka) Kronecker factors, offline: the mini teacher's FFNs
# as 16 Kronecker factors of A 128x32 (c_fc (512, 128): B 4x4, so 16 factors rebuild it), trained
# plain and nested (sandwich), against a 4-factor model trained alone; each evaluated with its
# first 1, 2, 4, 8, 16 factors, and Mix'n'Match on the nested model, calibrated on the text it
# trained on (the default) and on held-out text (WikiText-2's validation split). About 35 minutes
# on 2 cores. Findings: experiments/mini/NESTED.md.
# Usage: bash experiments/mini/nested.sh [data_dir]   (the evaluation files, default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
data_dir="$(realpath "${1:-../shared/data}")"
export KRONY_DATA_DIR="$data_dir"
root=logs/mini-nested
rm -rf "$root"

bash experiments/mini/teacher.sh "$root/teacher"
export KRONY_MINI_TEACHER="$root/teacher/export"

python -m krony.run -m experiment=mini decomp=128x32 model.factors=16 nest=off,sandwich hydra.sweep.dir="$root/sweep"
python -m krony.run -m experiment=mini decomp=128x32 model.factors=4 hydra.sweep.dir="$root/sweep"

out=experiments/mini/nested
python experiments/mini/nested_eval.py "$root" "$data_dir" "$out"
nested="$root/sweep/128x32-vanloan-r16-nest_sandwich"
python -m krony.mixnmatch "$nested" --out "$out/mixnmatch" --context 128 --calibration-tokens 16384
python -m krony.mixnmatch "$nested" --out "$out/mixnmatch-wikitext2" --context 128 --calibration-tokens 16384 \
    --calibration-file "$data_dir/wikitext-2-raw/wiki.valid.raw"

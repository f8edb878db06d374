#!/usr/bin/env bash
# CPU mini reproduction of the paper's comparisons, about 32 minutes on 2 cores, offline.
# Usage: bash experiments/mini/run.sh [data_dir]   (data_dir: the evaluation files, default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export KRONY_DATA_DIR="$(realpath "${1:-../shared/data}")"
root=logs/mini
rm -rf "$root"

# 1. a small dense teacher trained from scratch on the shipped OpenWebText sample
bash experiments/mini/teacher.sh "$root/teacher"
export KRONY_MINI_TEACHER="$root/teacher/export"

# 2. compress (A dims of c_fc (512, 128): 32x16 ~ "67m", 128x64 ~ "81m", 256x128 ~ "96m") and fine-tune
python -m krony.run -m experiment=mini decomp=32x16,128x64,256x128 init=vanloan,prune,random \
    hydra.sweep.dir="$root/sweep"
# 3. ablations on 128x64: adaptive normalisation; 2 factors with and without scalars
python -m krony.run -m experiment=mini decomp=128x64 init=vanloan_norm hydra.sweep.dir="$root/sweep"
python -m krony.run -m experiment=mini decomp=128x64 model.factors=2 model.scalars=true,false \
    hydra.sweep.dir="$root/sweep"

# 4. the report (committed under experiments/mini/report)
python -m krony.report "$root/teacher" "$root/sweep" --out experiments/mini/report

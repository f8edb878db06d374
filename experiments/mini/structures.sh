#!/usr/bin/env bash
# CPU mini comparison of the structures at equal parameter budgets, about 30 minutes on 2 cores,
# offline: the mini teacher's FFNs as Kronecker sums, low-rank and Monarch products, each at the
# parameter count of three Kronecker shapes, each fine-tuned 60 steps and evaluated (paper protocol).
# Usage: bash experiments/mini/structures.sh [data_dir]   (the evaluation files, default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export KRONY_DATA_DIR="$(realpath "${1:-../shared/data}")"
root=logs/mini-structures
rm -rf "$root"

bash experiments/mini/teacher.sh "$root/teacher"
export KRONY_MINI_TEACHER="$root/teacher/export"

# budgets: the Kronecker shapes 64x32, 128x64, 256x128 of c_fc (512, 128): 2,080, 8,200 and
# 32,770 parameters a matrix; lowrank and monarch (4 blocks) take the size nearest each
python -m krony.run -m experiment=mini structure=kronecker,lowrank,monarch decomp=64x32,128x64,256x128 \
    hydra.sweep.dir="$root/sweep"

# the report (committed under experiments/mini/structures)
python -m krony.report "$root/teacher" "$root/sweep" --out experiments/mini/structures --params non_embedding

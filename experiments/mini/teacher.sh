#!/usr/bin/env bash
# The mini teacher of the CPU experiments: a GPT-2-shaped model with 2 blocks, d=128, FFN 512,
# context 128 and the full tied embedding, trained from scratch for 400 steps on the OpenWebText
# sample shipped with krony (about 3 minutes on 2 cores). Usage: teacher.sh <run dir>
set -euo pipefail
python -m krony.run experiment=mini model=gpt2 model.teacher=null \
    'model.teacher_config={preset: gpt2, n_layer: 2, n_embd: 128, n_head: 4, block_size: 128}' \
    optim.lr=3e-3 optim.min_lr=3e-4 trainer.max_steps=400 trainer.val_check_interval=400 \
    hydra.run.dir="$1"

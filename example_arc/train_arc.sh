#!/usr/bin/env bash
# Step 3 with the seed's settings (run from the repository root after steps 1-2). Extra Hydra overrides
# are passed through, e.g.:  bash example_arc/train_arc.sh model.base_model_name=/path/to/local/Qwen3-0.6B
# On a cluster, wrap it as the seed does:
#   singularity exec --nv -B $PWD:/workspace pytorch_2.6.0-cuda12.4-cudnn9-devel.sif \
#     bash -c "cd /workspace && bash example_arc/train_arc.sh"
set -euo pipefail
python cli/train_sft.py \
    data.train_path=example_arc/arc_easy_train_tokens.jsonl \
    data.val_path=example_arc/arc_easy_validation_tokens.jsonl \
    training_args.output_dir=example_arc/arc_model \
    training_args.num_train_epochs=3 \
    training_args.per_device_train_batch_size=4 \
    training_args.gradient_accumulation_steps=4 \
    training_args.learning_rate=2e-5 \
    training_args.save_strategy=epoch \
    training_args.eval_strategy=epoch \
    training_args.logging_steps=10 \
    "$@"

#!/usr/bin/env bash
# Paired recipe ablations (docs/experiments.md, "Training recipe"): two runs at a time, one CPU thread each,
# the same wall-clock budget (tinytales train --minutes), Llama-style n_embd 128 x 4 layers unless N_EMBD says,
# batch 16 x 256, scored by bits per byte on the 902 validation stories.
# Needs data/ts4k-train and data/ts4k-valid (README "Reproducing the bundled model").
#   scripts/recipe_ablations.sh NAME_A "YAML_A" NAME_B "YAML_B"     # one pair
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=../shared/data/tinystories
OUT=${OUT:-runs/recipe}
MINUTES=${MINUTES:-5}
mkdir -p "$OUT"

config() {  # name, extra yaml lines: the bundled model's shape and recipe, then the lever
  cat > "$OUT/$1.yaml" <<YAML
data: ${DATA:-data/ts4k-train}
tokenizer: data/ts4k-train
out: $OUT/$1
minutes: $MINUTES
batch_size: ${BATCH:-16}
lr: 0.002
warmup_steps: 30
schedule: wsd
decay_fraction: 0.2
min_lr_ratio: 0.05
weight_decay: 0.1
eval_every: 100000
checkpoint_every: 100000
threads: 1
seed: 1337
model:
  context_length: 256
  n_layer: 4
  n_head: 4
  n_embd: ${N_EMBD:-128}
  position: rope
  norm: rmsnorm
  activation: swiglu
  bias: false
YAML
  python - "$OUT/$1.yaml" "$2" <<'PY'
import sys, yaml
path, extra = sys.argv[1], yaml.safe_load(sys.argv[2]) or {}
config = yaml.safe_load(open(path))
config["model"].update(extra.pop("model", {}) or {})
config.update(extra)
yaml.safe_dump(config, open(path, "w"), sort_keys=False)
PY
}

run() {  # name
  rm -rf "$OUT/$1"
  python -m tinytales train --config "$OUT/$1.yaml" --json > "$OUT/$1.train.json"
  OMP_NUM_THREADS=1 python -m tinytales eval --model "$OUT/$1/model" --data $SHARED/valid.jsonl --json > "$OUT/$1.eval.json"
  python - "$OUT" "$1" <<'PY'
import json, sys
out, name = sys.argv[1:]
train, ev = json.load(open(f"{out}/{name}.train.json")), json.load(open(f"{out}/{name}.eval.json"))
hist = json.load(open(f"{out}/{name}/history.json"))["steps"][-1]
print(f"| {name} | {train['steps']} | {hist['tokens'] / 1e6:.2f}M | {train['final_loss']:.3f} | {ev['bits_per_byte']:.4f} |")
PY
}

while (($# >= 4)); do
  config "$1" "$2"; config "$3" "$4"
  run "$1" > "$OUT/$1.row" & run "$3" > "$OUT/$3.row" & wait
  cat "$OUT/$1.row" "$OUT/$3.row" | tee -a "$OUT/results.md"
  shift 4
done

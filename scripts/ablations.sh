#!/usr/bin/env bash
# The small-scale experiments of docs/experiments.md: 4K-vocab, n_embd 128, 4 layers, 1 CPU thread each.
# Needs data/tok4k, data/ts4k-train, data/ts4k-valid (README "Reproducing the bundled model") and, for the
# distillation runs, data/stories260K-synthetic.jsonl (scripts/synthesize_stories.py).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=../shared/data/tinystories
OUT=${OUT:-runs/ablations}
STEPS=${STEPS:-120}
mkdir -p "$OUT"
head -n 3000 $SHARED/train.jsonl > data/train-3000.jsonl

run() {  # name, data, extra yaml lines
  local name=$1 data=$2 extra=$3 steps=${4:-$STEPS}
  cat > "$OUT/$name.yaml" <<YAML
data: $data
val_data: data/ts4k-valid
tokenizer: data/tok4k
out: $OUT/$name
max_steps: $steps
batch_size: 16
lr: 0.002
warmup_steps: 30
schedule: wsd
min_lr_ratio: 0.05
eval_every: 1000
checkpoint_every: 1000
threads: 1
model:
  context_length: 256
  n_layer: 4
  n_head: 4
  n_embd: 128
$extra
YAML
  python -m tinytales train --config "$OUT/$name.yaml" --json > "$OUT/$name.train.json"
  python -m tinytales eval --model "$OUT/$name/model" --data $SHARED/valid.jsonl --max-documents 300 --json \
      > "$OUT/$name.eval.json"
  echo "$name: $(python -c "import json; print(json.load(open('$OUT/$name.eval.json'))['bits_per_byte'])")"
}

LLAMA="  position: rope
  norm: rmsnorm
  activation: swiglu
  bias: false"
GPT2="  position: learned
  norm: layernorm
  activation: gelu"

# architecture, on the full training stories
run gpt2-style data/ts4k-train "$GPT2"
run llama-style data/ts4k-train "$LLAMA"
# data-limited: 3,000 real stories for several epochs, with and without stories260K's stories added
run real3000 data/train-3000.jsonl "$LLAMA" 200
cat data/train-3000.jsonl data/stories260K-synthetic.jsonl > data/train-3000-plus-synthetic.jsonl
wc -l data/stories260K-synthetic.jsonl
run real3000-plus-synthetic data/train-3000-plus-synthetic.jsonl "$LLAMA" 200
run real3000-dropout data/train-3000.jsonl "$LLAMA
  dropout: 0.1" 200
run llama-lr4e-3 data/ts4k-train "$LLAMA
lr: 0.004"

#!/bin/bash
# The measurements of docs/experiments.md "Round 4": v3 (configs/ingredients.yaml, runs/ingredients) against its
# paired control (the same run on plain stories, runs/control): bits per byte on the 902 validation stories,
# the story checks (loops, endings) and the ingredient checks (words used, features present).
#   bash scripts/ingredients_report.sh control       # as soon as runs/control/model exists
#   bash scripts/ingredients_report.sh ingredients   # once runs/ingredients/model exists
set -euo pipefail
cd "$(dirname "$0")/.."
VALID=../shared/data/tinystories/valid.jsonl
OUT=${OUT:-logs/round4}
mkdir -p "$OUT"
run=$1
tinytales eval --model "runs/$run/model" --data "$VALID" --json > "$OUT/eval-$run.json"
python scripts/story_checks.py --model "runs/$run/model" --method greedy --method "story defaults" \
    --out "$OUT/story-checks-$run.md"
python scripts/ingredient_checks.py --model "runs/$run/model" --out "$OUT/ingredient-checks-$run.json"

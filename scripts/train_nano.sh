#!/usr/bin/env bash
# Reproduce the shipped nano model end to end (tokenizer, SFT, GRPO, eval, report; ~90 min on 2 CPU
# cores) and copy it into phi4r/assets/nano. Run it again after an interruption: every stage resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/nano}"
python -m phi4r.recipes.nano.recipe --out "$OUT" --ship "${@:2}"

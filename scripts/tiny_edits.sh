#!/usr/bin/env bash
# The README's edit commands on the bundled tiny model, each evaluated on held-out prompts (128 images per group).
# Usage: scripts/tiny_edits.sh   (venv active). LoCoEdit edits each style's window, the one
# `interp locogen --threshold 0.9` finds for it (cross-attention indices; override with VG_LAYERS /
# MONET_LAYERS); both styles in one edit keep each style's own window (--layer "CONCEPT=LAYER").
# Edits go to edits/ (not versioned: fingerprinted deltas of the shipped weights), evaluations to docs/edits/;
# two lanes of one thread each, logs in logs/.
set -u
export OMP_NUM_THREADS=1
cd "$(dirname "$0")/.."
EDITS=edits; OUT=docs/edits; mkdir -p $EDITS $OUT logs
SEED=1000  # evaluation images from seed 1000 on: the tiny defaults (models/tiny/edit_defaults.py) were chosen on seed 0
VG_LAYERS=${VG_LAYERS:-"4"}; MONET_LAYERS=${MONET_LAYERS:-"0 1 2 3 4"}
layers() { for l in "$@"; do printf -- ' --layer %s' "$l"; done; }
BOTH=(); for l in $VG_LAYERS; do BOTH+=(--layer "van gogh=$l"); done; for l in $MONET_LAYERS; do BOTH+=(--layer "monet=$l"); done
lane1() {
  interp edit diffquickfix --old "van gogh" --new painting --save $EDITS/dqf_van_gogh.safetensors && interp evaluate --seed $SEED $EDITS/dqf_van_gogh.safetensors --out $OUT/dqf_van_gogh
  interp edit diffquickfix --old monet --new painting --save $EDITS/dqf_monet.safetensors && interp evaluate --seed $SEED $EDITS/dqf_monet.safetensors --no-controls --out $OUT/dqf_monet
  interp edit diffquickfix --old "van gogh" --old monet --new painting --save $EDITS/dqf_both.safetensors && interp evaluate --seed $SEED $EDITS/dqf_both.safetensors --no-controls --out $OUT/dqf_both
  interp edit diffquickfix --old wumbo --new "a circle" --save $EDITS/dqf_wumbo.safetensors && interp evaluate --seed $SEED $EDITS/dqf_wumbo.safetensors --no-controls --out $OUT/dqf_wumbo
}
lane2() {
  interp edit locoedit --old "van gogh" --new painting $(layers $VG_LAYERS) --save $EDITS/locoedit_van_gogh.safetensors && interp evaluate --seed $SEED $EDITS/locoedit_van_gogh.safetensors --out $OUT/locoedit_van_gogh
  interp edit locoedit --old monet --new painting $(layers $MONET_LAYERS) --save $EDITS/locoedit_monet.safetensors && interp evaluate --seed $SEED $EDITS/locoedit_monet.safetensors --no-controls --out $OUT/locoedit_monet
  interp edit locoedit --old "van gogh" --old monet --new painting "${BOTH[@]}" --save $EDITS/locoedit_both.safetensors && interp evaluate --seed $SEED $EDITS/locoedit_both.safetensors --no-controls --out $OUT/locoedit_both
  interp edit diffquickfix --old "the king of zembla" --old "the ruler of zembla" --new "the king of vardo" --save $EDITS/dqf_king.safetensors && interp evaluate --seed $SEED $EDITS/dqf_king.safetensors --no-controls --out $OUT/dqf_king
  # the fact's neighbour change sat at the 5-point line on 128 images: measured again on 384 from the same seed
  interp evaluate --seed $SEED --images 384 --concept "the king of zembla" $EDITS/dqf_king.safetensors --no-controls --out $OUT/dqf_king_384
}
(time lane1) > logs/lane1.log 2>&1 &
(time lane2) > logs/lane2.log 2>&1 &
wait

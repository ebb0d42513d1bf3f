#!/usr/bin/env bash
# The exact commands that produced the shipped demo model (src/napari_crafts/data/demo_model/), on a shared
# 2-core CPU with no GPU (see docs/demo_model.md for the times and the measured checks).
#
#   scripts/train_demo_model.sh WORKDIR
#
# 1. the training pairs: CMU-1-Small-Region.svs (CC0), auto nuclei, simulated IF, model 0.5 µm/px, 128-px tiles,
#    test band = the last 20 % of rows;
# 2. the autoencoder from scratch (8×, 4 latent channels);
# 3. UNet + both ControlNets (labels, fluorescence) together over that autoencoder;
# 4. the shipped copy: the model folder without its training/ subfolder, and the checks.
# torch runs on one thread (--threads 1): on a machine shared with other jobs, two OpenMP threads per process
# were several times slower than one.
set -euo pipefail
WORK=${1:?usage: scripts/train_demo_model.sh WORKDIR}
PY=${PY:-.venv/bin/python}
SLIDE=../shared/data/CMU-1-Small-Region.svs
mkdir -p "$WORK"
export OMP_NUM_THREADS=1

# 1. pairs (napari-crafts pairs; the builder's defaults: stride 64 px, min tissue 0.5, test fraction 0.2)
"$PY" -c "
from napari_crafts.training.pairs import build_pairs
build_pairs('$SLIDE', '$WORK/pairs', nuclei='auto', simulate_if=True, mpp=0.5, tile_px=128, stride_px=64,
            test_fraction=0.2)"

# 2. the autoencoder (L1 + 1e-6 KL, random 64² crops, the 8 rotations/flips), ~1 h here
"$PY" -m napari_crafts.training.train_cli "$WORK/pairs" --config small --stage vae --out "$WORK/vae" \
  --steps 1500 --batch-size 16 --vae-crop 64 --learning-rate 5e-4 --warmup-steps 50 --ema --ema-decay 0.995 \
  --checkpoint-every 250 --validation-tiles 6 --threads 1 --seed 0

# 3. UNet + ControlNets (labels, fluorescence) together; Min-SNR-5 weighting; half the captions dropped so
#    classifier-free guidance (7.5 by default) has nothing to amplify; 10 % of samples without ControlNet so
#    the UNet alone makes H&E (prompt-only generation). Run for 4000 steps, then continued to 6000 with
#    --resume (the same run: batches and random numbers depend on the step only), ~75 min of steps here.
JOINT=(--base "$WORK/vae" --stage joint --out "$WORK/joint" --batch-size 32 --learning-rate 3e-4 --warmup-steps 200
  --snr-gamma 5 --prompt-dropout 0.5 --control-dropout 0.1 --controlnet-init-std 0.01 --ema --ema-decay 0.999
  --checkpoint-every 250 --keep-checkpoints 3 --validation-tiles 4 --validation-steps 15 --save-dtype fp16
  --threads 1 --seed 0 --name "napari-crafts demo model (CMU-1, CPU-trained)")
"$PY" -m napari_crafts.training.train_cli "$WORK/pairs" "${JOINT[@]}" --steps 4000
"$PY" -m napari_crafts.training.train_cli "$WORK/pairs" "${JOINT[@]}" --steps 6000 --resume

# 4. the shipped folder (no training/ state) and its checks
DEST=src/napari_crafts/data/demo_model
if [ -e "$DEST" ] && ! grep -qs '"trained_by": "napari-crafts train"' "$DEST/napari_crafts.json"; then
  echo "$DEST exists and is not a napari-crafts train output: not replaced" >&2; exit 1
fi
rm -rf "$DEST" && mkdir -p "$DEST"
(cd "$WORK/joint" && tar cf - --exclude=./training .) | (cd "$DEST" && tar xf -)
# the run's README counted its checkpoints in weights_mb (fixed since in model_folder.folder_size_mb)
MB=$("$PY" -c "from napari_crafts.training.model_folder import folder_size_mb; print(f'{folder_size_mb(\"$DEST\"):.1f}')")
sed -i "s/^| weights_mb | .* MB |$/| weights_mb | $MB MB |/" "$DEST/README.md"
"$PY" scripts/check_demo_model.py --model "$DEST" --pairs "$WORK/pairs" --out "$WORK/checks"

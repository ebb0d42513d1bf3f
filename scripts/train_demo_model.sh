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
# 4. a second pairs set from the same slide with higher-recall auto nuclei (solidity ≥ 0.7 instead of 0.85, area
#    ≥ 4 µm² instead of 8: 2733 nuclei instead of 1771; half the dark haematoxylin pixels were unlabelled before,
#    so the joint model learned to draw nuclei where the labels have none);
# 5. the labels ControlNet continued on it over the frozen joint model (UNet, VAE and the fluorescence ControlNet
#    unchanged), 3000 steps (1500, then --resume to 3000);
# 6. the shipped folder: that run without its training/ state, the joint run's fluorescence ControlNet beside it,
#    the labels ControlNet's output layers scaled by LABELS_SCALE (exactly controlnet_conditioning_scale at
#    inference: it lets the labels override the UNet's habit of drawing unlabelled nuclei), its card; the checks.
# torch runs on one thread (--threads 1): on a machine shared with other jobs, two OpenMP threads per process
# were several times slower than one.
set -euo pipefail
WORK=${1:?usage: scripts/train_demo_model.sh WORKDIR}
PY=${PY:-.venv/bin/python}
SLIDE=tests/data/CMU-1-Small-Region.svs
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

# 4. pairs with higher-recall auto nuclei
"$PY" -c "
from napari_crafts.training.nuclei import NucleiParams
from napari_crafts.training.pairs import build_pairs
build_pairs('$SLIDE', '$WORK/pairs2', nuclei='auto', simulate_if=True, mpp=0.5, tile_px=128, stride_px=64,
            test_fraction=0.2, nuclei_params=NucleiParams(min_solidity=0.7, min_area_um2=4.0))"

# 5. the labels ControlNet, continued from the joint model's own, base frozen; no control dropout (the UNet alone
#    already makes H&E), half the captions dropped as before; ~1 s/step at batch 32 on the shared CPU
LABELS=(--base "$WORK/joint" --stage controlnet --modes labels --controlnet-init base --out "$WORK/labels2"
  --batch-size 32 --learning-rate 2e-4 --warmup-steps 50 --snr-gamma 5 --prompt-dropout 0.5 --control-dropout 0
  --ema --ema-decay 0.995 --checkpoint-every 250 --keep-checkpoints 3 --validation-tiles 4 --validation-steps 15
  --save-dtype fp16 --threads 1 --seed 0 --name "napari-crafts demo model (CMU-1, CPU-trained)")
"$PY" -m napari_crafts.training.train_cli "$WORK/pairs2" "${LABELS[@]}" --steps 1500
"$PY" -m napari_crafts.training.train_cli "$WORK/pairs2" "${LABELS[@]}" --steps 3000 --resume

# 6. the shipped folder and its checks
LABELS_SCALE=${LABELS_SCALE:-1.5}
DEST=src/napari_crafts/data/demo_model
if [ -e "$DEST" ] && ! grep -qs '"trained_by": "napari-crafts train"' "$DEST/napari_crafts.json"; then
  echo "$DEST exists and is not a napari-crafts train output: not replaced" >&2; exit 1
fi
rm -rf "$DEST" && mkdir -p "$DEST"
# (the run's .napari-crafts-output.json marker stays behind: the package's folder is not an overwritable output)
(cd "$WORK/labels2" && tar cf - --exclude=./training --exclude=./.napari-crafts-output.json .) | (cd "$DEST" && tar xf -)
cp -r "$WORK/joint/controlnet_fluorescence" "$DEST/"
"$PY" - "$DEST" "$WORK" "$LABELS_SCALE" <<'EOF'
import json, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
from napari_crafts.training.model_folder import folder_size_mb, model_card_markdown

dest, work, scale = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
weights = dest / "controlnet" / "diffusion_pytorch_model.safetensors"
state = load_file(weights)
for key, value in state.items():  # the zero convolutions: the ControlNet's output is linear in them
    if key.startswith(("controlnet_down_blocks.", "controlnet_mid_block.")):
        state[key] = (value.float() * scale).to(value.dtype)
save_file(state, weights, metadata={"format": "pt"})
card = json.loads((dest / "napari_crafts.json").read_text())
joint = json.loads((work / "joint" / "napari_crafts.json").read_text())
vae = json.loads((work / "vae" / "napari_crafts.json").read_text())
minutes = [float(c["training"]["wall_time"].split()[0]) for c in (vae, joint, card)]
card["controlnets"] = {"labels": "controlnet", "fluorescence": "controlnet_fluorescence"}
card["labels_controlnet_output_scale"] = scale
card["stages"] = [
    {"stage": "vae", "steps": vae["training"]["steps"], "batch_size": vae["training"]["batch_size"],
     "wall_time": vae["training"]["wall_time"], "data": vae["data"]["path"], "trains": "autoencoder (8×)"},
    {"stage": "joint", "steps": joint["training"]["steps"], "batch_size": 32, "wall_time": joint["training"]["wall_time"],
     "data": joint["data"]["path"], "nuclei": joint["data"]["nuclei"], "trains": "UNet, labels and fluorescence ControlNets",
     "validation": joint["validation"]},
    {"stage": "controlnet", "steps": card["training"]["steps"], "batch_size": 32, "wall_time": card["training"]["wall_time"],
     "data": card["data"]["path"], "nuclei": card["data"]["nuclei"], "trains": "labels ControlNet (continued), base frozen"},
]
(dest / "napari_crafts.json").write_text(json.dumps(card, indent=2) + "\n")
info = {**card, "recipe": "vae → joint (UNet + both ControlNets) → labels ControlNet on better nuclei",
        "stages": " → ".join(f"{s['stage']} {s['steps']} steps" for s in card["stages"]),
        "steps": sum(s["steps"] for s in card["stages"]),
        "wall_time": (f"{sum(minutes):.0f} min of training steps in all (autoencoder {minutes[0]:.0f}, joint "
                      f"{minutes[1]:.0f}, labels ControlNet {minutes[2]:.0f})"),
        "hardware": card["training"]["hardware"], "batch_size": "16 (autoencoder), 32 (joint, labels ControlNet)", "seed": 0,
        "weights_mb": f"{folder_size_mb(dest):.1f} MB",
        "summary": ("A toy-scale model trained on one small CC0 slide (CMU-1-Small-Region.svs, 2220 × 2967 px) on a "
                    "2-core CPU to show the napari-crafts workflow. It is **not CRAFTS**: 10 M parameters in all "
                    "(UNet 3.8 M, autoencoder 2.6 M, two ControlNets of 1.8 M) instead of ~1.4 G, a tiny character-level text encoder, nuclei from the built-in classical "
                    "segmentation, fluorescence simulated from the H&E. Expect coarse H&E, not diagnostic images."),
        "notes": [f"The labels ControlNet's output layers are multiplied by {scale} after training (the same as "
                  f"controlnet_conditioning_scale={scale} at inference): at 1.0 the frozen UNet still draws "
                  "nuclei where the labels have none.",
                  "The fluorescence ControlNet is the joint run's, unchanged (it was trained on the first pairs set; "
                  "its nuclear channel is simulated from haematoxylin).",
                  "Min-SNR-γ loss weighting, γ = 5; the joint run's ControlNet zero convolutions started at N(0, 0.01²).",
                  f"The autoencoder and the joint stage were trained on the first pairs set ({joint['data']['path']}: "
                  f"{joint['data']['nuclei']['found']['count']} auto nuclei, default settings); the labels ControlNet "
                  f"on the second (Training data above: {card['data']['nuclei']['found']['count']} nuclei); napari_crafts.json 'stages' "
                  "holds each stage's numbers.",
                  "Exact commands: scripts/train_demo_model.sh; checks: scripts/check_demo_model.py."]}
(dest / "README.md").write_text(model_card_markdown(info))
EOF
"$PY" scripts/check_demo_model.py --model "$DEST" --pairs "$WORK/pairs2" --out "$WORK/checks"

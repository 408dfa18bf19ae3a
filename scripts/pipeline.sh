#!/usr/bin/env bash
# The whole DiffAE pipeline in one command:
#   autoencoder → latent inference → latent DDIM → generation (+ an interpolation strip)
#
# Usage: scripts/pipeline.sh [NAME] [Hydra overrides for the autoencoder and latent inference ...]
#   scripts/pipeline.sh                              # demo: embedded demo tiles, ≈ 8 min on 2 CPU cores
#   scripts/pipeline.sh cores data.root=/data/tiles  # your tiles (same preset, demo size)
#   AE_TEMPLATE=rock64 scripts/pipeline.sh rocks64 data.root=/data/tiles trainer.devices=4 strategy=ddp
# Environment:
#   AE_TEMPLATE (demo), LATENT_TEMPLATE (<AE_TEMPLATE>_latent), NUM_SAMPLES (64), PYTHON (python),
#   LATENT_ARGS / GENERATE_ARGS: extra overrides for those stages, ROCKGEN_LOG_DIR (logs).
# Outputs (each stage prints its run directory):
#   logs/train/NAME-ae, logs/infer_latents/NAME (latents.pt, latents.npy),
#   logs/train/NAME-latent, logs/generate/NAME (samples/*.png, grid.png), logs/interpolate/NAME (strip + GIF)
source "$(dirname "$0")/common.sh"

name=${1:-pipeline}
shift || true
ae_template=${AE_TEMPLATE:-demo}
latent_template=${LATENT_TEMPLATE:-${ae_template%_autoenc}_latent}
read -r -a latent_args <<< "${LATENT_ARGS:-}"
read -r -a generate_args <<< "${GENERATE_ARGS:-}"

echo "== 1/5 autoencoder ($ae_template)"
"$py" run.py template="$ae_template" run_name="$name-ae" "$@"
ae_ckpt="$log_dir/train/$name-ae/checkpoints/last.ckpt"

echo "== 2/5 latent inference"
"$py" run.py task=infer_latents template="$ae_template" run_name="$name" ckpt_path="$ae_ckpt" "$@"
latents="$log_dir/infer_latents/$name/latents.pt"

echo "== 3/5 latent DDIM ($latent_template)"
"$py" run.py template="$latent_template" run_name="$name-latent" \
    model.latent.autoenc_ckpt="$ae_ckpt" model.latent.latents_path="$latents" "${latent_args[@]}"
latent_ckpt="$log_dir/train/$name-latent/checkpoints/last.ckpt"

echo "== 4/5 generation"
"$py" run.py task=generate template="$latent_template" run_name="$name" ckpt_path="$latent_ckpt" \
    num_samples="${NUM_SAMPLES:-64}" "${generate_args[@]}"

echo "== 5/5 interpolation between the first and the last tile of the data set"
read -r image_a image_b < <("$py" - "$latents" <<'PY'
import sys, torch
paths = torch.load(sys.argv[1], weights_only=True)["paths"]
print(paths[0], paths[-1])
PY
)
"$py" run.py task=interpolate run_name="$name" ckpt_path="$latent_ckpt" image_a="$image_a" image_b="$image_b"

echo
echo "Done. New tiles: $log_dir/generate/$name/samples, grid: $log_dir/generate/$name/grid.png"
echo "Latents: $latents (+ .npy), interpolation: $log_dir/interpolate/$name"

#!/usr/bin/env bash
# Train the three approaches at demo size (each stage skipped when its checkpoint exists), then measure them
# with task=compare: logs/compare/NAME/comparison.md (+ .json).
#   DiffAE: autoencoder → latent inference → latent DDIM (as scripts/pipeline.sh), so its row is real sampling
#   Pixel DDPM: template=demo_pixel
#   VAE: template=demo_vae, then task=vae_latents (fits the Gaussian of the training latents into a checkpoint)
#
# Usage: scripts/compare.sh [NAME] [Hydra overrides for every training stage, e.g. data.root=/data/tiles]
#   scripts/compare.sh                                    # demo tiles, ≈ 30 min on 2 CPU cores
#   COMPARE_ARGS="compare.resolutions=[64]" scripts/compare.sh
# Environment: PYTHON (python), ROCKGEN_LOG_DIR (logs), DIFFAE_TEMPLATE (demo), PIXEL_TEMPLATE (demo_pixel),
#   VAE_TEMPLATE (demo_vae), COMPARE_ARGS (extra overrides of task=compare; default adds fresh 64 and 128 px
#   models of the full-size presets for the speed and memory rows).
source "$(dirname "$0")/common.sh"

name=${1:-compare}
shift || true
ae_template=${DIFFAE_TEMPLATE:-demo}
latent_template=${ae_template%_autoenc}_latent
pixel_template=${PIXEL_TEMPLATE:-demo_pixel}
vae_template=${VAE_TEMPLATE:-demo_vae}
read -r -a compare_args <<< "${COMPARE_ARGS:-compare.resolutions=[64,128]}"

ckpt() { echo "$log_dir/train/$1/checkpoints/last.ckpt"; }
stage() {  # stage <output file> <description> <run.py arguments...>: run unless the output exists
    local out=$1 what=$2
    shift 2
    if [ -f "$out" ]; then echo "== $what: have $out"; else echo "== $what"; "$py" run.py "$@"; fi
}

ae_ckpt=$(ckpt "$name-ae")
latents="$log_dir/infer_latents/$name/latents.pt"
stage "$ae_ckpt" "DiffAE autoencoder ($ae_template)" template="$ae_template" run_name="$name-ae" "$@"
stage "$latents" "DiffAE latent inference" task=infer_latents template="$ae_template" run_name="$name" \
    ckpt_path="$ae_ckpt" "$@"
stage "$(ckpt "$name-latent")" "DiffAE latent DDIM ($latent_template)" template="$latent_template" \
    run_name="$name-latent" model.latent.autoenc_ckpt="$ae_ckpt" model.latent.latents_path="$latents"
stage "$(ckpt "$name-pixel")" "pixel DDPM ($pixel_template)" template="$pixel_template" run_name="$name-pixel" "$@"
stage "$(ckpt "$name-vae")" "VAE ($vae_template)" template="$vae_template" run_name="$name-vae" "$@"
vae_ckpt="$log_dir/vae_latents/$name-vae/vae_gaussian.ckpt"
stage "$vae_ckpt" "VAE latents and their Gaussian" task=vae_latents template="$vae_template" \
    run_name="$name-vae" ckpt_path="$(ckpt "$name-vae")" "$@"

echo "== compare"
"$py" run.py task=compare run_name="$name" compare.diffae_ckpt="$(ckpt "$name-latent")" \
    compare.pixel_ckpt="$(ckpt "$name-pixel")" compare.vae_ckpt="$vae_ckpt" "$@" "${compare_args[@]}"

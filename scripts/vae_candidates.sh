#!/usr/bin/env bash
# Train the demo VAE under several candidate settings at the demo budget (template=demo_vae, 600 steps) and
# print each run's held-out reconstruction PSNR/SSIM (EMA net, z = μ). Runs already trained are only re-read.
#   scripts/vae_candidates.sh [candidate ...]     (default: all below)
# Environment: PYTHON (python), ROCKGEN_LOG_DIR (logs), EXTRA (overrides for every run, e.g. trainer.max_steps=300)
source "$(dirname "$0")/common.sh"
read -r -a extra <<< "${EXTRA:-}"
# base = the demo_vae preset (spatial bottleneck + linear path); tokens = the preset before 2026-12-02
declare -A cand=(
    [base]=""
    [tokens]="model.net.bottleneck=tokens model.net.linear_path=false"
    [spatial]="model.net.linear_path=false"
    [beta0]="model.beta=0"
    [lr1e-3]="model.optim.lr=1e-3"
    [tokens16]="model.net.bottleneck=tokens model.net.linear_path=false model.net.latent_tokens=16"
    [conv]="model.net.conv_channels=64"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(base tokens spatial beta0 lr1e-3 tokens16 conv)
for name in "${names[@]}"; do
    run="vae-cand-$name"
    read -r -a over <<< "${cand[$name]}"
    if [ ! -f "$log_dir/train/$run/metrics.json" ]; then
        "$py" run.py template=demo_vae run_name="$run" logger=csv "${over[@]}" "${extra[@]}" > "/tmp/$run.log" 2>&1
    fi
    "$py" - "$log_dir/train/$run/metrics.json" "$name" "${cand[$name]}" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<12} {sys.argv[3]:<45} step {m['global_step']:>4}  val PSNR {m.get('val/psnr', float('nan')):6.2f} dB"
      f"  SSIM {m.get('val/ssim', float('nan')):.3f}  mse {m.get('val/mse', float('nan')):.4f}")
PY
done

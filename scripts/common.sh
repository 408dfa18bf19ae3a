# Sourced by the multi-stage scripts (pipeline.sh, compare.sh, vae_candidates.sh): strict mode, the repository
# root as working directory, the interpreter ($PYTHON, default python) and the log root ($ROCKGEN_LOG_DIR, logs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=${PYTHON:-python}
log_dir=${ROCKGEN_LOG_DIR:-logs}

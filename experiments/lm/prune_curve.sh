#!/usr/bin/env bash
# The pruning curve of experiments/lm/README.md: full data, then every method at every kept fraction and
# seed, each point a dd-distill run in its own folder (resumable: finished points are skipped), then the
# table and the plot (dd-table).
#   bash experiments/lm/prune_curve.sh [experiment] [out]          # lm_prune_fortunes, outputs/lm_curve
#   METHODS="random nll" KEEPS="0.1 0.5" SEEDS="0" bash experiments/lm/prune_curve.sh lm_prune_debian out/deb
#   EXTRA="prune.tokens=200000" ...                                 # any override, for every point
set -euo pipefail
exp=${1:-lm_prune_fortunes}
out=${2:-outputs/lm_curve}
bin=$(dirname "$0")/../../.venv/bin
seeds=${SEEDS:-0 1 2}
start=$(date +%s)
point() {  # method label, keep, seed, overrides...
  local label=$1 keep=$2 seed=$3
  shift 3
  local dir="$out/$label/keep$keep/seed$seed"
  [ -f "$dir/results.json" ] && return 0
  "$bin/dd-distill" experiment="$exp" prune.keep="$keep" seed="$seed" progress=false ${EXTRA:-} "$@" \
    hydra.run.dir="$dir" || { echo "FAILED: $label keep=$keep seed=$seed" >&2; return 1; }
}
for s in $seeds; do point full 1.0 "$s" method=random; done
for m in ${METHODS:-random nll perplexity_band zip}; do
  label=$m
  args=(method="${m%%:*}")
  case $m in  # variants: nll:iwf, doremi:uniform
    nll:iwf) args+=(method.iwf=true) ;;
    doremi:uniform) args+=(method.weights=uniform) ;;
  esac
  label=${m/:/_}
  for k in ${KEEPS:-0.1 0.3 0.5 0.7 0.9}; do
    for s in $seeds; do point "$label" "$k" "$s" "${args[@]}"; done
  done
done
echo "curve done in $(( $(date +%s) - start )) s"
"$bin/dd-table" "$out" --plot "$out/curve.png" --json "$out/curve.json"

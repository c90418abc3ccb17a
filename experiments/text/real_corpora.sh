#!/usr/bin/env bash
# The real-corpus table of experiments/text/README.md: on each corpus, attention_labels at its defaults beside
# random, herding and full fine-tuning (method=full) (MiniLM, 1 example per class, 10 evaluation runs), then the table.
#   make corpora && apt-get install fortunes && apt-get update     (once: the data)
#   bash experiments/text/real_corpora.sh outputs/corpora [corpus ...]
#   METHODS=attention_labels bash experiments/text/real_corpora.sh outputs/new    # only the distillation
set -euo pipefail
out=${1:-outputs/corpora}
shift || true
corpora=${*:-fortunes rotten_tomatoes rotten_tomatoes_3class debian_sections debates_2016}
bin=$(dirname "$0")/../../.venv/bin
for d in $corpora; do
  for m in ${METHODS:-attention_labels random herding full}; do
    [ -f "$out/$d/$m/results.json" ] && continue  # done already: the table is resumable
    "$bin/dd-distill" dataset="$d" model=minilm ipc=1 eval.num_models=10 \
      method="$m" hydra.run.dir="$out/$d/$m"
  done
done
"$bin/python" "$(dirname "$0")/corpora_table.py" "$out"/*/* --json "$out/table.json"

#!/usr/bin/env bash
# The teacher-based table on the embedded digits (about 30 CPU-minutes on 2 cores): the digits presets
# of sre2l and rded at IPC 1 and 10 (stored soft labels), the same sets with the teacher online and with
# hard labels, random real images under the same student recipe, and the MTT / DATM IPC 1 presets'
# sets evaluated with their own recipe (dd-distill) and with this one (dd-eval eval=relabel).
#   experiments/teacher_based/digits.sh <out>
set -euo pipefail
OUT=${1:-multirun/teacher_digits}
BIN=${BIN:-.venv/bin}
Q="progress=false"
TEACHER="teacher.model.name=convnet teacher.model.norm=batch teacher.model.width=32 teacher.epochs=100"
batch() { [ "$1" = 1 ] && echo 10 || echo 50; }
temperature() { [ "$1" = sre2l ] && echo 30 || echo 20; }
relabel_eval() {  # <set folder> <labels> <T> <batch> <out>
  $BIN/dd-eval path=$1 eval=relabel eval.labels=$2 eval.temperature=$3 eval.batch_size=$4 use_set_lr=false \
    $TEACHER $Q hydra.run.dir=$5
}
for ipc in 1 10; do
  for m in rded sre2l; do
    $BIN/dd-distill experiment=digits_$m ipc=$ipc $Q hydra.run.dir=$OUT/stored/${m}_ipc$ipc
    for labels in teacher hard; do
      relabel_eval $OUT/stored/${m}_ipc$ipc/distilled $labels $(temperature $m) $(batch $ipc) $OUT/$labels/${m}_ipc$ipc
    done
  done
  for labels in teacher hard; do
    $BIN/dd-distill method=random ipc=$ipc model.width=32 $TEACHER eval=relabel eval.labels=$labels \
      eval.batch_size=$(batch $ipc) $Q hydra.run.dir=$OUT/$labels/random_ipc$ipc
  done
done
for m in mtt datm; do  # the bi-level sets: their own recipe, then the teacher-based students' recipe
  $BIN/dd-distill experiment=digits_$m ipc=1 $Q hydra.run.dir=$OUT/own/${m}_ipc1
  for labels in teacher hard; do
    relabel_eval $OUT/own/${m}_ipc1/distilled $labels 20 10 $OUT/$labels/${m}_ipc1
  done
done
$BIN/dd-table $OUT/stored $OUT/teacher $OUT/hard $OUT/own

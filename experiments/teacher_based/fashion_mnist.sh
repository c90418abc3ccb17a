#!/usr/bin/env bash
# The teacher-based table on FashionMNIST (Debian's dataset-fashion-mnist), at a CPU budget:
# the teacher, then for each of sre2l / rded at IPC 1 and 10 the set evaluated with its stored soft
# labels (dd-distill), with the teacher online and with hard labels (dd-eval, the same student recipe),
# and random real images per class under the same evaluator with hard and teacher labels.
#   experiments/teacher_based/fashion_mnist.sh <out> [rded|sre2l|random|all]
# One process per part; run two parts side by side on a 2-core machine (OMP_NUM_THREADS=1 each).
set -euo pipefail
OUT=${1:-multirun/teacher_fmnist}
PART=${2:-all}
BIN=${BIN:-.venv/bin}
DS="dataset=fashion_mnist_debian progress=false"
# the presets' teacher (dd-teacher trains it once; every run below finds it in $DD_CACHE)
TEACHER="teacher.model.name=convnet teacher.model.norm=batch teacher.model.first_pad=3 teacher.model.depth=3 \
teacher.epochs=3 teacher.lr=0.01 teacher.dsa=false"

$BIN/dd-teacher experiment=fashion_mnist_rded $DS hydra.run.dir=$OUT/teacher

temperature() { [ "$1" = sre2l ] && echo 30 || echo 20; }
batch() { [ "$1" = 1 ] && echo 10 || echo 50; }

method() {
  local m=$1
  for ipc in 1 10; do
    $BIN/dd-distill experiment=fashion_mnist_$m ipc=$ipc $DS hydra.run.dir=$OUT/stored/${m}_ipc$ipc
    for labels in teacher hard; do
      $BIN/dd-eval path=$OUT/stored/${m}_ipc$ipc/distilled eval=relabel eval.labels=$labels \
        eval.temperature=$(temperature $m) eval.batch_size=$(batch $ipc) progress=false \
        hydra.run.dir=$OUT/$labels/${m}_ipc$ipc
    done
  done
}

random_real() {
  for ipc in 1 10; do
    for labels in teacher hard; do
      $BIN/dd-distill $DS method=random ipc=$ipc model.first_pad=3 model.depth=3 $TEACHER eval=relabel \
        eval.labels=$labels eval.batch_size=$(batch $ipc) hydra.run.dir=$OUT/$labels/random_ipc$ipc
    done
  done
}

case $PART in
  rded|sre2l) method $PART ;;
  random) random_real ;;
  all) method rded; method sre2l; random_real ;;
  *) echo "part '$PART' is unknown; choose rded, sre2l, random or all" >&2; exit 2 ;;
esac
$BIN/dd-table $OUT/stored $OUT/teacher $OUT/hard 2>/dev/null || true

#!/usr/bin/env bash
# SmolLM2-135M / WikiText-2 test: the core methods at W8A8 and W4A8 through the CLI.
# Usage: bash experiments/core_smollm2.sh OUTDIR   (needs SASQ_WIKITEXT_DIR)
# Calibration: 16 windows of 2048 tokens from WikiText-2 validation (seed 0).
# Training: 128 windows of 256 tokens from WikiText-2 validation, 1 epoch, lr 2e-2 (log-scale Adam steps).
# Evaluation: the first EVAL windows (default 20) of 2048 tokens; FULL=1 adds all 148 windows
# for FP and the SASQ W8A8 rows.
set -euo pipefail
out=${1:?give an output folder}
mkdir -p "$out"
eval_n=${EVAL:-20}
model=smollm2-135m
calib=(--calib-windows 16 --calib-seqlen 2048)
train=(--train-windows 128 --train-seqlen 256 --lr 2e-2 --checkpoint-every 32)

run_eval() {  # name, windows, extra options
  local name=$1 windows=$2; shift 2
  [ -f "$out/$name.json" ] || sasq evaluate --model $model --seqlen 2048 --eval-windows "$windows" --output "$out/$name.json" "$@"
}
run_train() {  # name, extra options
  local name=$1; shift
  [ -f "$out/$name.safetensors" ] || sasq train --model $model "${calib[@]}" "${train[@]}" --output "$out/$name.safetensors" "$@"
}

run_eval fp-n$eval_n "$eval_n" --method fp
bits_rows() {  # weight bits
  local bits=$1 w=(--wbits $1 --abits 8)
  run_eval dynamic-w${bits}a8-n$eval_n "$eval_n" --method dynamic "${w[@]}"
  run_eval minmax-w${bits}a8-n$eval_n "$eval_n" --method static-minmax "${w[@]}" "${calib[@]}"
  run_eval init-w${bits}a8-n$eval_n "$eval_n" --method sasq-init "${w[@]}" "${calib[@]}"
  for gran in per-tensor per-channel; do
    run_train sasq-w${bits}a8-$gran "${w[@]}" --granularity $gran
    run_eval sasq-w${bits}a8-$gran-n$eval_n "$eval_n" --method sasq "${w[@]}" --granularity $gran --scales "$out/sasq-w${bits}a8-$gran.safetensors"
  done
}
run_diagnose() {  # name, extra options
  local name=$1; shift
  [ -f "$out/$name.json" ] || sasq diagnose --model $model --seqlen 2048 --eval-windows 1 "${calib[@]}" --output "$out/$name.json" "$@"
}

bits_rows 8
run_diagnose diagnose-init-w8a8 --method sasq-init
run_diagnose diagnose-sasq-w8a8-per-tensor --method sasq --scales "$out/sasq-w8a8-per-tensor.safetensors"
bits_rows 4
if [ "${FULL:-0}" = 1 ]; then
  run_eval fp-n148 148 --method fp
  run_eval sasq-w8a8-per-channel-n148 148 --method sasq --granularity per-channel --scales "$out/sasq-w8a8-per-channel.safetensors"
  run_eval dynamic-w8a8-n148 148 --method dynamic
  run_eval sasq-w8a8-per-tensor-n148 148 --method sasq --scales "$out/sasq-w8a8-per-tensor.safetensors"
fi

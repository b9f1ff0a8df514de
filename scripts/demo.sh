#!/usr/bin/env bash
# The main job: moving_shapes data -> tiny causal VAE -> latent cache -> toy text-to-video DiT
# (32x32, 17 frames) -> samples for held-out prompts -> prompt-checker scores.
#
#   make demo                                   # installs into .venv, then runs this script
#   DEMO_DIR=/tmp/demo bash scripts/demo.sh     # outputs elsewhere (default runs/demo)
#
# Outputs under $DEMO_DIR: data/ (unless SEAWEED_DATA_DIR is set), vae/, vae_check/, dit/,
# samples/{prompts.txt, 000..007.mp4 + .npy, contact_sheet.png, scores.json},
# samples/heldout/ (the same for the larger scored set), demo_summary.json, logs/.
#
# Resumable: every finished stage leaves a stamp (.stamps/<stage>, holding the command) and is
# skipped when re-run with the same command; an interrupted training run resumes from its
# last checkpoint; prepare reuses built datasets and latent caches. Once a stage runs again,
# every later stage runs again too (a finished training run just restores and exits).
# Delete a stage's stamp to redo it; delete $DEMO_DIR for a fresh start.
#
# Knobs (environment): PYTHON (default .venv/bin/python if present, else python3),
# SEAWEED_DATA_DIR, DEMO_VAE_STEPS / DEMO_DIT_STEPS (override the configs' num_steps),
# DEMO_SAMPLE_STEPS (ODE steps, default 50), DEMO_SEED (noise seed of prompt 0, default 1000),
# DEMO_NUM_TRAIN (training clips of the dataset, default the builder's 20,000; the latent
# cache's time is proportional to it), DEMO_SCORE_PROMPTS (size of the held-out canonical set, default 64; 0 = skip it),
# DEMO_PROMPT_SEED (its label seed, default 31337, used nowhere else).
set -euo pipefail

START_DIR=$(pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO_DIR=${DEMO_DIR:-runs/demo}
case "$DEMO_DIR" in /*) ;; *) DEMO_DIR="$START_DIR/$DEMO_DIR" ;; esac
cd "$REPO"

if [[ -n "${PYTHON:-}" ]]; then
  PY=$PYTHON
elif [[ -x "$REPO/.venv/bin/python" ]]; then
  PY="$REPO/.venv/bin/python"
else
  PY=python3
fi
DATA_DIR=${SEAWEED_DATA_DIR:-$DEMO_DIR/data}
DATASET=moving_shapes/32x32_f17
VAE_DIR=$DEMO_DIR/vae
DIT_DIR=$DEMO_DIR/dit
SAMPLES=$DEMO_DIR/samples
HELDOUT=$SAMPLES/heldout
LOGS=$DEMO_DIR/logs
STAMPS=$DEMO_DIR/.stamps
SAMPLE_STEPS=${DEMO_SAMPLE_STEPS:-50}
SEED=${DEMO_SEED:-1000}
SCORE_PROMPTS=${DEMO_SCORE_PROMPTS:-64}
PROMPT_SEED=${DEMO_PROMPT_SEED:-31337}
mkdir -p "$DEMO_DIR" "$LOGS" "$STAMPS" "$DATA_DIR" "$SAMPLES"
export PYTHONUNBUFFERED=1

PREP_ARGS=(--dataset="$DATASET" --data_dir="$DATA_DIR")
VAE_ARGS=(--config=configs/vae/tiny.py --workdir="$VAE_DIR" --data_dir="$DATA_DIR")
if [[ -n "${DEMO_VAE_STEPS:-}" ]]; then VAE_ARGS+=(--config.num_steps="$DEMO_VAE_STEPS"); fi
DIT_ARGS=(--config="configs/dit/moving_shapes.py:t2v,vae=$VAE_DIR" --workdir="$DIT_DIR"
          --data_dir="$DATA_DIR")
if [[ -n "${DEMO_DIT_STEPS:-}" ]]; then DIT_ARGS+=(--config.num_steps="$DEMO_DIT_STEPS"); fi
if [[ -n "${DEMO_NUM_TRAIN:-}" ]]; then
  PREP_ARGS+=(--num_train="$DEMO_NUM_TRAIN")
  VAE_ARGS+=(--config.data.num_train="$DEMO_NUM_TRAIN")
  DIT_ARGS+=(--config.data.num_train="$DEMO_NUM_TRAIN")
fi

T_ALL=$(date +%s)
REDO=0
TIMES=()
load() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?"; }

# run_stage NAME OUTPUT_PATH CMD...: skipped when its stamp holds the same command, OUTPUT_PATH
# exists and no earlier stage ran; else runs CMD (output tee'd to logs/NAME.log) and stamps it.
run_stage() {
  local name=$1 out=$2
  shift 2
  local cmd="$*" stamp="$STAMPS/$name" t0 dt
  if [[ $REDO == 0 && -f "$stamp" && -e "$out" && "$(cat "$stamp")" == "$cmd" ]]; then
    echo "== [$name] done earlier (stamp $stamp); skipping"
    TIMES+=("$name=skipped")
    return
  fi
  REDO=1
  rm -f "$stamp"
  echo "== [$name] $(date +%H:%M:%S), load avg $(load)"
  echo "   \$ $cmd"
  t0=$(date +%s)
  "$@" 2>&1 | tee "$LOGS/$name.log"
  dt=$(( $(date +%s) - t0 ))
  printf '%s' "$cmd" > "$stamp"
  TIMES+=("$name=${dt}s")
  echo "== [$name] finished in $(( dt / 60 ))m$(( dt % 60 ))s (load avg $(load))"
}

echo "seaweed_jax demo -> $DEMO_DIR (python $PY, data $DATA_DIR, $(nproc) cores, load avg $(load))"

# 1. The dataset (reused when already built under DATA_DIR).
run_stage prepare "$DATA_DIR/moving_shapes" \
  "$PY" -m seaweed_jax.prepare "${PREP_ARGS[@]}"

# 2. The tiny causal VAE (writes vae/latent_stats.json when it finishes).
run_stage vae "$VAE_DIR/latent_stats.json" "$PY" -m seaweed_jax.train "${VAE_ARGS[@]}"

# 2b. How well the VAE keeps colour / shape / motion: the prompt checker on its reconstructions
#     of validation clips is about the best the DiT's samples can score.
run_stage vae_check "$DEMO_DIR/vae_check/vae_check.json" \
  "$PY" -m seaweed_jax.check vae --vae_workdir="$VAE_DIR" --data_dir="$DATA_DIR" \
  --output_dir="$DEMO_DIR/vae_check"

# 3. Encode the dataset once with the VAE: the DiT trains on cached, normalized latents.
run_stage latents "$DATA_DIR/latent_cache" \
  "$PY" -m seaweed_jax.prepare "${PREP_ARGS[@]}" --vae_workdir="$VAE_DIR"

# 4. The toy text-to-video DiT (its config records the VAE run, so sampling needs only dit/).
run_stage dit "$DIT_DIR/config.json" "$PY" -m seaweed_jax.train "${DIT_ARGS[@]}"

# 5. Samples for hand-picked prompts (every colour, shape, direction and background appears;
#    the noise seeds are not the training's), plus their contact sheet. "a orange", not "an":
#    the training captions always say "a", and "an" is not in the tokenizer's vocabulary.
cat > "$SAMPLES/prompts.txt" <<'EOF'
a red circle moving right on a black background
a green square moving up on a gray background
a blue triangle moving left on a black background
a yellow circle moving down on a navy background
a cyan square standing still on a black background
a magenta triangle moving right on a gray background
a white circle moving left on a navy background
a orange square moving up on a black background
EOF
run_stage sample "$SAMPLES/contact_sheet.png" \
  "$PY" -m seaweed_jax.sample --workdir="$DIT_DIR" --prompts_file="$SAMPLES/prompts.txt" \
  --output_dir="$SAMPLES" --steps="$SAMPLE_STEPS" --seed="$SEED"

# 6. Score them: colour / shape / direction read back from the pixels (moving_shapes/checker.py).
run_stage check "$SAMPLES/scores.json" "$PY" -m seaweed_jax.check samples --samples="$SAMPLES"

# 7. A larger held-out set for the checker: canonical captions with random labels drawn with
#    a label seed nothing else uses.
#    `sample` writes the prompts it used to $HELDOUT/prompts.txt, which `check samples` reads.
if (( SCORE_PROMPTS > 0 )); then
  run_stage sample_heldout "$HELDOUT/contact_sheet.png" \
    "$PY" -m seaweed_jax.sample --workdir="$DIT_DIR" --canonical_prompts="$SCORE_PROMPTS" \
    --prompt_seed="$PROMPT_SEED" --output_dir="$HELDOUT" --steps="$SAMPLE_STEPS" --seed="$SEED"
  run_stage check_heldout "$HELDOUT/scores.json" \
    "$PY" -m seaweed_jax.check samples --samples="$HELDOUT"
fi

TOTAL=$(( $(date +%s) - T_ALL ))
# 8. demo_summary.json: stage times, scores, the VAE check; printed as a short report.
"$PY" -m seaweed_jax.check demo --demo_dir="$DEMO_DIR" --total_seconds="$TOTAL" \
  --load_avg="$(load)" --stage_times="$(IFS=,; echo "${TIMES[*]}")"

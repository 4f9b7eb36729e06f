#!/usr/bin/env bash
# Soak test (not in CI): trains a small recipe while killing it with SIGKILL at
# random moments (mid-step, mid-checkpoint, mid-prune), with a second
# `vlmkit train` on the same directory started beside each first one, until the
# run finishes. Then checks that the final weights and the logged losses are
# bit-identical to an uninterrupted run's, that no temporary or half-pruned
# directory is left, and that the second process was refused while the first
# held the directory.
#
#   scripts/soak.sh [KILLS] [VLMKIT]      # default: 40 kills, target/release/vlmkit
#
# Prints one line per round and a summary; exits non-zero on any difference.
set -euo pipefail
cd "$(dirname "$0")/.."

kills_wanted="${1:-40}"
vlmkit="${2:-target/release/vlmkit}"
work="$(mktemp -d "${TMPDIR:-/tmp}/vlmkit-soak.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# Small enough for seconds per hundred steps; checkpoints every 3 steps with
# two kept, so kills land in checkpoint writes and pruning as often as in steps.
settings=(
    vision.hidden_size=16 vision.intermediate_size=32 vision.num_hidden_layers=2
    vision.num_attention_heads=2 llm.hidden_size=16 llm.intermediate_size=32
    llm.num_hidden_layers=1 llm.num_attention_heads=2 llm.num_key_value_heads=1
    stage.0.batch_size=8 stage.0.steps=6000 run.checkpoint_every=3
    run.keep_checkpoints=2 run.log_every=5 run.threads=1
)
sets=()
for s in "${settings[@]}"; do sets+=(--set "$s"); done
# `exec`: in the background, `$!` is then vlmkit itself, not a subshell that a
# SIGKILL would take down while vlmkit ran on.
train() { exec "$vlmkit" train recipes/mlp.toml --out "$1" "${sets[@]}"; }

echo "reference run (uninterrupted)…"
(train "$work/reference") 2>"$work/reference.log"

run="$work/soaked"
kills=0 refused=0 rounds=0 cleaned=0
while [ ! -f "$run/final/state.json" ]; do
    rounds=$((rounds + 1))
    train "$run" 2>"$work/first.log" &
    first=$!
    # The second starts while the first runs (or just after it was killed).
    sleep "0.0$((RANDOM % 10))"
    train "$run" 2>"$work/second.log" &
    second=$!
    # Kill at a random moment up to 0.6 s in (a few hundred steps here),
    # unless the run already finished.
    sleep "0.$((RANDOM % 6))$((RANDOM % 10))"
    for pid in "$first" "$second"; do
        if kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); fi
    done
    wait "$first" 2>/dev/null || true
    wait "$second" 2>/dev/null || true
    if grep -q "is in use by another vlmkit (pid" "$work/second.log" "$work/first.log"; then
        refused=$((refused + 1))
    fi
    # Leftovers of the previous round's kill, removed by this round's trainer.
    n=$(cat "$work/first.log" "$work/second.log" | sed -n 's/^removed \([0-9]*\) leftover.*/\1/p' | awk '{s += $1} END {print s + 0}')
    cleaned=$((cleaned + n))
    # (A checkpoint may be pruned between the listing and the read.)
    step=$(cat "$run"/checkpoints/step-*/state.json 2>/dev/null |
        sed -n 's/.*"global_step": \([0-9]*\).*/\1/p' | sort -n | tail -1 || true)
    echo "round $rounds: killed, newest checkpoint at step ${step:-none}"
    if [ "$kills" -ge "$kills_wanted" ]; then
        echo "finishing without kills…"
        (train "$run") 2>"$work/last.log"
    fi
done

status=0
if cmp -s "$work/reference/final/model.safetensors" "$run/final/model.safetensors"; then
    echo "final weights: bit-identical to the uninterrupted run"
else
    echo "final weights: DIFFER from the uninterrupted run"
    status=1
fi
# Timings differ between runs; everything else must not.
losses() { sed 's/"samples_per_s":[^,}]*//; s/"elapsed_s":[^,}]*//' "$1/metrics.jsonl"; }
if diff <(losses "$work/reference") <(losses "$run") >/dev/null; then
    echo "metrics.jsonl: the same steps and losses"
else
    echo "metrics.jsonl: DIFFERS"
    diff <(losses "$work/reference") <(losses "$run") | head -5
    status=1
fi
leftovers=$(find "$run" -name '.*.tmp-*' -o -name '.*.old-*' -o -name '.*.pruning-*')
if [ -z "$leftovers" ]; then
    echo "leftovers: none"
else
    echo "leftovers: $leftovers"
    status=1
fi
checkpoints=$(find "$run/checkpoints" -maxdepth 1 -name 'step-*' | wc -l)
[ "$checkpoints" -le 2 ] || { echo "checkpoints: $checkpoints kept, keep_checkpoints is 2"; status=1; }
echo "rounds $rounds, SIGKILLs $kills, second trainer refused in $refused rounds, leftovers of killed writes removed on restart $cleaned, checkpoints kept $checkpoints"
exit "$status"

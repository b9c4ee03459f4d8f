#!/usr/bin/env bash
# Run an ablation grid as a Slurm job array: one shard of cells per array task, then one
# dependent job that merges the shards into a single result set.
#
#   scripts/slurm_array.sh CONFIG OUT_DIR [N_SHARDS] [-- extra `gpt-ablate run` flags]
#
# e.g.  scripts/slurm_array.sh configs/gpt2.toml runs/gpt2 8 -- --device cuda
#
# Each task runs `gpt-ablate run CONFIG --shard K/N --out OUT_DIR/shard-K`; a task that is
# requeued or resubmitted resumes where it stopped (finished cells are skipped). The merge job
# writes OUT_DIR/results.{jsonl,csv}, manifest.json and the charts. Submission options
# (partition, time, GPUs, memory) come from SBATCH_* environment variables or the #SBATCH
# lines below; GPT_ABLATE is the binary (default: target/release/gpt-ablate).
#SBATCH --job-name=gpt-ablate
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --output=%x-%A_%a.log
set -euo pipefail

bin=${GPT_ABLATE:-target/release/gpt-ablate}

if [[ -n "${GPT_ABLATE_PHASE:-}" ]]; then
    # Inside Slurm: a shard task, or the final merge.
    config=$1 out=$2 n=$3
    shift 3
    [[ "${1:-}" == "--" ]] && shift
    if [[ "$GPT_ABLATE_PHASE" == shard ]]; then
        k=${SLURM_ARRAY_TASK_ID:?not running as an array task}
        exec "$bin" run "$config" --shard "$k/$n" --out "$out/shard-$k" --threads "${SLURM_CPUS_PER_TASK:-1}" "$@"
    else
        shards=()
        for ((k = 0; k < n; k++)); do shards+=("$out/shard-$k"); done
        exec "$bin" merge "${shards[@]}" --out "$out"
    fi
fi

if [[ $# -lt 2 ]]; then
    sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
config=$1 out=$2 n=${3:-4}
shift $(($# < 3 ? $# : 3))
[[ -f "$config" ]] || { echo "Error: config $config does not exist" >&2; exit 1; }
[[ -x "$bin" ]] || { echo "Error: $bin not found; build with cargo build --release or set GPT_ABLATE" >&2; exit 1; }
command -v sbatch >/dev/null || { echo "Error: sbatch not found (this script submits Slurm jobs)" >&2; exit 1; }
mkdir -p "$out"
# Validate the config once, here, before anything is queued.
"$bin" run "$config" --dry-run >/dev/null

array=$(GPT_ABLATE_PHASE=shard sbatch --parsable --export=ALL,GPT_ABLATE_PHASE=shard \
    --array="0-$((n - 1))" "$0" "$config" "$out" "$n" "$@")
merge=$(sbatch --parsable --export=ALL,GPT_ABLATE_PHASE=merge --dependency="afterok:$array" \
    --array=0 --cpus-per-task=1 --time=00:30:00 "$0" "$config" "$out" "$n")
echo "submitted shards: job $array (array 0-$((n - 1))), merge: job $merge → $out"

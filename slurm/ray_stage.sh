# shellcheck shell=bash
# Shared by train_stage{1,2,3}.sh (sourced, not run): bring a Ray cluster up on this Slurm allocation
# (head on the first node, one worker node per other node, each through srun), run one stage of
# `facecomp cluster train` against it, and tear Ray down whatever happens.
#
# Settings (environment, all optional but FACECOMP_DATA):
#   FACECOMP_DATA            CelebA folder every node can read (required)
#   FACECOMP_CONFIG          preset or TOML file (default: paper)
#   FACECOMP_STORAGE         runs folder on a disk every node sees (default: $SLURM_SUBMIT_DIR/runs/cluster)
#   FACECOMP_VENV            environment with facecomp[cluster] (default: $SLURM_SUBMIT_DIR/.venv)
#   FACECOMP_WORKERS_PER_NODE  training workers per node (default: the node's GPUs, or 1 without GPUs)
#   FACECOMP_OVERRIDES       extra key=value overrides, space-separated
#   RAY_PORT                 the head's port (default 6379)

set -euo pipefail

submit_dir=${SLURM_SUBMIT_DIR:-$PWD}
venv=${FACECOMP_VENV:-$submit_dir/.venv}
export PATH="$venv/bin:$PATH"
: "${FACECOMP_DATA:?set FACECOMP_DATA to the CelebA folder every node can read}"
config=${FACECOMP_CONFIG:-paper}
storage=${FACECOMP_STORAGE:-$submit_dir/runs/cluster}
port=${RAY_PORT:-6379}
# Ray's token authentication: the head writes ~/.ray/auth_token; the worker nodes and the driver must
# use it too (a home directory shared by the nodes carries it; else set RAY_AUTH_TOKEN).
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]}
# The head's first address that is not loopback: Ray advertises that one, whatever --node-ip-address says
# (`hostname --ip-address` gives 127.0.0.1 on hosts whose name maps there).
head_ip=$(srun --nodes=1 --ntasks=1 --overlap -w "$head_node" hostname -I | awk '{print $1}')
address="$head_ip:$port"
gpus=${SLURM_GPUS_ON_NODE:-0}
cpus=${SLURM_CPUS_ON_NODE:-1}
per_node=${FACECOMP_WORKERS_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}
num_workers=$(( per_node * ${#nodes[@]} ))
# Ray's own temp dir per job: two jobs on one node must not share (or stop) each other's Ray.
ray_tmp=${FACECOMP_RAY_TMP:-/tmp/ray_$SLURM_JOB_ID}

ray_pids=()
teardown() {
  # srun forwards the signal to `ray start --block`, which stops that node's Ray processes.
  for pid in "${ray_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait "${ray_pids[@]}" 2>/dev/null || true
}
trap teardown EXIT

if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  ray get-auth-token --generate >/dev/null  # writes ~/.ray/auth_token unless there is one
fi
echo "ray head on $head_node ($address); ${#nodes[@]} node(s), $num_workers training worker(s)"
srun --nodes=1 --ntasks=1 --overlap -w "$head_node" \
  ray start --head --block --node-ip-address="$head_ip" --port="$port" --num-cpus="$cpus" --num-gpus="$gpus" \
  --temp-dir="$ray_tmp" --include-dashboard=false --disable-usage-stats &
ray_pids+=($!)
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 --overlap -w "$node" \
    ray start --block --address="$address" --num-cpus="$cpus" --num-gpus="$gpus" --disable-usage-stats &
  ray_pids+=($!)
done

# Wait until every node has joined (or give up after 5 minutes).
for _ in $(seq 300); do
  alive=$(timeout 30 python - "$address" <<'PY' 2>/dev/null || echo 0
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR")
print(sum(1 for n in ray.nodes() if n["Alive"]))
PY
)
  [ "${alive:-0}" -ge "${#nodes[@]}" ] && break
  sleep 1
done
[ "${alive:-0}" -ge "${#nodes[@]}" ] || { echo "only ${alive:-0} of ${#nodes[@]} Ray nodes came up" >&2; exit 1; }

# run_stage STAGE [--init PREVIOUS_RUN]: one stage on the cluster above.
run_stage() {
  local stage=$1
  shift
  gpu_args=()
  if [ "$gpus" -gt 0 ]; then gpu_args=(--gpus-per-worker 1); fi
  # shellcheck disable=SC2086  # FACECOMP_OVERRIDES is a list of words on purpose
  facecomp cluster train --address "$address" --config "$config" --stage "$stage" --data "$FACECOMP_DATA" \
    --num-workers "$num_workers" "${gpu_args[@]}" --storage "$storage" "$@" ${FACECOMP_OVERRIDES:-}
}

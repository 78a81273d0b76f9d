# shellcheck shell=bash
# Shared by train_stage{1,2,3}.sh (sourced, not run): bring a Ray cluster up on this Slurm allocation
# (head on the first node, one worker node per other node, each through srun), run one stage of
# `facecomp cluster train` against it, and tear Ray down whatever happens.
#
# Settings (environment, all optional but FACECOMP_DATA):
#   FACECOMP_DATA            the folder holding the datasets (celeba/, celeba_extra/, ...) that every node
#                            can read (required; the same meaning as everywhere in facecomp)
#   FACECOMP_DATASETS        the dataset folders in it to train on, space-separated (default: celeba)
#   FACECOMP_SETUP           a bash file sourced on every node before Ray starts (and before the driver):
#                            `module load ...`, `conda activate ...`, proxy or NCCL variables
#   FACECOMP_CONFIG          preset or TOML file (default: paper)
#   FACECOMP_STORAGE         runs folder on a disk every node sees (default: $SLURM_SUBMIT_DIR/runs/cluster)
#   FACECOMP_VENV            environment with facecomp[cluster] (default: $SLURM_SUBMIT_DIR/.venv if it exists)
#   FACECOMP_WORKERS_PER_NODE  training workers per node (default: the node's GPUs, or 1 without GPUs)
#   FACECOMP_OVERRIDES       extra key=value overrides, space-separated
#   RAY_PORT                 the head's port (default: a free one on the head node)
#
# Preemption and time limits: the stage scripts ask Slurm for USR1 some minutes before the end
# (--signal=B:USR1@LEAD, to this batch shell only) and for --requeue. A USR1 or TERM here is forwarded
# to the driver, which makes every worker checkpoint at the same step and exits 75; the script then
# stops Ray and requeues the job (`scontrol requeue`), and the requeued job continues the run from
# that checkpoint (same storage, same run name).

set -euo pipefail

submit_dir=${SLURM_SUBMIT_DIR:-$PWD}
stop_signal=""
driver=""
# Set before anything slow: a signal while Ray starts is remembered and acted on before the stage.
on_stop() {
  stop_signal=$1
  echo "batch script: got SIG$1$([ -n "$driver" ] && echo ", forwarded to the driver (pid $driver)")"
  if [ -n "$driver" ]; then kill -s "$1" "$driver" 2>/dev/null || true; fi
}
trap 'on_stop USR1' USR1
trap 'on_stop TERM' TERM

if [ -n "${FACECOMP_SETUP:-}" ]; then
  # shellcheck source=/dev/null
  source "$FACECOMP_SETUP"
fi
venv=${FACECOMP_VENV:-$submit_dir/.venv}
if [ -d "$venv/bin" ]; then export PATH="$venv/bin:$PATH"; fi
: "${FACECOMP_DATA:?set FACECOMP_DATA to the folder holding celeba/ that every node can read}"
data_args=()
# shellcheck disable=SC2086  # FACECOMP_DATASETS is a list of words on purpose
for dataset in ${FACECOMP_DATASETS:-celeba}; do data_args+=(--data "$FACECOMP_DATA/$dataset"); done
config=${FACECOMP_CONFIG:-paper}
storage=${FACECOMP_STORAGE:-$submit_dir/runs/cluster}
free_port() { python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
port=${RAY_PORT:-$(free_port)}
# Ray's token authentication: the head writes ~/.ray/auth_token; the worker nodes and the driver must
# use it too (a home directory shared by the nodes carries it; else set RAY_AUTH_TOKEN).
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
# Ray is stopped only once the driver has ended: nothing left to drain (Ray would wait up to 30 s).
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=${RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S:-0}

# on_node NODE CMD...: run CMD on NODE through srun, after FACECOMP_SETUP there. exec: run in the
# background (`on_node ... &`, a subshell), its pid is srun's, which forwards teardown's TERM to CMD.
on_node() {
  local node=$1
  shift
  # shellcheck disable=SC2016  # expanded by the bash on the node
  exec srun --nodes=1 --ntasks=1 --overlap -w "$node" \
    bash -c 'if [ -n "${FACECOMP_SETUP:-}" ]; then source "$FACECOMP_SETUP"; fi; exec "$@"' on_node "$@"
}

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
head_node=${nodes[0]}
# The head's first address that is not loopback: Ray advertises that one, whatever --node-ip-address says
# (`hostname --ip-address` gives 127.0.0.1 on hosts whose name maps there).
head_ip=$(on_node "$head_node" hostname -I | awk '{print $1}')
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
  for pid in "${ray_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  ray_pids=()
}
trap teardown EXIT

if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  ray get-auth-token --generate >/dev/null  # writes ~/.ray/auth_token unless there is one
fi
echo "ray head on $head_node ($address); ${#nodes[@]} node(s), $num_workers training worker(s)"
# The head's other fixed ports (client server, dashboard agent) chosen free too: two jobs may share a node.
on_node "$head_node" ray start --head --block --node-ip-address="$head_ip" --port="$port" --num-cpus="$cpus" \
  --num-gpus="$gpus" --ray-client-server-port="$(free_port)" --dashboard-agent-listen-port="$(free_port)" \
  --temp-dir="$ray_tmp" --include-dashboard=false --disable-usage-stats &
ray_pids+=($!)
for node in "${nodes[@]:1}"; do
  on_node "$node" ray start --block --address="$address" --num-cpus="$cpus" --num-gpus="$gpus" --disable-usage-stats &
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

# requeue: Ray down, then this job back in the queue (Slurm ends this script); it continues the run.
requeue() {
  teardown
  echo "stage stopped with a checkpoint (SIG${stop_signal:-?}); requeueing job $SLURM_JOB_ID" \
    "(restart ${SLURM_RESTART_COUNT:-0} -> $(( ${SLURM_RESTART_COUNT:-0} + 1 )))"
  if scontrol requeue "$SLURM_JOB_ID"; then exit 0; fi
  echo "scontrol requeue failed: submit the same script again to continue" >&2
  exit 75
}

# run_stage STAGE [--init PREVIOUS_RUN]: one stage on the cluster above; requeues the job when stopped.
run_stage() {
  local stage=$1 rc
  shift
  if [ -n "$stop_signal" ]; then requeue; fi  # signalled while Ray was starting: nothing to save yet
  gpu_args=()
  if [ "$gpus" -gt 0 ]; then gpu_args=(--gpus-per-worker 1); fi
  # The driver runs in the background so that this shell can take signals (bash runs a trap only
  # between commands; `wait` returns at once on one) and forward them.
  # shellcheck disable=SC2086  # FACECOMP_OVERRIDES is a list of words on purpose
  facecomp cluster train --address "$address" --config "$config" --stage "$stage" "${data_args[@]}" \
    --num-workers "$num_workers" "${gpu_args[@]}" --storage "$storage" "$@" ${FACECOMP_OVERRIDES:-} &
  driver=$!
  while :; do
    rc=0
    wait "$driver" || rc=$?
    # > 128 with the driver alive: `wait` was cut short by a trapped signal; wait again
    if [ "$rc" -gt 128 ] && kill -0 "$driver" 2>/dev/null; then continue; fi
    break
  done
  driver=""
  if [ "$rc" -eq 75 ]; then requeue; fi
  return "$rc"
}

#!/usr/bin/env bash
# The body both SLURM scripts run (slurm_stage1.sbatch, slurm_stage2.sbatch): one evaclip-torchrun per node
# (srun), c10d rendezvous on the first node, the stop signal forwarded, and a requeue when the run was
# preempted. evaclip-torchrun exits 75 when the run checkpointed on SIGTERM/SIGUSR1 (docs/reliability.md).
#   scripts/launch/slurm_torchrun.sh MODULE CONFIG [--init …] [key=value overrides]
set -uo pipefail
module=$1 config=$2
shift 2
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
forward() { kill -s "$1" "$srun_pid" 2>/dev/null; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM

srun evaclip-torchrun \
  --nnodes "$SLURM_NNODES" --nproc_per_node 8 \
  --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "${head_node}:29500" \
  --max-restarts 3 --signals-to-handle SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout 170 \
  -m "$module" --config "$config" --resume auto "$@" &
srun_pid=$!
status=0
while kill -0 "$srun_pid" 2>/dev/null; do  # `wait` returns early when a trapped signal arrives
  wait "$srun_pid"
  status=$?
done
if [ "$status" -eq 75 ]; then
  echo "preempted: the run checkpointed and stopped; requeueing job ${SLURM_JOB_ID}"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$status"

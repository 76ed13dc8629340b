# Sourced by the sbatch scripts here: `preemptible COMMAND...` runs COMMAND so that a job stopped ahead of its
# time limit keeps its work and is requeued.
#
# The scripts ask Slurm for SIGUSR1 to this batch shell ahead of the limit (`#SBATCH --signal=B:USR1@600`:
# about 10 minutes before; sbatch --signal=... overrides it). On USR1, or on TERM (scancel, or Slurm
# preempting the job), COMMAND is sent SIGTERM (srun passes it to every task of the step, torchrun and
# accelerate to every rank): a training stage finishes the optimizer step it is on, saves it as a checkpoint
# and exits 75; prepare, synth, merge and eval stop at once, keeping what is finished. When USR1 came and
# COMMAND did not finish (smolalign exits 75; a launcher such as torchrun reports 1 whatever its workers
# said), the job is requeued (`scontrol requeue`, which needs `#SBATCH --requeue`) and starts again with the
# same command, which resumes the run. A TERM alone is passed on but does not requeue: scancel means stop,
# and a job Slurm preempts is requeued by Slurm itself when its partition's PreemptMode says so.
#
# Give the step time to finish and save: the USR1 lead (`@600`) and the launcher's wait for its workers
# (TORCH_ELASTIC_SHUTDOWN_TIMEOUT, set in train.sbatch) must exceed a step plus a checkpoint save.

preemptible() {
    local child status=0
    warned=0
    trap 'warned=1; kill -TERM "$child" 2>/dev/null || true' USR1
    trap 'kill -TERM "$child" 2>/dev/null || true' TERM
    "$@" &
    child=$!
    # `wait` returns early (status > 128) when a trapped signal arrives: wait again until COMMAND has ended
    while true; do
        status=0
        wait "$child" || status=$?
        kill -0 "$child" 2>/dev/null || break
    done
    trap - USR1 TERM
    if [ "$warned" = 1 ] && [ "$status" -ne 0 ]; then
        echo "preemptible: stopped ahead of the time limit (exit $status); requeueing job ${SLURM_JOB_ID:-?}" >&2
        scontrol requeue "$SLURM_JOB_ID"
    fi
    return "$status"
}

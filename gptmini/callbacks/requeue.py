"""SLURM requeue after a stop: the requeue signal (``#SBATCH --signal=USR1@90``) or SIGTERM.

Lightning detects SLURM (``SLURMEnvironment``, from the variables srun sets) and reads the user's
choice there: ``auto_requeue`` (on by default) and ``requeue_signal`` (SIGUSR1). Its own handler is
not used (``FaultGuard`` replaces it): it saves inside the signal handler, in the middle of a step,
to ``hpc_ckpt_N.ckpt`` in ``default_root_dir``, which ``--ckpt_path last`` does not look for. Here
the signal stops the run like SIGTERM (the step, or the accumulation window, is finished), the
guard saves ``last.ckpt``, and rank 0 requeues the job once with Lightning's command
(``scontrol requeue <job id>``); the job script resumes with ``--ckpt_path last``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment

from gptmini.train.compat import cluster_environment


def requeue_signal(trainer: pl.Trainer) -> signal.Signals | None:
    """The signal that asks for a requeue, when this run is a SLURM job with auto_requeue on."""
    env = cluster_environment(trainer)
    if isinstance(env, SLURMEnvironment) and env.auto_requeue:
        return env.requeue_signal
    return None


def job_id() -> str:
    """The job to requeue: an array task is ``<array job>_<task>`` (as Lightning's handler does)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job is not None:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ["SLURM_JOB_ID"]


def requeue() -> str:
    """Run ``scontrol requeue``; returns what to print (the job id, or why it failed)."""
    jid = job_id()
    if not re.fullmatch(r"[0-9_]+", jid):
        return f"not requeued: SLURM job id {jid!r} is not a job number"
    try:
        done = subprocess.run(["scontrol", "requeue", jid], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"not requeued (scontrol requeue {jid}: {e}); resubmit the job script"
    if done.returncode:
        why = (done.stderr or done.stdout).strip().splitlines()
        return f"not requeued (scontrol requeue {jid} exit {done.returncode}: {why[-1] if why else ''}); resubmit the job script"
    return f"requeued SLURM job {jid}"

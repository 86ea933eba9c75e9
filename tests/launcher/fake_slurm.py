"""A stand-in for SLURM's sbatch / srun / sacct / scancel, enough for submitit to submit a job
array and for the jobs to run here, one after another, with SLURM's environment variables.

``install(bin_dir)`` writes the four commands into ``bin_dir``; put it first on PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ("sbatch", "srun", "sacct", "scancel")


def install(bin_dir: Path) -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        path = bin_dir / name
        path.write_text(
            f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            f"import fake_slurm\nsys.exit(fake_slurm.{name}(sys.argv[1:]))\n"
        )
        path.chmod(0o755)
    return bin_dir


def sbatch(args: list[str]) -> int:
    script = Path(args[-1])
    text = script.read_text()
    match = re.search(r"#SBATCH --array=0-(\d+)", text)
    tasks = int(match[1]) + 1 if match else 1
    job_id = str(int(time.time() * 1000) % 10_000_000)
    log = open(script.with_suffix(".fake_slurm.log"), "a")  # noqa: SIM115 - the child keeps it
    subprocess.Popen(
        [sys.executable, __file__, "run", str(script), job_id, str(tasks)],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    print(f"Submitted batch job {job_id}")
    return 0


def run(script: str, job_id: str, tasks: int) -> None:
    time.sleep(1.0)  # submitit moves the job pickles into place once sbatch has answered
    for task in range(tasks):
        env = {
            **os.environ,
            "SLURM_JOB_ID": str(int(job_id) + 1 + task),
            "SLURM_ARRAY_JOB_ID": job_id,
            "SLURM_ARRAY_TASK_ID": str(task),
            "SLURM_JOB_NAME": "train",
            "SLURM_NTASKS": "1",
            "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_JOB_NUM_NODES": "1",
            "SLURM_NNODES": "1",
            "SLURM_NODEID": "0",
            "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0",
            "SLURM_JOB_NODELIST": "localhost",
            "SLURM_NODELIST": "localhost",
        }
        subprocess.run(["bash", script], env=env, check=False)


def srun(args: list[str]) -> int:
    outputs: dict[str, str] = {}
    while args and args[0].startswith("--"):
        flag = args.pop(0)
        if flag in ("--output", "--error"):
            outputs[flag] = args.pop(0)
    fill = {
        "%A": os.environ["SLURM_ARRAY_JOB_ID"],
        "%a": os.environ["SLURM_ARRAY_TASK_ID"],
        "%j": os.environ["SLURM_JOB_ID"],
        "%t": "0",
    }
    for flag, path in outputs.items():
        for key, value in fill.items():
            path = path.replace(key, value)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        outputs[flag] = path
    with open(outputs["--output"], "a") as out, open(outputs["--error"], "a") as err:
        return subprocess.run(args, stdout=out, stderr=err, check=False).returncode


def sacct(args: list[str]) -> int:
    print("JobID|State|NodeList")  # no state: submitit then waits for the result files
    return 0


def scancel(args: list[str]) -> int:
    return 0


if __name__ == "__main__" and sys.argv[1] == "run":
    run(sys.argv[2], sys.argv[3], int(sys.argv[4]))

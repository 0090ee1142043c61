"""A real one-node SLURM cluster on localhost, for the tests of `repro grid --executor slurm`.

    python tests/slurm_cluster.py start DIR    # prints `export SLURM_CONF=DIR/slurm.conf`; the daemons keep running
    python tests/slurm_cluster.py stop DIR     # stops every daemon it started, by the PIDs it recorded

munged, slurmctld and slurmd run as the current user (root: slurmd must be able to start jobs as the
submitting user) with every file in DIR: a minimal slurm.conf, munge's key and socket, state, spool, logs,
PID files. Nothing in /etc is touched and nothing outside DIR is written, so two clusters (or a developer's
real one) never meet.

No accounting daemon. submitit polls a job's state with `sacct`, which needs slurmdbd and a database; here
sacct fails, submitit says "status may be inaccurate" and keeps the job UNKNOWN. `repro grid` does not rely
on sacct alone: a job that left a result is done (submitit's result pickle), and one that SLURM no longer
runs without leaving a result (killed, out of memory, cancelled hard) is found with `squeue`
(repro.slurm.JobWatch). This cluster therefore tests the path a cluster without accounting takes;
a cluster with accounting adds sacct's answer on top.

`start` raises ClusterUnavailable, naming the step that failed, where a binary is missing or a daemon does not
come up; the fixture turns that into a skip with that reason.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from repro.artifacts import process_alive as alive

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scancel", "srun")


class ClusterUnavailable(RuntimeError):
    """SLURM cannot run here; the message names the command or the step that failed."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def find(binary: str) -> str:
    for folder in (*os.environ.get("PATH", "").split(os.pathsep), "/usr/sbin", "/sbin", "/usr/bin"):
        candidate = Path(folder) / binary
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ClusterUnavailable(f"`{binary}` not found (Debian: apt-get install slurmctld slurmd slurm-client munge)")


def memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        kib = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    return max(kib // 1024 - 1024, 512)  # what slurmd may hand out, leaving the system a GiB


def slurm_conf(folder: Path, host: str, user: str) -> str:
    # KillWait 5: a cancelled or timed-out job gets SIGTERM, then SIGKILL 5 s later (30 by default), so the
    # tests that kill jobs are quick. MinJobAge 300: squeue still shows a finished job's state for 5 minutes.
    # cons_tres with CR_CPU: two one-CPU jobs share the node, as cells of an array do on a real partition.
    return f"""\
ClusterName=repro-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser={user}
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket.2
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=5
MinJobAge=300
InactiveLimit=0
NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory={memory_mb()} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def environment(folder: Path) -> dict:
    return {**os.environ, "SLURM_CONF": str(folder / "slurm.conf")}


def run(command: list[str], folder: Path, step: str, timeout: float = 30) -> str:
    try:
        done = subprocess.run(command, env=environment(folder), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ClusterUnavailable(f"{step}: `{' '.join(command)}` failed ({error})") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ClusterUnavailable(f"{step}: `{' '.join(command)}` exited {done.returncode}"
                                 + (f" ({detail[-1]})" if detail else ""))
    return done.stdout


def log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


def wait_for(check, seconds: float, what: str, log: Path | None = None) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if check():
            return time.monotonic() - start
        time.sleep(0.2)
    raise ClusterUnavailable(f"{what} within {seconds:.0f} s" + (f" ({log.name}: {log_tail(log)})" if log else ""))


def node_state(folder: Path) -> str:
    try:
        return run([find("sinfo"), "-h", "-N", "-o", "%T"], folder, "sinfo", timeout=10).strip()
    except ClusterUnavailable:
        return ""


def start(folder: Path, timeout: float = 60) -> float:
    """Start munged, slurmctld and slurmd with every file in `folder`; returns the seconds until `sinfo` showed
    the node idle. On failure, stops whatever it had started and raises ClusterUnavailable."""
    if sys.platform != "linux":
        raise ClusterUnavailable(f"SLURM runs on Linux, this is {sys.platform}")
    if os.geteuid() != 0:
        raise ClusterUnavailable("slurmd must run as root to start jobs (the tests run as an unprivileged user)")
    binaries = {name: find(name) for name in (*DAEMONS, *CLIENTS, "mungekey")}
    folder = Path(folder).resolve()
    for sub in ("munge", "state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(folder / "munge", 0o700)
    begin = time.monotonic()
    host = socket.gethostname().split(".")[0]
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip() or "root"
    (folder / "slurm.conf").write_text(slurm_conf(folder, host, user))
    try:
        key = folder / "munge" / "munge.key"
        run([binaries["mungekey"], "--create", f"--keyfile={key}", "--force"], folder, "creating munge's key")
        run([binaries["munged"], "--force", f"--key-file={key}", f"--socket={folder}/munge/munge.socket.2",
             f"--pid-file={folder}/munge/munged.pid", f"--log-file={folder}/munge/munged.log",
             f"--seed-file={folder}/munge/munged.seed"], folder, "starting munged")
        run([binaries["slurmctld"], "-c", "-i"], folder, "starting slurmctld")  # -c: a clean state, -i: ignore old
        run([binaries["slurmd"], "-b"], folder, "starting slurmd")  # -b: report the boot now
        wait_for(lambda: node_state(folder) == "idle", timeout, "the node did not show idle in sinfo",
                 folder / "slurmd.log")
    except ClusterUnavailable:
        stop(folder)
        raise
    return time.monotonic() - begin


def recorded_pids(folder: Path) -> list[int]:
    pids = []
    for path in (folder / "slurmd.pid", folder / "slurmctld.pid", folder / "munge" / "munged.pid"):
        try:
            pids.append(int(path.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def cancel_jobs(folder: Path, seconds: float = 30) -> list[str]:
    """Cancel every job of this cluster and wait until none runs (a job's slurmstepd outlives slurmd): the
    ids still listed after `seconds`, said on stderr ([] when none, or when slurmctld is already gone)."""
    def listed() -> list[str]:
        return run([find("squeue"), "-h", "-o", "%i"], folder, "squeue", timeout=10).split()

    try:
        run([find("scancel"), "--full", "--user", str(os.getuid())], folder, "scancel", timeout=10)
    except ClusterUnavailable:
        return []  # slurmctld already gone: nothing to ask
    try:
        wait_for(lambda: not listed(), seconds, "jobs still running")
        return []
    except ClusterUnavailable:
        try:
            left = listed()
        except ClusterUnavailable:
            return []
        print(f"slurm_cluster: jobs {', '.join(left)} still listed {seconds:.0f} s after scancel; stopping the "
              "daemons anyway", file=sys.stderr)
        return left


def stop(folder: Path, grace: float = 10) -> None:
    """Cancel the cluster's jobs, then SIGTERM to every daemon this folder's PID files name, SIGKILL to those
    still alive after `grace` seconds."""
    folder = Path(folder).resolve()
    if (folder / "slurmctld.pid").is_file():
        cancel_jobs(folder)
    pids = recorded_pids(folder)
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("start", "stop"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    folder = Path(argv[2])
    if argv[1] == "stop":
        stop(folder)
        return 0
    try:
        seconds = start(folder)
    except ClusterUnavailable as error:
        print(f"SLURM not started: {error}", file=sys.stderr)
        return 1
    print(f"# cluster up in {seconds:.1f} s; stop it with: python {argv[0]} stop {folder}", file=sys.stderr)
    print(f"export SLURM_CONF={folder.resolve()}/slurm.conf")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

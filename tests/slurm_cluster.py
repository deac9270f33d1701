"""A throwaway single-node Slurm cluster in one folder, for tests/test_slurm.py and by hand.

Debian's Slurm 22.05 (`apt-get install slurm-wlm munge`): munged, slurmctld and slurmd run as root
with their config, MUNGE key, socket, state, spool, pid files and logs all under DIR, on two free
TCP ports, so nothing of a system Slurm or MUNGE is used or touched.  Clients find the cluster
through SLURM_CONF=DIR/slurm.conf (jobs inherit it from sbatch).

    python tests/slurm_cluster.py start DIR    # prints: export SLURM_CONF=DIR/slurm.conf
    python tests/slurm_cluster.py stop DIR     # cancels the jobs, stops the daemons (DIR is kept)
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

CLIENTS = ("sbatch", "srun", "squeue", "sinfo", "scontrol", "scancel")
DAEMONS = ("munged", "slurmctld", "slurmd")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin", "/bin"])
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}


class SlurmError(RuntimeError):
    pass


def which(prog):
    return shutil.which(prog, path=SEARCH_PATH)


def missing_programs():
    return [p for p in DAEMONS + CLIENTS if which(p) is None]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_hardware():
    """`slurmd -C`'s CPUs/Boards/Sockets/Cores/Threads/RealMemory of this machine."""
    out = subprocess.run([which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("NodeName=")), None)
    if line is None:
        raise SlurmError(f"slurmd -C printed no node line: {out.strip()!r}")
    return " ".join(w for w in line.split() if not w.startswith("NodeName="))


class SlurmCluster:
    def __init__(self, root):
        self.root = Path(root).resolve()
        self.conf = self.root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]

    # -- files ------------------------------------------------------------------------------------
    def path(self, name):
        return self.root / name

    @property
    def env(self):
        """os.environ with SLURM_CONF pointing at this cluster."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def write_config(self, ctld_port=None, slurmd_port=None):
        for d in ("state", "spool", "munge"):
            self.path(d).mkdir(parents=True, exist_ok=True)
        self.path("munge").chmod(0o700)
        key = self.path("munge/munge.key")
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        p = self.path
        self.conf.write_text(f"""\
ClusterName=eptest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port or free_port()}
SlurmdPort={slurmd_port or free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={p("munge/munge.socket")}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation={p("state")}
SlurmdSpoolDir={p("spool")}
SlurmctldPidFile={p("slurmctld.pid")}
SlurmdPidFile={p("slurmd.pid")}
SlurmctldLogFile={p("slurmctld.log")}
SlurmdLogFile={p("slurmd.log")}
NodeName={self.node} NodeAddr=127.0.0.1 {node_hardware()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def log_tail(self, n=8):
        out = []
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            f = self.path(name)
            if f.exists():
                lines = f.read_text(errors="replace").splitlines()[-n:]
                out.append(f"--- {f}\n" + "\n".join(lines))
        return "\n".join(out)

    # -- commands ---------------------------------------------------------------------------------
    def run(self, *args, timeout=30, check=True):
        proc = subprocess.run([which(args[0]) or args[0], *map(str, args[1:])], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(map(str, args))} exited {proc.returncode}: "
                             f"{(proc.stderr or proc.stdout).strip()}")
        return proc

    def _daemon(self, *argv):
        proc = subprocess.run([which(argv[0]), *argv[1:]], env=self.env, capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise SlurmError(f"{argv[0]} did not start (exit {proc.returncode}): "
                             f"{(proc.stderr or proc.stdout).strip()}\n{self.log_tail()}")

    def node_state(self):
        proc = self.run("sinfo", "-h", "-N", "-o", "%t", timeout=15, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def start(self, timeout=60):
        """Config, key, then munged, slurmctld and slurmd; returns once the node is idle."""
        missing = missing_programs()
        if missing:
            raise SlurmError(f"not installed: {', '.join(missing)}")
        self.write_config()
        m = self.path("munge")
        self._daemon("munged", "--force", f"--key-file={m / 'munge.key'}", f"--socket={m / 'munge.socket'}",
                     f"--pid-file={m / 'munged.pid'}", f"--seed-file={m / 'munged.seed'}",
                     f"--log-file={self.path('munged.log')}")
        self._daemon("slurmctld", "-f", self.conf)
        self._daemon("slurmd", "-f", self.conf, "-N", self.node)
        deadline, state = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            state = self.node_state()
            if state == "idle":
                return self
            if state and state.startswith("drain"):  # e.g. less memory or CPUs than configured
                break
            time.sleep(0.5)
        reason = self.run("sinfo", "-h", "-R", "-o", "%E", timeout=15, check=False).stdout.strip()
        raise SlurmError(f"node {self.node} not idle after {timeout}s (sinfo: {state!r}"
                         f"{', ' + reason if reason else ''})\n{self.log_tail()}")

    def jobs(self):
        """{job id: state} of every job the controller still knows (finished ones for MinJobAge)."""
        proc = self.run("squeue", "-h", "-t", "all", "-o", "%i %T", check=False)
        return dict(ln.split()[:2] for ln in proc.stdout.splitlines() if len(ln.split()) >= 2)

    def job_info(self, job_id):
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_jobs(self, job_ids, timeout, poll=1.0):
        """Wait until each job (an id as squeue/submitit prints it, e.g. 12 or 12_0) has ended;
        returns {id: final state}."""
        deadline = time.monotonic() + timeout
        while True:
            states = {j: self.job_info(j).get("JobState") for j in job_ids}
            if all(s in TERMINAL for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise SlurmError(f"jobs not finished after {timeout}s: {states}\n{self.log_tail()}")
            time.sleep(poll)

    def stop(self, timeout=30):
        """Cancel every job, then stop slurmd, slurmctld and munged (by their pid files)."""
        if self.conf.exists() and self._alive(self.path("slurmctld.pid")):
            live = [j for j, s in self.jobs().items() if s not in TERMINAL]
            if live:
                self.run("scancel", "--full", *live, check=False)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(s not in TERMINAL for s in self.jobs().values()):
                time.sleep(0.5)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            self._terminate(self.path(pid_file), timeout)

    @staticmethod
    def _pid(pid_file):
        try:
            return int(Path(pid_file).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _alive(self, pid_file):
        pid = self._pid(pid_file)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False

    def _terminate(self, pid_file, timeout):
        pid = self._pid(pid_file)
        if pid is None or not self._alive(pid_file):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def main(argv):
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: slurm_cluster.py start|stop DIR", file=sys.stderr)
        return 2
    cluster = SlurmCluster(argv[1])
    try:
        if argv[0] == "start":
            cluster.start()
            print(f"export SLURM_CONF={cluster.conf}")
        else:
            cluster.stop()
    except (SlurmError, OSError, subprocess.SubprocessError) as e:
        print(f"slurm_cluster.py: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

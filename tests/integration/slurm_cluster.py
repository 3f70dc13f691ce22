"""A real single-node SLURM cluster on this machine, from Debian's packages.

    python tests/integration/slurm_cluster.py install   # apt-get the packages (root)
    python tests/integration/slurm_cluster.py up        # munge, MariaDB, slurmdbd, slurmctld, slurmd
    python tests/integration/slurm_cluster.py down

`make slurm-up` / `make slurm-down` run these. No systemd and no cgroups: the daemons are
started by hand, with `proctrack/linuxproc` and `task/none`. Accounting runs (slurmdbd on
MariaDB) because without it submitit's sacct calls fail and a job killed without a result can
leave `job.result()` waiting forever. Everything the cluster writes lives under STATE_DIR, and
its configs are the system's (/etc/slurm), so sbatch, squeue and submitit find them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "slurmdbd", "munge", "mariadb-server", "mariadb-client"]
STATE_DIR = Path(os.environ.get("QLORA_SLURM_STATE", "/var/tmp/qlora-slurm"))
CONF_DIR = Path("/etc/slurm")
CLUSTER = "qloralab"
DAEMONS = ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged")


def installed() -> bool:
    return all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "slurmdbd", "sbatch", "munged", "mariadbd"))


def install() -> None:
    """Debian 12: Slurm 22.05, munge 0.5.15, MariaDB; about 12 s after `apt-get update`."""
    if installed():
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def _slurm_conf(host: str, cpus: int, memory_mb: int) -> str:
    return f"""# written by tests/integration/slurm_cluster.py: a one-node cluster without systemd or cgroups
ClusterName={CLUSTER}
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
StateSaveLocation={STATE_DIR}/slurmctld
SlurmdSpoolDir={STATE_DIR}/slurmd
SlurmctldPidFile={STATE_DIR}/slurmctld.pid
SlurmdPidFile={STATE_DIR}/slurmd.pid
SlurmctldLogFile={STATE_DIR}/slurmctld.log
SlurmdLogFile={STATE_DIR}/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=5
MinJobAge=300
SchedulerParameters=batch_sched_delay=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def _slurmdbd_conf(host: str) -> str:
    return f"""# written by tests/integration/slurm_cluster.py
AuthType=auth/munge
DbdHost={host}
DbdAddr=127.0.0.1
SlurmUser=root
LogFile={STATE_DIR}/slurmdbd.log
PidFile={STATE_DIR}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
"""


def _run(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=True, text=True, capture_output=True, **kwargs)


def _wait(what: str, ready, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not come up within {timeout_s:.0f} s (logs under {STATE_DIR})")


def _succeeds(*cmd: str) -> bool:
    return subprocess.run(list(cmd), capture_output=True).returncode == 0


def up() -> None:
    """Start every daemon (idempotent: a running cluster is left as it is)."""
    if not installed():
        raise SystemExit("error: SLURM is not installed; run `python tests/integration/slurm_cluster.py install`")
    if _succeeds("sinfo", "-h") and _node_idle():
        print("cluster already up")
        return
    down(quiet=True)
    for sub in ("slurmctld", "slurmd", "mysql", "munge"):
        (STATE_DIR / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    memory_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)

    # munge: the key the package made, its socket folder readable by everyone (slurmdbd needs it)
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    os.chmod("/run/munge", 0o755)
    _run("runuser", "-u", "munge", "--", "munged", "--force")
    _wait("munged", lambda: _succeeds("sh", "-c", "munge -n | unmunge"))

    # MariaDB for accounting, in its own data folder
    data = STATE_DIR / "mysql"
    if not (data / "mysql").exists():
        _run("mysql_install_db", "--user=mysql", f"--datadir={data}", "--auth-root-authentication-method=socket")
    shutil.chown(data, "mysql", "mysql")
    Path("/run/mysqld").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/mysqld", "mysql", "mysql")
    subprocess.Popen(["mariadbd", "--user=mysql", f"--datadir={data}", "--bind-address=127.0.0.1",
                      "--socket=/run/mysqld/mysqld.sock", f"--pid-file={data}/mariadbd.pid",
                      f"--log-error={data}/mariadb.log"], start_new_session=True,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait("MariaDB", lambda: _succeeds("mysql", "-uroot", "-e", "select 1"))
    _run("mysql", "-uroot", "-e",
         "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';"
         "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';"
         "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
         "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;")

    CONF_DIR.mkdir(parents=True, exist_ok=True)
    (CONF_DIR / "slurm.conf").write_text(_slurm_conf(host, cpus, memory_mb))
    dbd = CONF_DIR / "slurmdbd.conf"
    dbd.write_text(_slurmdbd_conf(host))
    os.chmod(dbd, 0o600)

    _run("slurmdbd")
    _wait("slurmdbd", lambda: _succeeds("sacctmgr", "-n", "list", "cluster"))
    if CLUSTER not in _run("sacctmgr", "-n", "-P", "list", "cluster", "format=cluster").stdout.split():
        _run("sacctmgr", "-i", "add", "cluster", CLUSTER)
    _run("slurmctld")
    _wait("slurmctld", lambda: _succeeds("scontrol", "ping"))
    _run("slurmd")
    _wait("slurmd", lambda: _node_state() != "")
    if _node_state() not in ("idle", "mixed", "allocated"):  # drained by a job a past `down` cut short
        _run("scontrol", "update", f"nodename={host}", "state=resume")
    _wait("slurmd (node idle)", _node_idle)
    print(f"cluster {CLUSTER} up: node {host}, {cpus} CPUs, {memory_mb} MB; state and logs in {STATE_DIR}")


def _node_state() -> str:
    result = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return result.stdout.strip().rstrip("*~#") if result.returncode == 0 else ""


def _node_idle() -> bool:
    return _node_state() in ("idle", "mixed", "allocated")


def down(quiet: bool = False) -> None:
    """Stop every daemon this script starts; configs and state stay for the next `up`."""
    if shutil.which("scancel") and _succeeds("scontrol", "ping"):
        subprocess.run(["scancel", "--full", "--user=root"], capture_output=True, timeout=30)
        deadline = time.monotonic() + 30  # let the jobs end, so no step outlives its slurmd
        while time.monotonic() < deadline and subprocess.run(["squeue", "-h"], capture_output=True,
                                                            text=True).stdout.strip():
            time.sleep(0.5)
    for daemon in DAEMONS:
        subprocess.run(["pkill", "-x", daemon], capture_output=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_succeeds("pgrep", "-x", d) for d in DAEMONS):
        time.sleep(0.3)
    for daemon in DAEMONS:
        subprocess.run(["pkill", "-9", "-x", daemon], capture_output=True)
    if not quiet:
        print("cluster down")


def main(argv: list[str]) -> None:
    commands = {"install": install, "up": up, "down": down}
    if len(argv) != 1 or argv[0] not in commands:
        raise SystemExit(f"usage: slurm_cluster.py {{{'|'.join(commands)}}}")
    commands[argv[0]]()


if __name__ == "__main__":
    main(sys.argv[1:])

"""A real single-node SLURM cluster on this machine, from Debian's packages.

    python tests/integration/slurm_cluster.py install   # apt-get the packages (root)
    python tests/integration/slurm_cluster.py up        # munge, MariaDB, slurmdbd, slurmctld, slurmd
    python tests/integration/slurm_cluster.py down

`make slurm-up` / `make slurm-down` run these. No systemd and no cgroups: the daemons are
started by hand, with `proctrack/linuxproc` and `task/none`.

The node is a simulated GPU node: 8 GPUs (Slurm generic resources, `AutoDetect=off`, `File=`
pointing at device nodes made here: character devices with /dev/null's numbers, or plain files
where mknod is not allowed), 64 CPUs and 512 GB (SlurmdParameters=config_overrides: slurmd takes
the configured node as it is, not the machine's 2 cores). Jobs asking for 1, 2 or 4 GPUs are
scheduled and packed by Slurm for real and get CUDA_VISIBLE_DEVICES; nothing in them can use a
GPU (a rehearsal, `train.rehearsal=true`, does no model work). QLORA_SLURM_{GPUS,CPUS,MEM_MB,
MAX_ARRAY_SIZE} change the node and the array limit; `up()` takes them as arguments too, and
reconfigures a running cluster whose settings differ. Accounting runs (slurmdbd on
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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Node:
    """The simulated node and the scheduler limit the tests vary."""

    gpus: int = int(os.environ.get("QLORA_SLURM_GPUS", 8))
    cpus: int = int(os.environ.get("QLORA_SLURM_CPUS", 64))
    memory_mb: int = int(os.environ.get("QLORA_SLURM_MEM_MB", 512_000))
    max_array_size: int = int(os.environ.get("QLORA_SLURM_MAX_ARRAY_SIZE", 1001))


def gpu_devices(gpus: int) -> list[Path]:
    """Device nodes for the gres.conf `File=` lines: /dev/null's numbers, or plain files."""
    folder = STATE_DIR / "dev"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"gpu{i}" for i in range(gpus)]
    for path in paths:
        if not path.exists():
            made = subprocess.run(["mknod", str(path), "c", "1", "3"], capture_output=True)
            if made.returncode != 0:
                path.touch()
    return paths


def _gres_conf(host: str, gpus: int) -> str:
    if not gpus:
        return "AutoDetect=off\n"
    return f"AutoDetect=off\nNodeName={host} Name=gpu File={STATE_DIR}/dev/gpu[0-{gpus - 1}]\n"


def _slurm_conf(host: str, node: Node) -> str:
    cpus, memory_mb = node.cpus, node.memory_mb
    gres = f" Gres=gpu:{node.gpus}" if node.gpus else ""
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
GresTypes=gpu
SlurmdParameters=config_overrides
MaxArraySize={node.max_array_size}
MaxJobCount=20000
AuthInfo=cred_expire=10
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb}{gres} State=UNKNOWN
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


def up(node: Node | None = None) -> None:
    """Start every daemon (idempotent: a running cluster with these settings is left as it is;
    one with others is restarted with them)."""
    if not installed():
        raise SystemExit("error: SLURM is not installed; run `python tests/integration/slurm_cluster.py install`")
    node = node or Node()
    host = socket.gethostname().split(".")[0]
    conf = _slurm_conf(host, node)
    current = (CONF_DIR / "slurm.conf").read_text() if (CONF_DIR / "slurm.conf").exists() else ""
    if _succeeds("sinfo", "-h") and _node_idle() and current == conf:
        print("cluster already up")
        return
    down(quiet=True)
    for sub in ("slurmctld", "slurmd", "mysql", "munge"):
        (STATE_DIR / sub).mkdir(parents=True, exist_ok=True)
    gpu_devices(node.gpus)

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
    (CONF_DIR / "slurm.conf").write_text(conf)
    (CONF_DIR / "gres.conf").write_text(_gres_conf(host, node.gpus))
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
    print(f"cluster {CLUSTER} up: node {host}, {node.gpus} GPUs (simulated), {node.cpus} CPUs, {node.memory_mb} MB, "
          f"MaxArraySize {node.max_array_size}; state and logs in {STATE_DIR}")


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

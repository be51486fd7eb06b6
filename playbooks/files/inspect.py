"""Run on an SSH host by deploy-pilot.yml and facts.yml (python3 -c "<this>" ROOT): what the
host offers (cores, memory, Python, free disk), whether its pilot runs, and the SHA-1 of the
pilot's files, as one JSON line. Creates ROOT (mode 0700) when `--create` is given."""
import hashlib
import json
import os
import platform
import shutil
import sys

root = os.path.expanduser(sys.argv[1])
created = False
if "--create" in sys.argv and not os.path.isdir(root):
    os.makedirs(root, mode=0o700)
    created = True
where = root
while not os.path.isdir(where):
    where = os.path.dirname(where) or "/"
mem = 0
with open("/proc/meminfo") as f:
    for line in f:
        if line.startswith("MemTotal:"):
            mem = int(line.split()[1]) // 1024
sha = {}
for name in ("pilot.pyz", "pilotctl.sh", "pilot.json"):
    try:
        with open(os.path.join(root, name), "rb") as f:
            sha[name] = hashlib.sha1(f.read()).hexdigest()
    except OSError:
        sha[name] = ""
running = False
try:
    with open(os.path.join(root, "pilot.pid")) as f:
        pid = int(f.read().strip())
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        running = f"--config {root}/pilot.json".encode() in f.read().replace(b"\0", b" ")
except (OSError, ValueError):
    pass
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
print(json.dumps({
    "cores": cores, "memory_mb": mem, "python": platform.python_version(),
    "python_ok": sys.version_info >= (3, 11), "disk_free_mb": shutil.disk_usage(where).free // 2**20,
    "hostname": platform.node(), "kernel": platform.release(), "sha1": sha,
    "running": running, "created": created,
}))

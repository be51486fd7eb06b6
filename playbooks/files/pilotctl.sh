#!/bin/sh
# pilotctl: start, stop or check the cloudpilot pilot kept in this directory (one per host).
# Copied to each SSH host by deploy-pilot.yml; run by deploy-pilot.yml and stop-pilot.yml.
#   pilotctl.sh start          start the pilot unless it runs; prints "started PID" or "running PID"
#   pilotctl.sh restart GRACE  stop, then start (its code or config changed)
#   pilotctl.sh stop GRACE     SIGTERM, SIGKILL after GRACE seconds; prints "stopped" or "absent"
#   pilotctl.sh status         prints "running PID" or "absent"
# The pilot runs in its own session (setsid), its output in pilot.log, so it outlives the SSH
# session that started it. Its token is in pilot.json (mode 0600), never on a command line.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
python=${CLOUDPILOT_PYTHON:-python3}

running() {
  [ -f pilot.pid ] || return 1
  pid=$(cat pilot.pid)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  # the PID must still be our pilot (PIDs are reused)
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--config $here/pilot.json"
}

payloads() {  # processes whose working directory is inside our work dir (jobs, own sessions)
  for d in /proc/[0-9]*; do
    c=$(readlink "$d/cwd" 2>/dev/null) || continue
    case "$c" in "$here"/work/*) echo "${d#/proc/}" ;; esac
  done
}

start() {
  if running; then echo "running $pid"; return 0; fi
  [ -f pilot.json ] || { echo "no pilot.json in $here" >&2; exit 2; }
  mkdir -p work
  setsid "$python" "$here/pilot.pyz" --config "$here/pilot.json" >> pilot.log 2>&1 < /dev/null &
  echo $! > pilot.pid
  sleep 0.3
  if ! running; then
    echo "the pilot exited at once:" >&2; tail -n 5 pilot.log >&2; exit 3
  fi
  echo "started $pid"
}

stop() {
  grace=${1:-20}
  if ! running; then
    rm -f pilot.pid
    for p in $(payloads); do kill -KILL "$p" 2>/dev/null || true; done
    echo "absent"; return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true    # graceful: the pilot reports its jobs interrupted
  waited=0
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt $((grace * 10)) ]; do
    sleep 0.1; waited=$((waited + 1))
  done
  if kill -0 "$pid" 2>/dev/null; then       # forceful, after the grace period
    kill -KILL "$pid" 2>/dev/null || true
    echo "killed after ${grace}s" >&2
  fi
  for p in $(payloads); do kill -KILL "$p" 2>/dev/null || true; done
  rm -f pilot.pid
  echo "stopped"
}

case "${1:-}" in
  start) start ;;
  restart) stop "${2:-20}" >/dev/null; start ;;
  stop) stop "${2:-20}" ;;
  status) if running; then echo "running $pid"; else echo "absent"; fi ;;
  *) echo "usage: pilotctl.sh start|restart GRACE|stop GRACE|status" >&2; exit 64 ;;
esac

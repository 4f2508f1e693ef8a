#!/usr/bin/env bash
# stop.sh DIR [NAME...] -- stop the kube-apiserver and etcd started by
# start.sh DIR, or only those named (kube-apiserver, etcd; resume.sh starts
# one again).
# Only signals the PIDs in DIR/*.pid, and only if that process's command line
# still mentions DIR (guards against recycled PIDs). State in DIR is kept;
# `rm -rf DIR` afterwards if you want it gone.
set -uo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 DIR [kube-apiserver|etcd]..." >&2; exit 2; }
DIR=$(cd "$1" 2>/dev/null && pwd) || { echo "stop.sh: no such dir $1" >&2; exit 0; }

ours() { # pid -> process exists and belongs to DIR
  [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -qF -- "$DIR/"
}
stop_one() {
  local name=$1 pidf=$DIR/$1.pid pid i
  [[ -f $pidf ]] || return 0
  pid=$(cat "$pidf")
  if ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do ours "$pid" || break; sleep 0.1; done
    if ours "$pid"; then
      echo "stop.sh: $name ($pid) ignored SIGTERM for 10 s, sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null
    fi
    echo "stop.sh: stopped $name ($pid)" >&2
  fi
  rm -f "$pidf"
}
NAMES=("${@:2}")
[[ ${#NAMES[@]} -gt 0 ]] || NAMES=(kube-apiserver etcd)
for name in "${NAMES[@]}"; do
  case $name in
    kube-apiserver | etcd) stop_one "$name" ;;
    *) echo "stop.sh: unknown process $name" >&2; exit 2 ;;
  esac
done

# hack/eco/lib.sh — sourced by hack/eco/{podman,containerd,docker}: the case runner, the summary
# and the leftover check.  The caller sets ENGINE and calls eco_init "$@" first.
# shellcheck shell=bash
set -uo pipefail
ECO_HACK=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$ECO_HACK/../.." && pwd)
ECO_CACHE=${ECO_CACHE:-$REPO/target/eco}          # images (hack/eco/images), logs
CASE_TIMEOUT=${CASE_TIMEOUT:-60}                   # seconds per case

# eco_init RUNTIME: checks the runtime, makes the private temp dir $T (removed by eco_finish).
eco_init() {
  [ "$(id -u)" = 0 ] || { echo "eco/$ENGINE: must run as root" >&2; exit 2; }
  [ $# -eq 1 ] || { echo "usage: hack/eco/$ENGINE RUNTIME   (path of runvz, runc, ...)" >&2; exit 2; }
  RT=$(readlink -f "$1")
  [ -x "$RT" ] || { echo "eco/$ENGINE: runtime $1 is not an executable" >&2; exit 2; }
  RT_LABEL=$(basename "$RT")
  "$ECO_HACK/images" >/dev/null || { echo "eco/$ENGINE: hack/eco/images failed" >&2; exit 2; }
  T=$(mktemp -d "/tmp/eco-$ENGINE.XXXXXX")
  cd "$T" || exit 2     # conmon drops an "oom" file into its working directory
  LOG=$ECO_CACHE/logs/$ENGINE-$RT_LABEL.log
  mkdir -p "$ECO_CACHE/logs"; : > "$LOG"
  PASS=0 FAILED=() XFAILED=() XPASSED=() LEAKS=()
  T0=$SECONDS
  echo "=== eco $ENGINE with $RT (private instance in $T, log $LOG)"
}

# limited CMD... : runs CMD (a function too) in its own process group with its output on stdout;
# after CASE_TIMEOUT seconds the group is killed and the status is 124.
limited() {
  set -m
  ( "$@" ) 2>&1 & local pid=$!
  ( sleep "$CASE_TIMEOUT"; kill -KILL -- -"$pid" ) >/dev/null 2>&1 & local dog=$!
  set +m
  wait "$pid"; local rc=$?
  if kill -0 "$dog" 2>/dev/null; then kill -KILL -- -"$dog" 2>/dev/null; wait "$dog" 2>/dev/null
  else rc=124; fi
  return $rc
}

# tc NAME CMD... : one case; PASS when CMD exits 0 within CASE_TIMEOUT.
tc() {
  local name=$1 out rc; shift
  out=$(limited "$@"); rc=$?
  printf '### %s (exit %s)\n%s\n' "$name" "$rc" "$out" >> "$LOG"
  if [ $rc = 0 ]; then
    echo "PASS  $name"; PASS=$((PASS + 1))
  else
    [ $rc = 124 ] && out="timed out after ${CASE_TIMEOUT}s; $out"
    echo "FAIL  $name: $(printf '%s' "$out" | tail -n 3 | tr '\n' ' ' | cut -c1-300)"
    FAILED+=("$name")
  fi
}

# txfail NAME CMD... : a case expected to fail (e.g. checkpoint before issue 10): XFAIL or XPASS,
# neither counts as a pass or a failure.
txfail() {
  local name=$1 out rc; shift
  out=$(limited "$@"); rc=$?
  printf '### %s (expected failure; exit %s)\n%s\n' "$name" "$rc" "$out" >> "$LOG"
  if [ $rc = 0 ]; then
    echo "XPASS $name (expected to fail: update the suite)"; XPASSED+=("$name")
  else
    echo "XFAIL $name: $(printf '%s' "$out" | tail -n 1 | cut -c1-200)"; XFAILED+=("$name")
  fi
}

# until_ok SECONDS CMD... : retries CMD every 0.2 s (a port that opens, a state that settles).
until_ok() {
  local end=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -lt $end ] || return 1; sleep 0.2; done
}

# A memory hog for the OOM cases: a 100 MB shell string in a container limited to 32 MiB.
# shellcheck disable=SC2016  # expanded inside the container
# shellcheck disable=SC2034  # used by the engine scripts
HOG='x=$(head -c 100000000 /dev/zero | tr "\0" a); echo survived ${#x}'

# leak NAME...: records leftovers found by the engine's check.
leak() { LEAKS+=("$@"); }

# Generic leftover checks after the engine stopped: processes that mention $T (daemons, shims,
# conmon, docker-proxy, runtime calls), mounts under $T, and the cgroups named in the arguments
# (relative paths below each hierarchy; a container's processes keep its cgroup from going).
check_common_leftovers() {
  local p c h first=() pids=()
  for p in /proc/[0-9]*; do
    if { tr "\\0" " " < "$p/cmdline"; } 2>/dev/null | grep -qF "$T"; then
      [[ $(sed 's/.*) //' "$p/stat" 2>/dev/null | cut -d' ' -f1) =~ ^[ZX]?$ ]] || first+=("${p#/proc/}")
    fi
  done
  # a second look: processes exiting right now or zombies reaped late by PID 1 do not count
  [ ${#first[@]} -eq 0 ] || sleep 1
  for p in "${first[@]}"; do
    [[ $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f1) =~ ^[ZX]?$ ]] ||
      pids+=("$p ($({ tr '\0' ' ' < "/proc/$p/cmdline"; } 2>/dev/null | cut -c1-120))")
  done
  for p in "${pids[@]}"; do leak "process: $p"; done
  while read -r m; do leak "mount: $m"; done < <(awk -v t="$T" 'index($5, t) == 1 {print $5}' /proc/self/mountinfo)
  for c in "$@"; do
    for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/unified/; do
      [ -d "$h$c" ] || continue
        rmdir "$h$c" 2>/dev/null || leak "cgroup: $h$c ($(find "$h$c" -mindepth 1 -type d | wc -l) below)"
    done
  done
}

# kill_leftovers: after a leak was reported, do not let it survive the script.
kill_leftovers() {
  local p
  for p in /proc/[0-9]*; do
    { tr "\\0" " " < "$p/cmdline"; } 2>/dev/null | grep -qF "$T" && kill -KILL "${p#/proc/}" 2>/dev/null
  done
  awk -v t="$T" 'index($5, t) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m"; done
}

# eco_finish: removes $T, prints the leftovers and the summary line; exit status for the script.
eco_finish() {
  local total=$((PASS + ${#FAILED[@]})) extra=
  if [ ${#LEAKS[@]} -gt 0 ]; then
    printf 'LEAK  %s\n' "${LEAKS[@]}"
    kill_leftovers
  fi
  cd / && rm -rf "$T" 2>/dev/null || leak "could not remove $T"
  [ ${#XFAILED[@]} -eq 0 ] || extra=" (+${#XFAILED[@]} expected failure: ${XFAILED[*]})"
  [ ${#XPASSED[@]} -eq 0 ] || extra="$extra (unexpectedly passing: ${XPASSED[*]})"
  echo "$ENGINE $RT_LABEL: $PASS of $total pass$extra; $((SECONDS - T0)) s"
  [ ${#FAILED[@]} -eq 0 ] || echo "$ENGINE $RT_LABEL: FAILED: ${FAILED[*]}"
  [ ${#LEAKS[@]} -eq 0 ] || echo "$ENGINE $RT_LABEL: FAILED: ${#LEAKS[@]} leftovers"
  [ ${#FAILED[@]} -eq 0 ] && [ ${#LEAKS[@]} -eq 0 ]
}

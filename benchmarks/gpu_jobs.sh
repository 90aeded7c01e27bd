# Background jobs of the benchmarks/*_gpu.sh scripts (sourced from the repository root, not run): one detached
# process per table part, each with DIR/NAME.log and DIR/NAME.pid, so that a later device call can wait for them
# and collect what they wrote.

job_start() {  # DIR NAME COMMAND...: run COMMAND detached from this shell, output to DIR/NAME.log
  local dir="$1" name="$2"
  shift 2
  setsid nohup "$@" > "$dir/$name.log" 2>&1 < /dev/null &
  echo $! > "$dir/$name.pid"
}

jobs_wait() {  # DIR LIMIT PATTERN [WIDTH]: wait at most LIMIT seconds for every DIR/*.pid, then print the log lines
  # matching PATTERN (cut to WIDTH characters) and the tail of every log with a Traceback
  local dir="$1" limit="$2" pattern="$3" width="${4:-}" t0=$SECONDS pid_file
  for pid_file in "$dir"/*.pid; do
    while kill -0 "$(cat "$pid_file")" 2>/dev/null; do
      if [ $((SECONDS - t0)) -ge "$limit" ]; then echo "still running after ${limit}s: $pid_file"; break 2; fi
      sleep 5
    done
  done
  if [ -n "$width" ]; then
    grep -h "$pattern" "$dir"/*.log | cut -c1-"$width" || true
  else
    grep -h "$pattern" "$dir"/*.log || true
  fi
  grep -l "Traceback" "$dir"/*.log | while read -r f; do echo "== $f"; tail -5 "$f"; done || true
}

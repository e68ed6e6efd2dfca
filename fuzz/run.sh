#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/, replays the inputs under fuzz/regressions/, then
# fuzzes each target for SECONDS (default 60). Exits non-zero if any target crashes, leaks,
# times out or runs out of memory, after printing the input that did it.
#
#   bash fuzz/run.sh [SECONDS]
#
# Environment (all optional):
#   FUZZ_PARALLEL    targets fuzzed at once (default: 2 on a machine with 2+ cores, else 1;
#                    use 1 on a machine shared with other work)
#   FUZZ_SANITIZER   none (default) or address: the targets are safe Rust, and without ASan
#                    they build in less time and run about twice as many executions
#   FUZZ_TARGETS     space-separated subset of targets (default: all of `cargo fuzz list`)
#   FUZZ_CACHE       where the build and the growing corpora live, outside the repo so that
#                    later runs on the same machine build incrementally and start from what
#                    earlier runs found (default: ~/.cache/xapid-fuzz)
#   FUZZ_ARGS        extra libFuzzer flags for every target
#   FUZZ_DROP_BUILD  1: build from scratch and remove the build (FUZZ_CACHE/target-*) when the
#                    run ends, keeping the corpora; scripts/test.sh sets it so that the Xen
#                    stage after it has the disk (a kept build grows with every run's changed
#                    sources: 10 GB on this machine before the switch)
#
# cargo-fuzz passes nightly-only -Z flags to rustc; the machine has a stable toolchain only, so
# the build runs with RUSTC_BOOTSTRAP=1 (see docs/testing.md, "Fuzzing").
set -euo pipefail

secs="${1:-60}"
case "$secs" in '' | *[!0-9]*) echo "usage: bash fuzz/run.sh [SECONDS]" >&2; exit 2 ;; esac

cd "$(dirname "${BASH_SOURCE[0]}")"
fuzz_dir="$PWD"
CARGO_FUZZ_VERSION=0.13.2
sanitizer="${FUZZ_SANITIZER:-none}"
cores="$(nproc 2>/dev/null || echo 1)"
parallel="${FUZZ_PARALLEL:-$((cores >= 2 ? 2 : 1))}"
cache="${FUZZ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xapid-fuzz}"
target_dir="$cache/target-$sanitizer"
if [ "${FUZZ_DROP_BUILD:-0}" = 1 ]; then
  # A build kept by an earlier run without the switch goes first: it is not reused.
  rm -rf "$target_dir"
  trap 'rm -rf "$target_dir"; echo "fuzz build removed ($target_dir, FUZZ_DROP_BUILD=1)"' EXIT
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_PROGRESS_WHEN=never

say() { printf '\n=== %s\n' "$*"; }

# --- tools ---------------------------------------------------------------------------------
# libfuzzer-sys compiles libFuzzer's C++ sources; Debian's g++ is enough (rustc ships the
# sanitizer runtimes itself, so no clang/llvm is needed).
if ! command -v c++ >/dev/null 2>&1; then
  say "installing g++"
  sudo=(); [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q g++
fi
if [ "$(cargo fuzz --version 2>/dev/null || true)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

# --- build ---------------------------------------------------------------------------------
# Release code with debug assertions and overflow checks (cargo fuzz's default without -O).
targets=(${FUZZ_TARGETS:-$(cargo fuzz list)})
say "cargo fuzz build -s $sanitizer (${targets[*]})"
start=$(date +%s)
cargo fuzz build -s "$sanitizer" --target-dir "$target_dir"
echo "built in $(($(date +%s) - start)) s"
host="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$target_dir/$host/release"

failed=()

# Prints a crash input readably: text as text, and always as hex and base64.
show_input() {
  local f="$1"
  echo "--- crash input: $f ($(wc -c <"$f") bytes)"
  if [ "$(wc -c <"$f")" -le 2048 ]; then
    echo "--- as text:"; cat -v "$f"; echo
    echo "--- as hex:"; od -A d -t x1 -v "$f" | head -64
  else
    echo "--- first 512 bytes as text:"; head -c 512 "$f" | cat -v; echo
  fi
  echo "--- base64 (decode with base64 -d):"; base64 -w 0 "$f" | head -c 2048; echo
}

# --- regressions -----------------------------------------------------------------------------
# Every input that once crashed a target (or took longer than -timeout) is replayed first:
# each must now run cleanly, within 10 s.
for t in "${targets[@]}"; do
  dir="$fuzz_dir/regressions/$t"
  [ -d "$dir" ] || continue
  files=("$dir"/*)
  [ -e "${files[0]}" ] || continue
  say "regressions: $t (${#files[@]} inputs)"
  for f in "${files[@]}"; do
    case "$f" in *.md) continue ;; esac
    if ! "$bin_dir/$t" -rss_limit_mb=4096 -timeout=10 "$f" >"$cache/regression.log" 2>&1; then
      tail -40 "$cache/regression.log"
      show_input "$f"
      failed+=("$t:regression:$(basename "$f")")
    else
      echo "ok $(basename "$f")"
    fi
  done
done

# --- fuzzing ---------------------------------------------------------------------------------
# Each target writes new inputs to its corpus in the cache and reads the seeds checked in
# under corpus/ (never written to). Crashes go to $cache/artifacts/<target>/.
run_one() {
  local t="$1"
  local corpus="$cache/corpus/$t" art="$cache/artifacts/$t" log="$cache/logs/$t.log"
  mkdir -p "$corpus" "$art" "$cache/logs"
  local extra=()
  case "$t" in
    jsonrpc_decode | typed_params) extra=(-dict="$fuzz_dir/dicts/json.dict") ;;
    *) [ -f "$fuzz_dir/dicts/$t.dict" ] && extra=(-dict="$fuzz_dir/dicts/$t.dict") ;;
  esac
  # Query strings are short; at libFuzzer's default 4 KB the byte loops of the URL decoders
  # run under comparison tracing at a tenth of the speed.
  [ "$t" = http_query ] && extra+=(-max_len=1024)
  # shellcheck disable=SC2086
  "$bin_dir/$t" "$corpus" "$fuzz_dir/corpus/$t" "${extra[@]}" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$art/" ${FUZZ_ARGS:-} >"$log" 2>&1
}

summary() {
  local t="$1" log="$cache/logs/$1.log"
  local execs rate cov
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1)"
  printf '%-16s %12s execs %8s exec/s  %s  corpus %s files\n' "$t" "${execs:-?}" "${rate:-?}" \
    "${cov:-}" "$(find "$cache/corpus/$t" -type f | wc -l)"
}

say "fuzzing ${#targets[@]} targets for ${secs} s each, $parallel at a time ($sanitizer sanitizer)"
pending=("${targets[@]}")
while [ ${#pending[@]} -gt 0 ]; do
  batch=("${pending[@]:0:$parallel}")
  pending=("${pending[@]:$parallel}")
  pids=()
  for t in "${batch[@]}"; do
    # A crash input from an earlier run would otherwise be reported again.
    rm -rf "$cache/artifacts/$t"
    run_one "$t" &
    pids+=($!)
  done
  for i in "${!batch[@]}"; do
    t="${batch[$i]}"
    if wait "${pids[$i]}"; then
      summary "$t"
    else
      summary "$t"
      echo "!!! $t failed; the end of its log ($cache/logs/$t.log):"
      grep -v '^#[0-9]' "$cache/logs/$t.log" | tail -40
      for f in "$cache/artifacts/$t"/*; do
        [ -e "$f" ] && show_input "$f"
      done
      echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run -s $sanitizer $t <input>   (in fuzz/)"
      failed+=("$t")
    fi
  done
done

if [ ${#failed[@]} -gt 0 ]; then
  say "FAILED: ${failed[*]}"
  exit 1
fi
say "fuzzing: ${#targets[@]} targets, no crash"

#!/usr/bin/env bash
# dm-verity hash tree: `sdk-tools verity format` vs `veritysetup format` on
# the same 1 GiB file in the page cache, same salt and UUID, in one
# hyperfine run; then what two cores can hash according to
# `openssl speed -multi 2 -evp sha256 -bytes 4096`, and our share of it.
#
#   bench/verity.sh                 # uses target/release/sdk-tools
#   SDK_TOOLS=/path/to/sdk-tools RUNS=10 bench/verity.sh
#
# Targets: >= 2.5x faster than veritysetup, >= 85% of openssl's rate.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${SDK_TOOLS:-target/release/sdk-tools}
runs=${RUNS:-5}
size_mib=${SIZE_MIB:-1024}
[ -x "$bin" ] || { echo "no $bin; run: cargo build --release -p sdk-tools" >&2; exit 2; }
for tool in hyperfine veritysetup openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing; run .ci/install-deps.sh" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/verity-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
data=$work/data.img
# Incompressible data, generated fast (openssl's AES-CTR stream).
head -c $((size_mib << 20)) \
  < <(openssl enc -aes-128-ctr -pass pass:sdk-run -nosalt -pbkdf2 </dev/zero 2>/dev/null) >"$data"
sync "$data" # no writeback of the fresh file during the runs

salt=5a17ab1e0123456789abcdef0123456789abcdef0123456789abcdef00c0ffee
uuid=1b4e28ba-2fa1-11d2-883f-0016d3cca427
# Each run starts with the data in the page cache (--prepare reads it).
hyperfine --style basic --warmup 1 --runs "$runs" --export-csv "$work/times.csv" \
  --prepare "cat $data >/dev/null" \
  -n sdk-tools "$bin verity format --salt $salt --uuid $uuid $data $work/ours.hash" \
  -n veritysetup "veritysetup format --salt $salt --uuid $uuid $data $work/theirs.hash"
cmp "$work/ours.hash" "$work/theirs.hash" && echo "hash files: byte-identical"

# CSV columns: command,mean,stddev,median,user,system,min,max
median() { awk -F, -v n="$1" '$1 == n { print $4 }' "$work/times.csv"; }
cpu() { awk -F, -v n="$1" '$1 == n { print $5 + $6 }' "$work/times.csv"; }
ours=$(median sdk-tools)
theirs=$(median veritysetup)
ours_cpu=$(cpu sdk-tools)
theirs_cpu=$(cpu veritysetup)

# openssl's summary line: "sha256  <...> <rate for 4096-byte blocks>k"
# in thousands of bytes per second, all processes together.
rate_k=$(openssl speed -multi 2 -seconds 3 -evp sha256 -bytes 4096 2>/dev/null \
  | awk '/^(evp|sha256)/ && $NF ~ /k$/ { v = $NF } END { sub(/k$/, "", v); print v }')

awk -v ours="$ours" -v theirs="$theirs" -v oc="$ours_cpu" -v tc="$theirs_cpu" \
  -v k="$rate_k" -v mib="$size_mib" 'BEGIN {
  bytes = mib * 1048576
  ours_rate = bytes / ours
  printf "sdk-tools verity format:   median %.3f s  (%.0f MB/s)\n", ours, ours_rate / 1e6
  printf "veritysetup format:        median %.3f s  (%.0f MB/s)\n", theirs, bytes / theirs / 1e6
  printf "speedup:                   %.2fx (target >= 2.5x)\n", theirs / ours
  printf "CPU time (user+sys, mean): %.3f s vs %.3f s\n", oc, tc
  printf "openssl sha256, 2 procs:   %.0f MB/s\n", k * 1000 / 1e6
  printf "share of openssl rate:     %.0f%% (target >= 85%%)\n", 100 * ours_rate / (k * 1000)
}'

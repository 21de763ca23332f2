#!/usr/bin/env bash
# Installing an update into a USR slot: what `sdk-update apply` does to
# the slot (signature and payload sha256 checked before writing, the
# payload written and synced, read back through its hash tree against the
# signed root hash), run on the host with a file standing for the slot,
# against `dd conv=fsync` of the same bytes + `veritysetup verify`, in one
# hyperfine run. The payload: SIZE_MIB of incompressible data with its
# hash tree appended (veritysetup format), in the page cache for each run.
#
#   bench/apply.sh                   # 1 GiB, builds the driver first
#   SIZE_MIB=256 RUNS=3 bench/apply.sh
#
# Target: <= 1.2x dd + veritysetup verify.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-5}
size_mib=${SIZE_MIB:-1024}
for tool in hyperfine veritysetup openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is missing; run .ci/install-deps.sh" >&2; exit 2; }
done
cargo build --release --locked -q -p sdk-tools --example apply_bench
driver=target/release/examples/apply_bench

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/apply-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
payload=$work/bench_update.bin
head -c $((size_mib << 20)) \
  < <(openssl enc -aes-128-ctr -pass pass:sdk-run -nosalt -pbkdf2 </dev/zero 2>/dev/null) >"$payload"
offset=$((size_mib << 20))
salt=5a17ab1e0123456789abcdef0123456789abcdef0123456789abcdef00c0ffee
root=$(veritysetup format --salt "$salt" --hash-offset "$offset" "$payload" "$payload" |
  awk '/^Root hash:/ { print $3 }')
meta=$("$driver" sign "$payload" "$root" "$salt" "$offset" "$work")
size=$(stat -c %s "$payload")
# The slots: the payload's size plus the 64 KiB record area.
for t in ours theirs; do truncate -s $((size + 65536)) "$work/slot-$t"; done
sync

load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "payload: $size_mib MiB + hash tree ($size bytes); load before: $(load); $(nproc) cores"
hyperfine --style basic --warmup 1 --runs "$runs" --export-csv "$work/times.csv" \
  --prepare "cat $payload >/dev/null" \
  -n sdk-update "$driver apply $meta $work/keys $work/slot-ours" \
  -n "dd+veritysetup" "dd if=$payload of=$work/slot-theirs bs=4M conv=fsync,notrunc status=none && veritysetup verify --hash-offset $offset $work/slot-theirs $work/slot-theirs $root"
cmp -n "$size" "$work/slot-ours" "$work/slot-theirs" && echo "slots: the same bytes"
echo "load after: $(load)"

median() { awk -F, -v n="$1" '$1 == n { print $4 }' "$work/times.csv"; }
awk -v ours="$(median sdk-update)" -v theirs="$(median dd+veritysetup)" 'BEGIN {
  printf "sdk-update apply (slot steps): median %.3f s\n", ours
  printf "dd + veritysetup verify:       median %.3f s\n", theirs
  printf "ratio:                         %.2fx (target <= 1.2x)\n", ours / theirs
}'

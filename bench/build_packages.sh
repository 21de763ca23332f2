#!/usr/bin/env bash
# build_packages on a generated tree of 100 small C recipes (10 chains of
# 10, each package linking against the one before it, plus a meta-package):
# the no-op run (target < 0.5 s) and a full build with -j1 vs -j2 (hyperfine
# medians). Side by side, the same tree driven by GNU make (one stamp per
# package, same build scripts) as the reference for the no-op check.
#
#   bench/build_packages.sh [SDK_TOOLS_BIN_DIR]
#
# Needs: gcc, make, hyperfine, user namespaces (build scripts run confined).
set -euo pipefail
bin=${1:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
tools="$bin/sdk-tools"
work=${BENCH_DIR:-/var/tmp/sdk-tools-bench-packages-$(id -u)}
rm -rf "$work"
mkdir -p "$work/repo/packages" "$work/make"
cd "$work"
echo 'sdk-version = "1"
os-version = "1"' > repo/sdk-version.toml

n=100 chains=10
meta_deps=""
make_all=""
for i in $(seq 0 $((n - 1))); do
  d="repo/packages/bench/p$i"
  mkdir -p "$d"
  prev=$((i - chains))
  deps=""
  link=""
  if [ $prev -ge 0 ]; then
    deps="depends = [\"bench/p$prev\"]
build-depends = [\"bench/p$prev\"]"
    link="-lp$prev"
  fi
  cat > "$d/package.toml" <<TOML
version = "1.0"
kind = "build"
$deps
TOML
  cat > "$d/build.sh" <<SH
# a small shared library: one C file, compiled and linked
printf 'int p${i}_value(void) { return $i; }\n' > p$i.c
\$CC \$CFLAGS -fPIC -shared -o libp$i.so p$i.c $link
install -Dm0755 libp$i.so "\$DESTDIR\$PREFIX/lib/libp$i.so"
SH
  meta_deps="$meta_deps\"bench/p$i\", "
  # The make reference: same script, DESTDIR and CC set by make.
  make_dep=""
  [ $prev -ge 0 ] && make_dep="stamps/p$prev"
  make_all="$make_all stamps/p$i"
  printf 'stamps/p%s: %s %s\n\t@rm -rf work/p%s && mkdir -p work stamps && cp -r %s work/p%s\n\tcd work/p%s && DESTDIR=$(CURDIR)/root PREFIX=/usr CC="cc -L$(CURDIR)/root/usr/lib" CFLAGS=-O2 sh -e build.sh\n\t@touch $@\n' \
    "$i" "$PWD/$d/build.sh" "$make_dep" "$i" "$PWD/$d" "$i" "$i" >> make/rules.mk
done
mkdir -p repo/packages/meta/all
printf 'version = "1"\nkind = "meta"\ndepends = [%s]\n' "${meta_deps%, }" > repo/packages/meta/all/package.toml
printf 'all:%s\ninclude rules.mk\n' "$make_all" > make/Makefile

export SDK_BUILD_ROOT="$work/build"
bp() { "$tools" build_packages --board amd64-usr "$@" meta/all; }

echo "== full build of 101 packages: -j1 vs -j2"
hyperfine --runs 3 --export-json full.json \
  --prepare "rm -rf '$work/build'" \
  -n "build_packages -j1" "cd repo && $tools build_packages --board amd64-usr -j1 meta/all" \
  -n "build_packages -j2" "cd repo && $tools build_packages --board amd64-usr -j2 meta/all"

echo "== no-op: build_packages with nothing changed vs make on the same tree"
(cd repo && bp -j2 >/dev/null)
make -C make -s -j2 >/dev/null
hyperfine --warmup 3 --runs 30 --export-json noop.json \
  -n "build_packages (no-op)" "cd repo && $tools build_packages --board amd64-usr meta/all" \
  -n "make (no-op)" "make -C make -s"

medians() {
  python3 -c 'import json,sys
for r in json.load(open(sys.argv[1]))["results"]:
    print("  %s: median %.3f s" % (r["command"], r["median"]))' "$1"
}
echo "== medians"
medians full.json
medians noop.json

#!/usr/bin/env bash
# Install sdk-run and sdk-tools side by side (sdk-run finds the tools next
# to itself and puts them on PATH inside sandboxes), stripped, with man
# pages and bash/zsh/fish completions (sdk-tools' multi-call names too).
#
#   make install                          # PREFIX=/usr/local
#   make install PREFIX=~/.local          # no root needed
#   make install DESTDIR=/tmp/stage PREFIX=/usr   # for packaging
#
# Uses target/release (built first when cargo is there); BIN_DIR=DIR takes
# the binaries from elsewhere (e.g. an unpacked release tarball).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${PREFIX-/usr/local}
destdir=${DESTDIR:-}
bin_dir=${BIN_DIR:-target/release}

if [ -z "${BIN_DIR:-}" ] && command -v cargo >/dev/null; then
  cargo build --release --locked -p sdk-run -p sdk-tools
  # The static launcher; sdk-tools for arm64 boards' images (init,
  # update agent) when the cross compiler is there (.ci/install-deps.sh
  # installs it).
  CROSS_ARCHES=$(command -v aarch64-linux-gnu-gcc >/dev/null && echo aarch64 || true) ./.ci/cross.sh release
fi
for b in sdk-run sdk-tools; do
  if [ ! -x "$bin_dir/$b" ]; then
    echo "install: $bin_dir/$b is missing; build it with \`cargo build --release\` (or set BIN_DIR)" >&2
    exit 2
  fi
done

root=$destdir$prefix
bin=$root/bin
man=$root/share/man/man1
bash_c=$root/share/bash-completion/completions
zsh_c=$root/share/zsh/site-functions
fish_c=$root/share/fish/vendor_completions.d
mkdir -p "$bin" "$man" "$bash_c" "$zsh_c" "$fish_c"

# Into a temporary name first, so a running sdk-run is never overwritten
# in place (its text would change under it).
# The static launcher (.ci/cross.sh) unless cargo linked sdk-run since.
src_sdk_run=$bin_dir/sdk-run
if [ -x "$bin_dir/sdk-run-static" ] && ! [ "$src_sdk_run" -nt "$bin_dir/sdk-run-static" ]; then
  src_sdk_run=$bin_dir/sdk-run-static
fi
for b in sdk-run sdk-tools; do
  src=$bin_dir/$b
  [ "$b" = sdk-run ] && src=$src_sdk_run
  install -m 0755 "$src" "$bin/.$b.new"
  strip "$bin/.$b.new"
  mv -f "$bin/.$b.new" "$bin/$b"
done
# Builds of sdk-tools for other architectures: the init of those boards'
# images (found next to sdk-tools, bound beside it into sandboxes).
for f in "$bin_dir"/sdk-tools-*; do
  [ -f "$f" ] || continue
  n=$(basename "$f")
  install -m 0755 "$f" "$bin/.$n.new"
  gnu=${n#sdk-tools-}-linux-gnu
  if command -v "$gnu-strip" >/dev/null; then "$gnu-strip" "$bin/.$n.new"; fi
  mv -f "$bin/.$n.new" "$bin/$n"
done

"$bin/sdk-run" man --dir "$man" >/dev/null
"$bin/sdk-tools" man --dir "$man" >/dev/null
gzip -9nf "$man"/sdk-run*.1 "$man"/sdk-tools*.1
for n in $("$bin/sdk-tools" list-tools); do gzip -9nf "$man/$n.1"; done

"$bin/sdk-run" completions bash >"$bash_c/sdk-run"
"$bin/sdk-run" completions zsh >"$zsh_c/_sdk-run"
"$bin/sdk-run" completions fish >"$fish_c/sdk-run.fish"
for n in "" $("$bin/sdk-tools" list-tools); do
  name=${n:-sdk-tools}
  "$bin/sdk-tools" completions bash $n >"$bash_c/$name"
  "$bin/sdk-tools" completions zsh $n >"$zsh_c/_$name"
  "$bin/sdk-tools" completions fish $n >"$fish_c/$name.fish"
done

echo "installed sdk-run and sdk-tools in $bin (man pages, completions under $root/share)"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on PATH; add it, e.g. export PATH=\"$prefix/bin:\$PATH\"" ;;
esac

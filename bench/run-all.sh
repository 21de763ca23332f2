#!/usr/bin/env bash
# Runs every benchmark in this folder, one after the other (they compare
# sdk-run's tools side by side with their peers in the same run). Each
# script prints its medians and ratios; the README's Performance section
# quotes them.
set -euo pipefail
cd "$(dirname "$0")"
status=0
for script in ./*.sh; do
  [ "$script" = ./run-all.sh ] && continue
  printf '\n### %s\n' "$script"
  "$script" || { echo "$script failed"; status=1; }
done
exit $status

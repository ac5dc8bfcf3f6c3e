#!/usr/bin/env bash
# Mirror the top-level crds/ (generated from elastra.api by `elastra crds --out crds`) into the chart's
# crds/ folder. The chart must ship exactly those files: tests/unit/test_chart_crds.py checks it.
set -euo pipefail
chart_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source_dir="${chart_dir}/../../crds"
target_dir="${chart_dir}/crds"
mkdir -p "${target_dir}"
find "${target_dir}" -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' -o -name '*.json' \) -delete
shopt -s nullglob
copied=0
for file in "${source_dir}"/*.yaml "${source_dir}"/*.yml "${source_dir}"/*.json; do
  cp "${file}" "${target_dir}/"
  copied=$((copied + 1))
done
echo "sync-crds: ${copied} file(s) copied from ${source_dir} to ${target_dir}"

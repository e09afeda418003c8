#!/usr/bin/env bash
# The shared models and data on the GPU machine, where ../shared does not travel.
#
#   bash scripts/device/carried_shared.sh pack [PATH ...]     (on this machine)
#     copies ../shared/models/stories260K into local/shared/models (git-ignored), and each PATH named
#     (relative to ../shared: models/sharq-lm-30m, data/wikitext2) as local/shared/PATH.tar.gz.
#     sharq-lm-30m (56 MiB of safetensors) fits the carried tree's 64 MiB only compressed (about 45
#     MiB), and only with nothing else carried: `carry: ["local/shared"]` (no local/debs, so no
#     `sharq serve` build in that call).
#   source scripts/device/carried_shared.sh unpack             (the device scripts)
#     copies local/shared and local/ship into ../shared and unpacks what came compressed.
case "${1:-}" in
  pack)
    shift
    src=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/../shared
    [[ -d $src/models/stories260K ]] || { echo "carried_shared: $src/models/stories260K is missing"; exit 1; }
    mkdir -p local/shared/models
    rm -rf local/shared/models/stories260K && cp -r "$src/models/stories260K" local/shared/models/ && chmod -R u+w local/shared
    for p in "$@"; do
      [[ -d $src/$p && $p == */* ]] || { echo "carried_shared: no folder $p in $src (models/NAME or data/NAME)"; exit 1; }
      mkdir -p "local/shared/$(dirname "$p")"
      tar -C "$src/$(dirname "$p")" -czf "local/shared/$p.tar.gz" "$(basename "$p")" || exit 1
    done
    du -sh local/shared
    ;;
  unpack)
    for d in local/shared local/ship; do
      if [[ -d $d && ! -d ../shared/models ]]; then mkdir -p ../shared && cp -r "$d/." ../shared/; fi
    done
    for t in ../shared/*/*.tar.gz; do
      [[ -e $t ]] || continue
      [[ -d ${t%.tar.gz} ]] || tar -C "$(dirname "$t")" -xzf "$t"
      rm -f "$t"
    done
    ;;
  *)
    echo "usage: bash scripts/device/carried_shared.sh pack [PATH ...] | source scripts/device/carried_shared.sh unpack"
    return 1 2>/dev/null || exit 1
    ;;
esac

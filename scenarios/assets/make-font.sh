#!/usr/bin/env bash
# Rebuilds chart-font.otf, the subset of Noto Sans CJK SC Regular that the PNG charts render
# with. Needs `apt-get install fonts-noto-cjk` (Debian 12: 1:20220127+repack1-1, font 2.004)
# and `pip install fonttools`. Run from anywhere; rerun after adding a label to
# src/render/svg.rs (the test `render::png::tests::bundled_font_covers_every_label` says when).
set -euo pipefail
cd "$(dirname "$0")"
# The character list: printable ASCII (digits, letters, punctuation, units) plus every
# non-ASCII character on a non-comment line of src/render/svg.rs (its Chinese labels).
python3 - ../src/render/svg.rs > chart-chars.txt <<'PY'
import sys
chars = {chr(c) for c in range(0x20, 0x7F)}
for line in open(sys.argv[1], encoding="utf-8"):
    if not line.lstrip().startswith("//"):
        chars.update(ch for ch in line if ord(ch) > 0x7F)
print("".join(sorted(chars)))
PY
pyftsubset /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc --font-number=2 \
  --text-file=chart-chars.txt --name-IDs='*' --name-languages='*' \
  --no-hinting --desubroutinize --output-file=chart-font.otf

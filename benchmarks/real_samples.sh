#!/usr/bin/env bash
# Recorded instrument samples that Debian ships, as an irmastest folder (audio + one-code .txt):
# never rendered by this project and from none of the training soundfonts.
#   benchmarks/real_samples.sh data/real-samples   # then: lumen-test --dataset-paths irmastest:data/real-samples
# Sources (downloaded with apt-get download, unpacked with dpkg -x; nothing is installed):
#   lmms-common      /usr/share/lmms/samples/instruments/*.ogg  (LMMS's bundled instrument samples)
#   sonic-pi-samples /usr/share/sonic-pi/samples/*.flac         (Sonic Pi's samples, from freesound.org)
# 23 files: cel 1, org 5, flu 1, pia 3, gac 1, gel 7, tru 1, vio 3, voi 1 (no cla, no sax). Most are a
# single note or a short phrase (0.3-12 s); labels are the instrument the file name gives.
set -euo pipefail
OUT=${1:?usage: $0 OUT_DIR}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && apt-get download -qq lmms-common sonic-pi-samples)
for deb in "$WORK"/*.deb; do dpkg -x "$deb" "$WORK/x"; done
LMMS="$WORK/x/usr/share/lmms/samples/instruments"
SONIC=$(dirname "$(find "$WORK/x" -name ambi_piano.flac | head -n 1)")
mkdir -p "$OUT"
add() { # source-file code prefix
    local name
    name="$3_$(basename "$1")"
    cp "$1" "$OUT/$name"
    echo "$2" >"$OUT/${name%.*}.txt"
}
add "$LMMS/cello01.ogg" cel lmms
for i in 1 2 3 4; do add "$LMMS/church_organ0$i.ogg" org lmms; done
add "$LMMS/e_organ01.ogg" org lmms
add "$LMMS/flute01.ogg" flu lmms
add "$LMMS/piano01.ogg" pia lmms
add "$LMMS/piano02.ogg" pia lmms
add "$LMMS/steel_guitar01.ogg" gac lmms
for d in heavy medium slight; do add "$LMMS/steel_guitar_${d}_distorted01.ogg" gel lmms; done
add "$LMMS/trumpet01.ogg" tru lmms
for v in double_stop fingered pizzicato; do add "$LMMS/violin_${v}01.ogg" vio lmms; done
add "$SONIC/ambi_piano.flac" pia sonicpi
add "$SONIC/ambi_choir.flac" voi sonicpi
for g in e_fifths e_slide em9 harmonics; do add "$SONIC/guit_$g.flac" gel sonicpi; done
echo "wrote $(find "$OUT" -name '*.txt' | wc -l) labelled files to $OUT (irmastest:$OUT)"

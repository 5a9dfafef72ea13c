#!/usr/bin/env bash
# Put the original MNIST idx files where torchvision's MNIST(root) reads them: <data_dir>/MNIST/raw/.
#   bash scripts/unpack_mnist.sh [SRC] [DATA_DIR]
# SRC holds the four *-idx?-ubyte.gz files and their SHA256SUMS (default ../shared/data/mnist);
# DATA_DIR is paths.data_dir (default $SALN_DATA_DIR, else data/). Checks the .gz files against
# SHA256SUMS and the unpacked files against torchvision's MD5 list, so a damaged copy never loads.
set -euo pipefail
src=${1:-../shared/data/mnist}
data_dir=${2:-${SALN_DATA_DIR:-data}}
raw="$data_dir/MNIST/raw"
files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
md5s=(6bbc9ace898e44ae57da46a324031adb a25bea736e30d166cdddb491f175f624
      2646ac647ad5339dbf082846283269ea 27ae3e4e09519cfbb04c329615203637)

if [ ! -f "$src/SHA256SUMS" ]; then
  echo "error: no MNIST files in $src (expected the four *.gz files and SHA256SUMS)" >&2
  exit 2
fi
(cd "$src" && sha256sum --quiet -c SHA256SUMS) || { echo "error: $src/SHA256SUMS does not match" >&2; exit 2; }
mkdir -p "$raw"
for i in "${!files[@]}"; do
  name=${files[$i]}
  if [ ! -f "$raw/$name" ] || [ "$(md5sum < "$raw/$name" | cut -d' ' -f1)" != "${md5s[$i]}" ]; then
    gunzip -c "$src/$name.gz" > "$raw/$name.tmp.$$" && mv "$raw/$name.tmp.$$" "$raw/$name"
  fi
  [ "$(md5sum < "$raw/$name" | cut -d' ' -f1)" = "${md5s[$i]}" ] || { echo "error: $raw/$name has the wrong MD5" >&2; exit 2; }
done
echo "MNIST ready in $raw (torchvision's MNIST(root=$data_dir) reads it; paths.data_dir=$data_dir)"

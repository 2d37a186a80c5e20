"""Extract files from a compiled Qt resource bundle (``.rcc``), standard library only.

    python3 benchmarks/qt_resources.py BUNDLE.rcc OUT_DIR [NAME ...]

GCompris ships its activities' media inside such bundles; ``real_samples.sh`` takes recorded instrument
sounds out of one. With NAME arguments only the files with those base names are written (an error if
one is missing). The format (Qt's ``rcc`` binary output, versions 1-3): a ``qres`` header with the
offsets of a tree of fixed-size entries, a names table (UTF-16BE) and a data area of length-prefixed
blobs, zlib-compressed when the entry's flag says so (zstd-compressed bundles are refused). Hostile bundles
get a ResourceError, not a hang or a memory blow-up: each entry is visited once, a directory cannot
list more children than fit in the file, and an entry inflates to its declared size, at most 256 MB.
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

COMPRESSED, DIRECTORY, COMPRESSED_ZSTD = 0x1, 0x2, 0x4
MAX_ENTRY_BYTES = 256 * 1024 * 1024  # one inflated file; GCompris's largest is a few MB


class ResourceError(ValueError):
    """A bundle this reader cannot take apart; the message says why."""


def _read(blob: bytes, fmt: str, offset: int) -> tuple[int, ...]:
    end = offset + struct.calcsize(fmt)
    if offset < 0 or end > len(blob):
        raise ResourceError(f"truncated bundle: needs bytes {offset}..{end}, has {len(blob)}")
    return struct.unpack_from(fmt, blob, offset)


def entries(blob: bytes) -> Iterator[tuple[PurePosixPath, bytes]]:
    """Every file in the bundle as (path inside the bundle, contents)."""
    if blob[:4] != b"qres":
        raise ResourceError("not a Qt resource bundle (no 'qres' magic)")
    version, tree, data, names = _read(blob, ">IIII", 4)
    if version not in (1, 2, 3):
        raise ResourceError(f"unsupported rcc format version {version}")
    entry_size = 14 if version == 1 else 22

    def name_at(offset: int) -> str:
        (length,) = _read(blob, ">H", names + offset)
        start = names + offset + 6  # u16 length, u32 hash
        if start + 2 * length > len(blob):
            raise ResourceError("truncated bundle: a name runs past the end")
        return blob[start : start + 2 * length].decode("utf-16-be")

    n_entries = (len(blob) - tree) // entry_size  # at most this many entries fit in the bundle
    seen: set[int] = set()
    stack: list[tuple[int, PurePosixPath]] = [(0, PurePosixPath("/"))]
    while stack:
        index, parent = stack.pop()
        if index in seen:  # a tree names each entry once; a repeat is a cycle or a fan-out bomb
            raise ResourceError(f"entry {index} is listed twice")
        seen.add(index)
        at = tree + index * entry_size
        name_offset, flags = _read(blob, ">IH", at)
        path = parent if index == 0 else parent / name_at(name_offset)
        if flags & DIRECTORY:
            count, first = _read(blob, ">II", at + 6)
            if first + count > n_entries:
                raise ResourceError(
                    f"truncated bundle or bad tree: {path} lists {count} children from entry {first}, "
                    "which run past the tree"
                )
            stack.extend((first + i, path) for i in reversed(range(count)))
            continue
        (data_offset,) = _read(blob, ">I", at + 10)
        (size,) = _read(blob, ">I", data + data_offset)
        body = blob[data + data_offset + 4 : data + data_offset + 4 + size]
        if len(body) != size:
            raise ResourceError(f"{path}: truncated data")
        if flags & COMPRESSED_ZSTD:
            raise ResourceError(f"{path}: zstd-compressed entries are not supported")
        if flags & COMPRESSED:
            body = _uncompress(path, body)
        yield path, body


def _uncompress(path: PurePosixPath, body: bytes) -> bytes:
    """qCompress format: u32 uncompressed size, then a zlib stream; inflated to that size and no more."""
    (declared,) = _read(body, ">I", 0)
    if declared > MAX_ENTRY_BYTES:
        raise ResourceError(f"{path}: declares {declared} bytes uncompressed, over {MAX_ENTRY_BYTES}")
    inflater = zlib.decompressobj()
    out = inflater.decompress(body[4:], declared)
    if len(out) != declared or inflater.unconsumed_tail or not inflater.eof:
        raise ResourceError(f"{path}: does not inflate to the {declared} bytes it declares")
    return out


def extract(bundle: Path, out_dir: Path, wanted: set[str] | None = None) -> list[Path]:
    """Write the bundle's files (or those whose base name is in ``wanted``) flat into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for path, body in entries(bundle.read_bytes()):
        if wanted is not None and path.name not in wanted:
            continue
        if path.name in ("", ".", ".."):
            raise ResourceError(f"{path}: not a file name")
        target = out_dir / path.name  # flat: a bundle's own paths never leave out_dir
        target.write_bytes(body)
        written.append(target)
    missing = (wanted or set()) - {p.name for p in written}
    if missing:
        raise ResourceError(f"{bundle}: no file named {sorted(missing)}")
    return written


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    try:
        files = extract(Path(argv[0]), Path(argv[1]), set(argv[2:]) or None)
    except (OSError, ResourceError, zlib.error) as exc:
        print(f"qt_resources: {exc}", file=sys.stderr)
        return 1
    print(f"extracted {len(files)} file(s) to {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""benchmarks/qt_resources.py reads Qt rcc bundles (built here byte by byte, format version 3)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import benchmark_scripts
import pytest

qt = benchmark_scripts.load("qt_resources")


def _bundle(
    files: dict[str, tuple[bytes, bool]], version: int = 3, declared: dict[str, int] | None = None
) -> bytes:
    """A bundle with one directory 'res' holding ``files`` (name -> (contents, compress)); ``declared``
    overrides the uncompressed size a compressed entry claims."""
    names = b""
    name_offsets: dict[str, int] = {}
    for name in ["res", *files]:
        name_offsets[name] = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
    data = b""
    data_offsets: dict[str, int] = {}
    for name, (body, compress) in files.items():
        size = (declared or {}).get(name, len(body))
        stored = struct.pack(">I", size) + zlib.compress(body) if compress else body
        data_offsets[name] = len(data)
        data += struct.pack(">I", len(stored)) + stored
    pad = b"\0" * 8 if version > 1 else b""  # last-modified timestamp

    def directory(name_offset: int, count: int, first: int) -> bytes:
        return struct.pack(">IHII", name_offset, qt.DIRECTORY, count, first) + pad

    tree = directory(0, 1, 1) + directory(name_offsets["res"], len(files), 2)
    for name, (_, compress) in files.items():
        flags = qt.COMPRESSED if compress else 0
        tree += struct.pack(">IHHHI", name_offsets[name], flags, 0, 0, data_offsets[name]) + pad
    header_size = 24 if version == 3 else 20
    tree_at = header_size
    data_at = tree_at + len(tree)
    names_at = data_at + len(data)
    header = b"qres" + struct.pack(">IIII", version, tree_at, data_at, names_at)
    if version == 3:
        header += struct.pack(">I", 0)
    return header + tree + data + names


FILES = {"cello.ogg": (b"OggS" + bytes(range(200)), False), "README": (b"GPL\n" * 50, True)}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_reads_plain_and_zlib_entries_with_their_paths(version: int) -> None:
    got = {str(path): body for path, body in qt.entries(_bundle(FILES, version))}
    assert got == {"/res/cello.ogg": FILES["cello.ogg"][0], "/res/README": FILES["README"][0]}


def test_extract_writes_only_the_wanted_files_flat(tmp_path: Path) -> None:
    bundle = tmp_path / "b.rcc"
    bundle.write_bytes(_bundle(FILES))
    written = qt.extract(bundle, tmp_path / "out", {"cello.ogg"})
    assert written == [tmp_path / "out" / "cello.ogg"]
    assert written[0].read_bytes() == FILES["cello.ogg"][0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["cello.ogg"]


def test_a_missing_wanted_file_is_an_error(tmp_path: Path) -> None:
    bundle = tmp_path / "b.rcc"
    bundle.write_bytes(_bundle(FILES))
    with pytest.raises(qt.ResourceError, match="no file named"):
        qt.extract(bundle, tmp_path / "out", {"violin.ogg"})


def test_not_a_bundle_and_truncated_bundles_are_refused() -> None:
    with pytest.raises(qt.ResourceError, match="magic"):
        list(qt.entries(b"RIFF" + bytes(40)))
    whole = _bundle(FILES)
    with pytest.raises(qt.ResourceError, match="truncated"):
        list(qt.entries(whole[:40]))


def test_cli_reports_errors_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.rcc").write_bytes(b"nope")
    assert qt.main([str(tmp_path / "bad.rcc"), str(tmp_path / "out")]) == 1
    assert "qt_resources:" in capsys.readouterr().err


def _root_only(count: int, first: int) -> bytes:
    """A v3 bundle whose root directory lists ``count`` children from entry ``first``."""
    root = struct.pack(">IHII", 0, qt.DIRECTORY, count, first) + b"\0" * 8
    return b"qres" + struct.pack(">IIIII", 3, 24, 24 + len(root), 24 + len(root), 0) + root


def test_a_directory_that_lists_itself_is_refused_not_walked_forever() -> None:
    with pytest.raises(qt.ResourceError, match="listed twice"):
        list(qt.entries(_root_only(1, 0)))


def test_a_directory_cannot_claim_more_children_than_fit_in_the_file() -> None:
    with pytest.raises(qt.ResourceError, match="run past the tree"):
        list(qt.entries(_root_only(1_000_000_000, 1)))


def test_a_compressed_entry_inflates_to_its_declared_size_and_no_further() -> None:
    bomb = {"big.bin": (bytes(1_000_000), True)}
    with pytest.raises(qt.ResourceError, match="does not inflate to the 100 bytes"):
        list(qt.entries(_bundle(bomb, declared={"big.bin": 100})))
    with pytest.raises(qt.ResourceError, match="over"):
        list(qt.entries(_bundle(bomb, declared={"big.bin": qt.MAX_ENTRY_BYTES + 1})))


def test_a_dot_dot_name_is_not_written(tmp_path: Path) -> None:
    bundle = tmp_path / "b.rcc"
    bundle.write_bytes(_bundle({"..": (b"x", False)}))
    with pytest.raises(qt.ResourceError, match="not a file name"):
        qt.extract(bundle, tmp_path / "out")

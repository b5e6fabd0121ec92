"""Human-readable summary of what the data stages produced."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from components.data.manifest import is_text, read_manifest


def prepared_table(folder: Path | str) -> Table:
    """A table of the prepared splits: images (or texts), input shape and samples per class."""
    folder = Path(folder)
    manifest = read_manifest(folder, "preprocess")
    if is_text(manifest):
        shape = f"texts as {manifest['max_length']} token ids, vocabulary {manifest['vocab_size']}"
    else:
        shape = "images " + "x".join(str(d) for d in manifest["image_shape"])
    table = Table(title=f"{manifest['source']} prepared in {folder} ({shape})")
    table.add_column("split")
    table.add_column("file")
    table.add_column("texts" if is_text(manifest) else "images", justify="right")
    table.add_column("per class (min..max)", justify="right")
    for name in ("train", "val", "test"):
        entry = manifest["splits"][name]
        counts = entry["class_counts"]
        table.add_row(name, str(folder / entry["file"]), str(entry["count"]), f"{min(counts)}..{max(counts)}")
    return table

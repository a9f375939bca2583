"""The manifest of shipped checkpoints: `checkpoints/MANIFEST.json`, one row per `.safetensors` file.

A row holds what identifies a file (SHA-256, size) and what a reader would notice first if the file were swapped
(kind, image shape, classes, training steps). A test compares every shipped file with its row, so a replaced,
truncated or retrained-by-accident file cannot land unnoticed; changing a model means changing its row in the
same commit, on purpose (`python -m diffusion manifest --update NAME`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .checkpoint import CheckpointError, read_metadata
from .outputs import atomic_write

MANIFEST_NAME = "MANIFEST.json"


@dataclass(frozen=True)
class ManifestRow:
    sha256: str
    bytes: int
    kind: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    classes: tuple[str, ...]
    training_steps: int | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ManifestRow":
        if not isinstance(data, dict) or set(data) != {f.name for f in fields(cls)}:
            raise ValueError(f"a manifest row needs exactly the fields {[f.name for f in fields(cls)]}")
        return cls(**data | {"image_shape": tuple(data["image_shape"]), "classes": tuple(data["classes"])})


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(path: Path) -> ManifestRow:
    """The row a checkpoint file has now (its bytes hashed, its metadata read; no network is built)."""
    meta = read_metadata(path)
    config = meta["config"]
    return ManifestRow(sha256=file_sha256(path), bytes=path.stat().st_size, kind=meta["kind"],
                       image_shape=(int(config["image_channels"]), int(config["image_size"]), int(config["image_size"])),
                       classes=tuple(config.get("class_names", ())), training_steps=meta["training"].get("steps"))


def read_manifest(folder: Path) -> dict[str, ManifestRow]:
    """{file name: row} from folder/MANIFEST.json; a ValueError naming the problem if it is unreadable."""
    path = Path(folder) / MANIFEST_NAME
    try:
        rows = json.loads(path.read_text())
        return {str(name): ManifestRow.from_dict(row) for name, row in rows.items()}
    except FileNotFoundError:
        raise ValueError(f"{path}: no manifest (write one with `python -m diffusion manifest --update FILE ...`)") from None
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: not a valid manifest ({error})") from None


def manifest_problems(folder: Path) -> list[str]:
    """One sentence per shipped file that differs from its row, lacks a row, or is missing; [] if all agree."""
    folder = Path(folder)
    rows = read_manifest(folder)
    present = {path.name for path in folder.glob("*.safetensors")}
    problems = [f"{name}: listed in {MANIFEST_NAME} but missing from {folder.name}/" for name in sorted(set(rows) - present)]
    problems += [f"{name}: not in {MANIFEST_NAME} (add it on purpose: python -m diffusion manifest --update {name})"
                 for name in sorted(present - set(rows))]
    for name in sorted(present & set(rows)):
        try:
            found = describe(folder / name)
        except CheckpointError as error:
            problems.append(f"{name}: unreadable ({error})")
            continue
        differences = [f"{key} {getattr(found, key)!r:.80} where the manifest says {getattr(rows[name], key)!r:.80}"
                       for key in (f.name for f in fields(ManifestRow)) if getattr(found, key) != getattr(rows[name], key)]
        if differences:
            problems.append(f"{name} differs from its manifest row: " + "; ".join(differences))
    return problems


def update_manifest(folder: Path, names) -> dict[str, ManifestRow]:
    """Rewrite the rows of these files (or drop the row of one that is gone) and write the manifest; the others stay."""
    folder = Path(folder)
    try:
        rows = read_manifest(folder)
    except ValueError:
        if (folder / MANIFEST_NAME).exists():
            raise
        rows = {}
    unknown = [name for name in names if not (folder / name).exists() and name not in rows]
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: neither a file in {folder} nor a row of its {MANIFEST_NAME} "
                         f"(rows: {', '.join(sorted(rows)) or 'none'})")
    for name in names:
        path = folder / name
        if path.exists():
            rows[name] = describe(path)
        else:
            rows.pop(name, None)
    lines = [f"  {json.dumps(name)}: {json.dumps(rows[name].to_dict(), ensure_ascii=False)}" for name in sorted(rows)]
    text = "{\n" + ",\n".join(lines) + "\n}\n"  # one line per file, so a changed model is a one-line diff
    atomic_write(folder / MANIFEST_NAME, lambda tmp: Path(tmp).write_text(text))
    return rows

"""A table of rows by (setting, guidance scale), shared by the guidance and guidance-methods parts."""

from __future__ import annotations


def scale_table(rows: list[dict], header: str, key: str, caption: str) -> list[str]:
    """Markdown lines of a table of rows by (row[key], scale): feature FID, accuracy, diversity."""
    lines = ["", caption, "", f"| {header} | scale | feature FID | accuracy | diversity |", "|---|---|---|---|---|"]
    return lines + [f"| {r[key]} | {r['scale']:g} | {r['fid']:.2f} | {r['accuracy']:.3f} | {r['diversity']:.3f} |"
                    for r in rows]

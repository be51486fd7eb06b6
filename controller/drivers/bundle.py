"""The pilot as one zip application (`python3 pilot.pyz --config FILE`), built byte for byte
the same from the same sources, so that copying it to a host is idempotent and one file."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

PILOT_SRC = Path(__file__).resolve().parents[2] / "pilot"
MAIN = b"import sys\nfrom pilot.__main__ import main\nsys.exit(main())\n"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same sources give the same bytes


def pilot_zipapp(dest: Path) -> Path:
    """Write the pilot package (its .py files only) as a zip application at `dest`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, _EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data)

        add("__main__.py", MAIN)
        for src in sorted(PILOT_SRC.glob("*.py")):
            add(f"pilot/{src.name}", src.read_bytes())
    data = buf.getvalue()
    if not dest.exists() or dest.read_bytes() != data:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    return dest

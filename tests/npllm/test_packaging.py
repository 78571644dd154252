"""The wheel carries what an installed npllm reads at run time (not only a checkout)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_ships_the_migrations_and_the_default_config(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
         "--quiet", "--wheel-dir", str(tmp_path)],
        check=True, capture_output=True, cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("npllm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = sorted(p.name for p in (REPO / "sql").glob("*.sql"))
    assert migrations and all(f"npllm/sql/{m}" in names for m in migrations)
    assert "npllm/config_files/npllm.toml" in names
    # The dashboard's page and files: served from inside the package, nothing from outside.
    static = sorted(p.name for p in (REPO / "services/api/static/dashboard").iterdir())
    assert static and all(f"services/api/static/dashboard/{n}" in names for n in static)
    # Installed from that wheel, npllm finds both inside its package.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import npllm.migrations as m, npllm.config "
        "as c; print(m.SQL_DIR.parent == m.Path(m.__file__).parent, len(list(m.SQL_DIR.glob("
        "'*.sql'))), c.DEFAULT_CONFIG_FILE.is_file(), m.__file__.startswith(sys.argv[1]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(site)], check=True, capture_output=True, text=True,
        cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    assert out == ["True", str(len(migrations)), "True", "True"]

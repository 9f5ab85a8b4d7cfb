"""An embedded store's catalog is checked and made in this process, as ``tiled catalog init`` makes it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from bluesky_tomogan.errors import OutputPathError
from bluesky_tomogan.storage import close_local_tiled, local_tiled
from bluesky_tomogan.tiled_catalog import prepare_catalog


def catalog_contents(path: Path) -> list[object]:
    """Every table's definition and rows, their times left out (two catalogs are made at different times)."""
    with closing(sqlite3.connect(path)) as con:
        schema = sorted(con.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL"))
        rows = {name: sorted(tuple(v for v in row if not (isinstance(v, str) and v.startswith("20")))
                             for row in con.execute(f'SELECT * FROM "{name}"'))
                for kind, name, _ in schema if kind == "table" and name != "sqlite_sequence"}
    return [schema, rows]


def test_a_new_store_opens_without_a_subprocess_and_its_catalog_is_tiled_inits(tmp_path, monkeypatch):
    started: list[list[str]] = []
    run = subprocess.run

    def recorded(args, *a, **k):
        started.append(list(map(str, args)))
        return run(args, *a, **k)

    monkeypatch.setattr(subprocess, "run", recorded)
    client = local_tiled(tmp_path / "store")
    try:
        client.create_container("kept")
    finally:
        close_local_tiled(client)
    assert started == []  # Tiled alone starts `python -m tiled catalog init --if-not-exists` at every start

    monkeypatch.setattr(subprocess, "run", run)
    made_by_tiled = tmp_path / "tiled-init.db"
    subprocess.run([sys.executable, "-m", "tiled", "catalog", "init", str(made_by_tiled)], check=True,
                   capture_output=True)
    ours = tmp_path / "ours.db"
    assert prepare_catalog(str(ours)) is True
    assert catalog_contents(ours) == catalog_contents(made_by_tiled)
    # and Tiled's own command finds it made (it refuses to initialise a catalog twice)
    again = subprocess.run([sys.executable, "-m", "tiled", "catalog", "init", str(ours)], capture_output=True,
                           text=True)
    assert again.returncode != 0 and "is already initialized" in again.stderr

    client = local_tiled(tmp_path / "store")  # reopened: what it held is there
    try:
        assert list(client) == ["kept"]
    finally:
        close_local_tiled(client)


def test_a_catalog_of_another_tiled_version_is_a_clear_error_naming_the_upgrade(tmp_path):
    from tiled.catalog.core import ALL_REVISIONS, REQUIRED_REVISION

    catalog = tmp_path / "store" / "tiled" / "catalog.db"
    catalog.parent.mkdir(parents=True)
    assert prepare_catalog(str(catalog))
    older = next(r for r in ALL_REVISIONS if r != REQUIRED_REVISION)
    with closing(sqlite3.connect(catalog)) as con, con:
        con.execute("UPDATE alembic_version SET version_num = ?", (older,))
    with pytest.raises(OutputPathError, match=rf"revision {older}.*tiled catalog upgrade-database"):
        local_tiled(tmp_path / "store")


def test_a_damaged_catalog_is_a_clear_error_and_is_left_as_it_was(tmp_path):
    catalog = tmp_path / "store" / "tiled" / "catalog.db"
    catalog.parent.mkdir(parents=True)
    catalog.write_bytes(b"not a database" * 100)
    with pytest.raises(OutputPathError, match=f"cannot open the Tiled catalog {catalog}: file is not a database"):
        local_tiled(tmp_path / "store")
    assert catalog.read_bytes() == b"not a database" * 100


def test_a_new_catalog_that_cannot_be_made_here_is_removed_and_left_to_tiled(tmp_path, monkeypatch):
    """Tables without their revision stamp would fail Tiled's own initialisation too: the half-made file goes."""
    import tiled.alembic_utils

    def broken(*args):
        raise RuntimeError("no stamp")

    monkeypatch.setattr(tiled.alembic_utils, "stamp_head", broken)
    catalog = tmp_path / "catalog.db"
    assert prepare_catalog(str(catalog)) is False
    assert not catalog.exists()


def test_a_catalog_locked_by_another_process_is_no_damaged_file_and_is_kept(tmp_path):
    catalog = tmp_path / "catalog.db"
    assert prepare_catalog(str(catalog))
    with closing(sqlite3.connect(catalog, isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")  # another process writing it, for longer than SQLite waits
        assert prepare_catalog(str(catalog)) is False  # left to Tiled, not called damaged
        other.execute("ROLLBACK")
    assert prepare_catalog(str(catalog)) is True  # kept as it was

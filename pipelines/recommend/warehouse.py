"""`<root>/warehouse.duckdb`: DuckDB views over every published run's tables."""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipelines.store import MANIFEST, atomic_path, latest_run

WAREHOUSE = "warehouse.duckdb"


def refresh_views(root: Path) -> Path:
    """(Re)write the root warehouse: a view per table over all runs, and `latest_<table>`.

    `duckdb <root>/warehouse.duckdb "select * from recommendations"` then reads every
    published run (tell them apart by the `run_id` column). Views name absolute paths, so the
    file works from any working directory (rerun any night to refresh it after a move).
    """
    root = Path(root).resolve()
    runs = sorted(p for p in (root / "runs").glob("*/") if (p / MANIFEST).is_file()
                  and not p.name.startswith("."))
    names = sorted({f.stem for run in runs for f in run.glob("*.parquet")})
    latest = latest_run(root)
    target = root / WAREHOUSE
    with atomic_path(target) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            for name in names:
                glob = str(root / "runs" / "*" / f"{name}.parquet").replace("'", "''")
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{glob}', "
                            "union_by_name = true)")
                if latest is not None and (latest / f"{name}.parquet").is_file():
                    one = str(latest / f"{name}.parquet").replace("'", "''")
                    con.execute(f"CREATE VIEW latest_{name} AS SELECT * FROM "
                                f"read_parquet('{one}')")
            con.execute("CHECKPOINT")
        finally:
            con.close()
    return target

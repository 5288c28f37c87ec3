"""A per-run report a person can look at: `report.html` (figures inline) and `report.md`."""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from features import topn
from features.columns import AUTHOR_ID, ITEM_ID, SCORE, USER_ID
from features.vocab import IdVocab
from pipelines.recommend.tables import table_path
from pipelines.store import write_text_atomic


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def top_by_score(scored: pl.DataFrame, n: int, *, in_item_order: bool = False
                 ) -> pl.DataFrame:
    """(user_id, item_id) of each user's n best-scored items, ties to the lower item id.

    Ids order as the catalogue's vocabulary does (numbers numerically, else text).
    `in_item_order` says the rows come as the score stage writes them (each user's rows
    together, its items in that order): the row number is then the tie order, with no lookup.
    Compiled per-user top-n, not a sort of the whole table; the diversify stage runs it per
    user shard, so no step ranks the whole scored table.
    """
    if not scored.height:
        return pl.DataFrame(schema={USER_ID: pl.String, ITEM_ID: pl.String})
    user = scored[USER_ID]
    if in_item_order:
        users = (user != user.shift(1)).fill_null(True).cum_sum().to_numpy().astype(np.int64)
        tie = np.arange(scored.height, dtype=np.int64)
    else:
        items = scored[ITEM_ID].to_arrow()
        tie = IdVocab.from_ids(items).index(items).astype(np.int64)
        users = user.cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    _, rows, _, _ = topn.top_n(users, np.arange(scored.height), scored[SCORE].to_numpy(),
                               tie, n)
    return scored.select(USER_ID, ITEM_ID)[rows]


def author_concentration(lists: pl.DataFrame, authors: pl.DataFrame) -> dict[int, int]:
    """Lists by the most items one author has in them: {items: lists}."""
    per_list = (lists.join(authors, on=ITEM_ID, how="left")
                .group_by([USER_ID, AUTHOR_ID]).len()
                .group_by(USER_ID).agg(pl.col("len").max())["len"])
    counts = per_list.value_counts()
    return {int(k): int(v) for k, v in zip(counts[:, 0], counts[:, 1], strict=True)}


def add_counts(parts: list[dict[int, int]]) -> dict[int, int]:
    """Sum of per-shard {items: lists} histograms."""
    total: Counter[int] = Counter()
    for part in parts:  # JSON keys come back as strings
        total.update({int(k): int(v) for k, v in part.items()})
    return dict(sorted(total.items()))


CONCENTRATION = "concentration.json"
"""The diversify stage's {items by one author: lists} before diversity (from the top n by
score) and published, for the report's figure."""


def figures(folder: Path, n: int) -> dict[str, str]:
    """Base64 PNGs: list score distribution and items-per-author before/after diversity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = pl.read_parquet(table_path(folder, "recommendations"))
    authors = pl.read_parquet(table_path(folder, "items"), columns=[ITEM_ID, AUTHOR_ID])
    before = {int(k): v for k, v in json.loads((folder / CONCENTRATION).read_text())[
        "before"].items()}
    out: dict[str, str] = {}
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(recs[SCORE].to_numpy(), bins=50, color="#4c72b0")
    ax.set_xlabel("score of a recommended item")
    ax.set_ylabel("items")
    ax.set_title("List scores")
    out["scores"] = _png(fig)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3))
    after = author_concentration(recs, authors)
    ks = np.arange(1, max([1, *before, *after]) + 1)
    ax.bar(ks - 0.2, [before.get(int(k), 0) for k in ks], width=0.4, label="before diversity")
    ax.bar(ks + 0.2, [after.get(int(k), 0) for k in ks], width=0.4, label="published")
    ax.set_xticks(ks)
    ax.set_xlabel("most items by one author in a list")
    ax.set_ylabel("lists")
    ax.legend()
    ax.set_title("Author concentration per list")
    out["authors"] = _png(fig)
    plt.close(fig)
    return out


def write_report(folder: Path, manifest: dict[str, Any], n: int) -> tuple[Path, str]:
    """Write report.html and report.md into the run folder; returns (html path, markdown)."""
    evaluation = (pq.read_table(table_path(folder, "evaluation")).to_pylist()
                  if table_path(folder, "evaluation").exists() else [])
    recs = pl.read_parquet(table_path(folder, "recommendations"), columns=[USER_ID, ITEM_ID])
    n_items = pq.read_metadata(table_path(folder, "items")).num_rows
    coverage = recs[ITEM_ID].n_unique() / max(n_items, 1)
    md = [f"# Run {manifest['run_id']}", "",
          f"{recs[USER_ID].n_unique():,} lists, {recs.height:,} recommendations scored by "
          f"**{manifest.get('scored_by')}**; catalogue coverage {coverage:.1%} of "
          f"{n_items:,} items.", ""]
    if evaluation:
        cols = [c for c in evaluation[0] if c != "run_id"]
        md += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        md += ["| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c])
                                 for c in cols) + " |" for r in evaluation]
    else:
        md += [f"Offline evaluation: {manifest.get('evaluation', {}).get('status')} "
               f"{manifest.get('evaluation', {}).get('reason', '')}"]
    md += ["", "| stage | seconds | peak RSS MB | cached |", "|---|---|---|---|"]
    cached = set(manifest.get("cached", []))
    rss = manifest.get("peak_rss_mb", {})
    md += [f"| {k} | {v:.2f} | {rss.get(k, 0):.0f} | {'yes' if k in cached else ''} |"
           for k, v in manifest["seconds"].items()]
    markdown = "\n".join(md) + "\n"
    figs = figures(folder, n)
    body = "".join(f'<img alt="{k}" src="data:image/png;base64,{v}">' for k, v in figs.items())
    page = ("<!doctype html><meta charset='utf-8'><title>Run "
            f"{html.escape(str(manifest['run_id']))}</title><style>body{{font-family:sans-serif;"
            "max-width:60em;margin:2em auto}table{border-collapse:collapse}td,th{border:1px "
            "solid #ccc;padding:2px 6px}</style>"
            f"<pre style='white-space:pre-wrap'>{html.escape(markdown)}</pre>{body}")
    path = write_text_atomic(page, folder / "report.html")
    write_text_atomic(markdown, folder / "report.md")
    return path, markdown

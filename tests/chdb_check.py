#!/usr/bin/env python3
"""Checks Spillway's modern DDL and row bytes on a current ClickHouse engine (chdb, 26.x).

Used by tests/modern_clickhouse.rs; runnable by hand:

    python3 tests/chdb_check.py --ddl modern.sql --out OUT_DIR \
        --rows alerts=alerts.rowbinary --rows alert_events=alert_events.rowbinary ...

In one chdb session with a persistent path it:
  1. executes every statement of --ddl (the output of `spillway schema --clickhouse-version 26.9
     --database spillway`) one by one;
  2. checks that every table's DESCRIBE shows DateTime64(3) and LowCardinality(String);
  3. inserts each RowBinary file, byte for byte, with `INSERT INTO db.table FORMAT RowBinary`;
  4. writes OUT_DIR/<table>.tsv: every row as TabSeparated, columns in table order, time columns
     (DateTime64) as Int64 epoch milliseconds, ordered by the sorting key then every column, so
     it can be compared byte for byte with the same export from ClickHouse 18.16;
  5. inserts every file a second time (a retried batch: the tables' deduplication window drops
     it) and counts the rows with and without
     FINAL: ReplacingMergeTree must show each identity once.

Prints one JSON object (versions, and per table the columns, sorting key and counts) on stdout.
Exits 1 with the failing step and the ClickHouse error on stderr when anything fails, and 2 when
chdb is not installed (`python3 -m pip install chdb-core`). Needs python3 stdlib + chdb only.
"""

import argparse
import json
import os
import re
import shutil
import sys
import tempfile


class CheckFailed(Exception):
    """A step failed; the message says which and why."""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--ddl", required=True, help="file with the CREATE statements")
    p.add_argument(
        "--rows",
        action="append",
        default=[],
        metavar="TABLE=FILE",
        help="RowBinary rows for TABLE (repeatable)",
    )
    p.add_argument("--out", required=True, help="directory for the <table>.tsv files")
    p.add_argument("--database", default="spillway", help="database the DDL creates")
    p.add_argument(
        "--session",
        help="chdb session directory (default: a temporary one, removed at the end)",
    )
    args = p.parse_args()
    rows = []
    for item in args.rows:
        table, sep, path = item.partition("=")
        if not sep or not table or not path:
            p.error(f"--rows wants TABLE=FILE, got {item!r}")
        rows.append((table, os.path.abspath(path)))
    if not rows:
        p.error("give at least one --rows TABLE=FILE")
    args.rows = rows
    args.ddl = os.path.abspath(args.ddl)
    args.out = os.path.abspath(args.out)
    if args.session:
        args.session = os.path.abspath(args.session)
    return args


def statements(ddl):
    """The statements of a DDL text, split at the `;` that ends a line."""
    return [s.strip() for s in re.split(r";[ \t]*(?:\n|$)", ddl) if s.strip()]


def quote(name):
    return "`" + name.replace("`", "\\`") + "`"


class Checker:
    def __init__(self, session, database):
        self.s = session
        self.db = database

    def query(self, step, sql, fmt="TabSeparated"):
        """Runs `sql`; returns the raw result bytes, or raises CheckFailed naming the step."""
        try:
            res = self.s.query(sql, fmt)
        except Exception as e:  # chdb raises RuntimeError with the ClickHouse message
            raise CheckFailed(f"{step}: {e}\nSQL: {sql}") from e
        err = getattr(res, "error_message", None)
        if callable(err):
            err = err()
        if err:
            raise CheckFailed(f"{step}: {err}\nSQL: {sql}")
        return res.bytes()

    def text(self, step, sql):
        return self.query(step, sql).decode("utf-8")

    def insert(self, table, path):
        """Sends the file's bytes as `INSERT INTO db.table FORMAT RowBinary`; returns rows written."""
        with open(path, "rb") as f:
            data = f.read()
        sql = f"INSERT INTO {quote(self.db)}.{quote(table)}"
        try:
            with self.s.send_insert(sql, "RowBinary") as ins:
                ins.append(data)
                return ins.finish().rows_written
        except Exception as e:
            raise CheckFailed(
                f"insert {len(data)} RowBinary bytes from {path} into {table}: {e}"
            ) from e

    def describe(self, table):
        out = self.text(f"describe {table}", f"DESCRIBE TABLE {quote(self.db)}.{quote(table)}")
        cols = []
        for line in out.splitlines():
            fields = line.split("\t")
            cols.append({"name": fields[0], "type": fields[1]})
        return cols

    def sorting_key(self, table):
        sql = (
            "SELECT sorting_key FROM system.tables "
            f"WHERE database = '{self.db}' AND name = '{table}'"
        )
        key = self.text(f"sorting key of {table}", sql).strip()
        if not key:
            raise CheckFailed(f"{table}: no sorting key in system.tables")
        return key

    def count(self, table, final=False):
        sql = f"SELECT count() FROM {quote(self.db)}.{quote(table)}{' FINAL' if final else ''}"
        return int(self.text(f"count {table}", sql).strip())

    def canonical_tsv(self, table, cols, key):
        exprs = [
            f"toUnixTimestamp64Milli({quote(c['name'])})"
            if c["type"].startswith("DateTime64")
            else quote(c["name"])
            for c in cols
        ]
        order = ", ".join([key] + [quote(c["name"]) for c in cols])
        sql = (
            f"SELECT {', '.join(exprs)} FROM {quote(self.db)}.{quote(table)} "
            f"ORDER BY {order} FORMAT TabSeparated"
        )
        return self.query(f"canonical rows of {table}", sql)


def check(chdb_session, args):
    with open(args.ddl, encoding="utf-8") as f:
        stmts = statements(f.read())
    if not stmts:
        raise CheckFailed(f"{args.ddl} has no statements")
    session = chdb_session.Session(args.session)
    try:
        c = Checker(session, args.database)
        for i, stmt in enumerate(stmts, 1):
            c.query(f"DDL statement {i} of {len(stmts)}", stmt)
        version = c.text("version", "SELECT version()").strip()
        tables = {}
        for table, _ in args.rows:
            cols = c.describe(table)
            types = {col["type"] for col in cols}
            for want in ("DateTime64(3)", "LowCardinality(String)"):
                if want not in types:
                    raise CheckFailed(f"{table}: DESCRIBE shows no {want} column: {cols}")
            tables[table] = {"columns": cols, "sorting_key": c.sorting_key(table)}
        os.makedirs(args.out, exist_ok=True)
        for table, path in args.rows:
            t = tables[table]
            t["rows_written"] = c.insert(table, path)
            t["count"] = c.count(table)
            t["count_final"] = c.count(table, final=True)
            tsv = c.canonical_tsv(table, t["columns"], t["sorting_key"])
            with open(os.path.join(args.out, f"{table}.tsv"), "wb") as f:
                f.write(tsv)
            t["tsv_bytes"] = len(tsv)
        # The same batches again, as a retry would send them: FINAL still shows each row once.
        for table, path in args.rows:
            t = tables[table]
            t["rows_written_retry"] = c.insert(table, path)
            t["count_after_retry"] = c.count(table)
            t["count_final_after_retry"] = c.count(table, final=True)
        alerts_final = None
        if "alerts" in tables:
            sql = f"SELECT count() FROM {quote(args.database)}.alerts FINAL"
            alerts_final = int(c.text("alerts FINAL", sql).strip())
        return {"version": version, "alerts_final": alerts_final, "tables": tables}
    finally:
        session.cleanup()


def main():
    args = parse_args()
    # chdb's embedded server reads ./config.xml (and may write files) in the current
    # directory: run it in an empty one.
    workdir = tempfile.mkdtemp(prefix="chdb-check-")
    own_session = args.session is None
    if own_session:
        args.session = os.path.join(workdir, "session")
    os.chdir(workdir)
    try:
        try:
            import chdb
            import chdb.session
        except ImportError as e:
            print(
                f"chdb is not installed ({e}): run `python3 -m pip install chdb-core`",
                file=sys.stderr,
            )
            return 2
        try:
            summary = check(chdb.session, args)
        except CheckFailed as e:
            print(f"chdb check failed: {e}", file=sys.stderr)
            return 1
        summary["chdb_version"] = getattr(chdb, "__version__", "?")
        print(json.dumps(summary, indent=1))
        return 0
    finally:
        os.chdir("/")
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

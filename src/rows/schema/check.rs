//! How an existing table differs from what Spillway writes: columns, engine (with its version
//! column, replicated or not) and sorting key as `system.columns` and `system.tables` show them,
//! and the statement that fixes it.

use super::{Generation, Table};

/// A sorting key as written, for comparison: without blanks, and without the parentheses that
/// enclose the whole key (current servers report `ORDER BY (a)` as `(a)`, old ones as `a`).
fn sorting(key: &str) -> String {
    let mut k: String = key.chars().filter(|c| !c.is_whitespace()).collect();
    while k.starts_with('(') && k.ends_with(')') && encloses(&k) {
        k = k[1..k.len() - 1].to_string();
    }
    k
}

/// Whether the first `(` of `s` closes at its last character.
fn encloses(s: &str) -> bool {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return i == s.len() - 1;
        }
    }
    false
}

/// An engine's name and its top-level arguments, trimmed, as `engine_full` shows it, e.g.
/// `ReplicatedReplacingMergeTree('/p/{shard}', '{replica}', version) ORDER BY k` gives the name
/// and `['/p/{shard}'`, `'{replica}'`, `version]` (quotes kept; commas and parentheses inside
/// quotes or nested calls do not split).
pub(crate) fn engine_args(engine: &str) -> (&str, Vec<String>) {
    let engine = engine.trim();
    let Some(open) = engine.find('(').filter(|&i| !engine[..i].contains(' ')) else {
        return (engine.split(' ').next().unwrap_or(""), Vec::new());
    };
    let (mut args, mut cur, mut depth, mut quote) = (Vec::new(), String::new(), 0, None);
    for c in engine[open + 1..].chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '`' | '"') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') if depth == 0 => break,
            (None, ')') => depth -= 1,
            (None, ',') if depth == 0 => {
                args.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() || !args.is_empty() {
        args.push(cur.trim().to_string());
    }
    (&engine[..open], args)
}

/// The fix of table `name` (`on_cluster`: empty, or ` ON CLUSTER ...`) given its differences:
/// missing columns added when only columns are missing; a `Distributed` table that routes
/// elsewhere dropped (it holds no rows: Spillway creates it again at the next start); any other
/// table renamed aside.
pub(crate) fn fix_statement(
    database: &str,
    name: &str,
    on_cluster: &str,
    differences: &[Difference],
) -> String {
    let missing: Vec<String> = differences
        .iter()
        .filter_map(|d| match d {
            Difference::Missing(name, ty) => Some(format!("ADD COLUMN {name} {ty}")),
            _ => None,
        })
        .collect();
    let routes_elsewhere = differences.iter().any(
        |d| matches!(d, Difference::Distributed(found, _) if found.starts_with("Distributed(")),
    );
    if missing.len() == differences.len() {
        format!(
            "ALTER TABLE {database}.{name}{on_cluster} {}",
            missing.join(", ")
        )
    } else if routes_elsewhere {
        format!("DROP TABLE {database}.{name}{on_cluster}")
    } else {
        format!("RENAME TABLE {database}.{name} TO {database}.{name}_old{on_cluster}")
    }
}

/// One way an existing table differs from what Spillway writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Difference {
    /// Its engine (not a ReplacingMergeTree: nothing is deduplicated).
    Engine(String),
    /// Its ReplacingMergeTree version column (empty: none), and Spillway's.
    Version(String, Option<&'static str>),
    /// Its sorting key, and Spillway's (the identity rows are deduplicated on).
    OrderBy(String, &'static str),
    /// A column Spillway writes is missing: its name and type.
    Missing(&'static str, &'static str),
    /// A column has another type: its name, its type, Spillway's.
    Type(&'static str, String, &'static str),
    /// On a cluster, a local table that is not replicated: its engine.
    NotReplicated(String),
    /// On a cluster, the table readers query is not the `Distributed` table Spillway needs:
    /// its engine with its parameters, and Spillway's.
    Distributed(String, String),
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Difference::Engine(e) => write!(
                f,
                "engine is {e}, not ReplacingMergeTree (rows written twice would stay twice)"
            ),
            Difference::Version(found, want) => write!(
                f,
                "ReplacingMergeTree({found}) keeps the row {}, Spillway needs ReplacingMergeTree({})",
                if found.is_empty() { "inserted last" } else { "with the highest version" },
                want.unwrap_or("")
            ),
            Difference::OrderBy(found, want) => write!(
                f,
                "ORDER BY is ({found}), not ({want}), the identity rows are deduplicated on"
            ),
            Difference::Missing(name, ty) => write!(f, "column {name} {ty} is missing"),
            Difference::Type(name, found, want) => {
                write!(f, "column {name} is {found}, Spillway writes {want}")
            }
            Difference::NotReplicated(e) => write!(
                f,
                "engine is {e}, not ReplicatedReplacingMergeTree (its rows would be on one replica only)"
            ),
            Difference::Distributed(found, want) => write!(
                f,
                "engine is {found}, not {want} (rows must be sharded by their identity so that copies meet under FINAL)"
            ),
        }
    }
}

impl Table {
    /// How an existing table differs from this one, as Spillway writes it on a server of
    /// `generation`: `columns` (name, type) as `system.columns` lists them, `engine` (the
    /// engine with its parameters, `engine_full`) and `sorting_key` as `system.tables` does.
    /// Empty when Spillway can write into it as it is. Columns Spillway does not write are
    /// allowed (they take their defaults).
    pub(crate) fn differences(
        &self,
        generation: Generation,
        columns: &[(String, String)],
        engine: &str,
        sorting_key: &str,
    ) -> Vec<Difference> {
        let mut out = Vec::new();
        // `ReplacingMergeTree(version) ORDER BY ...`, or without parameters; a replicated one
        // has its ZooKeeper path and replica name first.
        let (name, mut args) = engine_args(engine);
        if name.starts_with("Replicated") {
            args.drain(..args.len().min(2));
        }
        let params = args.join(", ");
        if !name.ends_with("ReplacingMergeTree") {
            out.push(Difference::Engine(name.to_string()));
        } else if params != self.version.unwrap_or("") {
            out.push(Difference::Version(params, self.version));
        }
        if sorting(sorting_key) != sorting(self.order_by) {
            out.push(Difference::OrderBy(sorting_key.to_string(), self.order_by));
        }
        out.extend(self.column_differences(generation, columns));
        out
    }

    /// The columns Spillway writes that `columns` (name, type) lacks or types otherwise.
    pub(crate) fn column_differences(
        &self,
        generation: Generation,
        columns: &[(String, String)],
    ) -> Vec<Difference> {
        let mut out = Vec::new();
        for (name, col) in self.columns {
            let want = generation.render(*col);
            match columns.iter().find(|(n, _)| n == name) {
                None => out.push(Difference::Missing(name, want)),
                Some((_, found)) if found != want => {
                    out.push(Difference::Type(name, found.clone(), want))
                }
                Some(_) => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::table;
    use super::*;

    #[test]
    fn an_existing_table_is_checked_for_types_engine_and_key() {
        let t = table("trades");
        let g = Generation::Legacy;
        let exact: Vec<(String, String)> = t
            .columns
            .iter()
            .map(|(n, c)| (n.to_string(), g.render(*c).to_string()))
            .collect();
        let engine =
            "ReplacingMergeTree(version) ORDER BY trade_id SETTINGS index_granularity = 8192";
        assert!(t.differences(g, &exact, engine, "trade_id").is_empty());
        // Without the version column the last insert wins: refused.
        let d = t.differences(
            g,
            &exact,
            "ReplacingMergeTree ORDER BY trade_id",
            "trade_id",
        );
        assert_eq!(d, [Difference::Version(String::new(), Some("version"))]);
        assert_eq!(
            d[0].to_string(),
            "ReplacingMergeTree() keeps the row inserted last, Spillway needs ReplacingMergeTree(version)"
        );
        assert!(
            t.differences(
                g,
                &exact,
                "ReplacingMergeTree() ORDER BY trade_id",
                "trade_id"
            )
            .len()
                == 1
        );
        // Columns Spillway does not write are fine.
        let mut more = exact.clone();
        more.push(("note".into(), "String".into()));
        assert!(t.differences(g, &more, engine, " trade_id ").is_empty());
        // Current servers write a one-column key in parentheses.
        assert!(t.differences(g, &exact, engine, "(trade_id)").is_empty());
        assert_eq!(sorting("(a, b)"), "a,b");
        assert_eq!(sorting("(a), (b)"), "(a),(b)");
        // A missing column: added by the fix.
        let fewer: Vec<_> = exact.iter().filter(|(n, _)| n != "swap").cloned().collect();
        let d = t.differences(g, &fewer, engine, "trade_id");
        assert_eq!(d, [Difference::Missing("swap", "Nullable(Float64)")]);
        assert_eq!(
            fix_statement("db", t.name, "", &d),
            "ALTER TABLE db.trades ADD COLUMN swap Nullable(Float64)"
        );
        // Another type, engine or key: the table is renamed aside.
        let mut typed = exact.clone();
        typed[1].1 = "UInt8".into();
        let d = t.differences(
            g,
            &typed,
            "MergeTree ORDER BY (trade_id, event)",
            "trade_id, event",
        );
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(
            d[0].to_string(),
            "engine is MergeTree, not ReplacingMergeTree (rows written twice would stay twice)"
        );
        assert_eq!(
            d[2].to_string(),
            "column event is UInt8, Spillway writes String"
        );
        assert_eq!(
            fix_statement("db", t.name, "", &d),
            "RENAME TABLE db.trades TO db.trades_old"
        );
    }
}

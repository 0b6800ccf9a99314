//! ClickHouse errors that retrying the same insert cannot fix: the table or the database is gone,
//! the user cannot log in, may not write, or the table no longer has Spillway's columns. Each is
//! told by ClickHouse's error code (`Code: N` at the start of the response body, or only the
//! `X-ClickHouse-Exception-Code` header, which the `clickhouse` crate turns into `Code: N` when
//! the body is empty) and comes with the reason `/readyz` shows and the fix. Every other error is
//! transient and keeps its backoff.

/// What kind of permanent error blocks the inserts (the `reason` label of
/// `spillway_clickhouse_blocked`, the `kind` label of `spillway_clickhouse_errors_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Unknown user, wrong or missing password, address not allowed (192-195 on old servers,
    /// 516 on current ones).
    Auth,
    /// The table is gone (60).
    UnknownTable,
    /// The database is gone (81).
    UnknownDatabase,
    /// The user is read-only (164).
    ReadOnly,
    /// The user lacks a privilege (497; 291, access to the database denied, on old servers).
    AccessDenied,
    /// The table no longer has a column Spillway writes (16).
    Schema,
}

impl Kind {
    /// Every kind, for the metrics' initial zeros.
    pub(crate) const ALL: [Kind; 6] = [
        Kind::Auth,
        Kind::UnknownTable,
        Kind::UnknownDatabase,
        Kind::ReadOnly,
        Kind::AccessDenied,
        Kind::Schema,
    ];

    /// The kind of a ClickHouse error code, or None: transient.
    pub(crate) fn of_code(code: u32) -> Option<Kind> {
        Some(match code {
            // UNKNOWN_USER, WRONG_PASSWORD, REQUIRED_PASSWORD, IP_ADDRESS_NOT_ALLOWED (18.16
            // answers 192 for an unknown user and 193 for a wrong password, HTTP 401), and
            // AUTHENTICATION_FAILED, which current servers answer for all of them.
            192..=195 | 516 => Kind::Auth,
            60 => Kind::UnknownTable,
            81 => Kind::UnknownDatabase,
            164 => Kind::ReadOnly,
            291 | 497 => Kind::AccessDenied,
            // NO_SUCH_COLUMN_IN_TABLE: the table was altered under a running Spillway.
            16 => Kind::Schema,
            _ => return None,
        })
    }

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Kind::Auth => "auth",
            Kind::UnknownTable => "unknown_table",
            Kind::UnknownDatabase => "unknown_database",
            Kind::ReadOnly => "readonly",
            Kind::AccessDenied => "access_denied",
            Kind::Schema => "schema",
        }
    }

    /// Whether Spillway can repair it itself (creating what is gone) when allowed.
    pub(crate) fn repairable(self) -> bool {
        matches!(self, Kind::UnknownTable | Kind::UnknownDatabase)
    }
}

/// A permanent error as `/readyz` and the log tell it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Blocked {
    /// Its kind.
    pub kind: Kind,
    /// ClickHouse's error code.
    pub code: u32,
    /// The table whose insert failed, for the kinds that concern one table (else empty: the
    /// tables are inserted at once, and whichever fails first says the same).
    pub table: &'static str,
}

/// What the reason needs to know of the configuration (never the password).
pub(crate) struct Context<'a> {
    /// The database.
    pub database: &'a str,
    /// The user.
    pub user: &'a str,
    /// Whether Spillway recreates a dropped table or database (`clickhouse.recreate_tables`).
    pub recreate: bool,
}

impl Blocked {
    /// The permanent error behind `e`, if it is one.
    pub(crate) fn of(e: &clickhouse::error::Error, table: &'static str) -> Option<Blocked> {
        let clickhouse::error::Error::BadResponse(msg) = e else {
            return None;
        };
        let code = super::writer::error_code(msg)?;
        let kind = Kind::of_code(code)?;
        let one_table = matches!(kind, Kind::UnknownTable | Kind::Schema);
        Some(Blocked {
            kind,
            code,
            table: if one_table { table } else { "" },
        })
    }

    /// The reason, with what fixes it: shown by `/readyz` and logged.
    pub(crate) fn reason(&self, cx: &Context) -> String {
        let (db, user, code, table) = (cx.database, cx.user, self.code, self.table);
        let recreate = "or set clickhouse.recreate_tables = true";
        match self.kind {
            Kind::UnknownTable if cx.recreate => {
                format!("clickhouse: table {db}.{table} is gone (Code {code}): Spillway recreates it")
            }
            Kind::UnknownTable => format!(
                "clickhouse: table {db}.{table} is gone (Code {code}): rows wait; fix: create it (`spillway schema` prints the statement), {recreate}"
            ),
            Kind::UnknownDatabase if cx.recreate => format!(
                "clickhouse: database {db} is gone (Code {code}): Spillway recreates it and its tables"
            ),
            Kind::UnknownDatabase => format!(
                "clickhouse: database {db} is gone (Code {code}): rows wait; fix: create it and its tables (`spillway schema` prints the statements), {recreate}"
            ),
            Kind::Auth => format!(
                "clickhouse: authentication failed for user {user} (Code {code}): rows wait; fix: check clickhouse.user and clickhouse.password (SPILLWAY_CLICKHOUSE_PASSWORD) against the server's users"
            ),
            Kind::ReadOnly => format!(
                "clickhouse: user {user} is read-only (Code {code}): rows wait; fix: give it a profile with readonly = 0, or GRANT INSERT, CREATE TABLE ON {db}.* TO {user}"
            ),
            Kind::AccessDenied => format!(
                "clickhouse: user {user} may not write database {db} (Code {code}): rows wait; fix: GRANT INSERT, CREATE TABLE ON {db}.* TO {user} (on old servers: allow_databases in users.xml)"
            ),
            Kind::Schema => format!(
                "clickhouse: table {db}.{table} lost a column Spillway writes (Code {code}): rows wait; fix: restart Spillway, whose start-up check prints the statement that fixes it"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(msg: &str) -> Option<Kind> {
        Blocked::of(&clickhouse::error::Error::BadResponse(msg.into()), "alerts").map(|b| b.kind)
    }

    #[test]
    fn permanent_errors_are_told_by_their_code() {
        // What 18.16 answers (body only, no header).
        let old = |code: u32, text: &str| {
            format!(
                "Code: {code}, e.displayText() = DB::Exception: {text}, e.what() = DB::Exception"
            )
        };
        assert_eq!(
            of(&old(193, "Wrong password for user spill")),
            Some(Kind::Auth)
        );
        assert_eq!(of(&old(192, "Unknown user nobody")), Some(Kind::Auth));
        assert_eq!(
            of(&old(60, "Table sp.alerts doesn't exist.")),
            Some(Kind::UnknownTable)
        );
        assert_eq!(
            of(&old(81, "Database sp doesn't exist")),
            Some(Kind::UnknownDatabase)
        );
        assert_eq!(
            of(&old(164, "Cannot insert into table in readonly mode")),
            Some(Kind::ReadOnly)
        );
        assert_eq!(
            of(&old(291, "Access denied to database sp")),
            Some(Kind::AccessDenied)
        );
        assert_eq!(
            of(&old(16, "No such column b in table t")),
            Some(Kind::Schema)
        );
        // Current servers, and the header alone (the crate's `Code: N`).
        assert_eq!(
            of("Code: 516. DB::Exception: spill: Authentication failed: password is incorrect, or there is no user with such name. (AUTHENTICATION_FAILED)"),
            Some(Kind::Auth)
        );
        assert_eq!(of("Code: 497"), Some(Kind::AccessDenied));
        // Transient: load, memory, parts, timeouts, and anything without a code.
        for transient in [
            "Code: 241. Memory limit",
            "Code: 252. Too many parts",
            "Code: 159",
            "502 Bad Gateway",
        ] {
            assert_eq!(of(transient), None, "{transient}");
        }
        assert!(Blocked::of(&clickhouse::error::Error::TimedOut, "alerts").is_none());
    }

    #[test]
    fn reasons_name_the_fix_and_never_a_password() {
        let cx = |recreate| Context {
            database: "spillway",
            user: "spill",
            recreate,
        };
        let gone = Blocked {
            kind: Kind::UnknownTable,
            code: 60,
            table: "alerts",
        };
        assert_eq!(
            gone.reason(&cx(true)),
            "clickhouse: table spillway.alerts is gone (Code 60): Spillway recreates it"
        );
        assert!(gone
            .reason(&cx(false))
            .contains("clickhouse.recreate_tables = true"));
        let auth = Blocked {
            kind: Kind::Auth,
            code: 193,
            table: "alerts",
        };
        assert!(auth
            .reason(&cx(true))
            .contains("authentication failed for user spill"));
        assert!(auth.reason(&cx(true)).contains("clickhouse.password"));
    }
}

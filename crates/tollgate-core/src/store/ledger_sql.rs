//! The ledger's report SQL, written once for both SQL engines: spend reports and request
//! statistics over the rows (`ledger`) or the hourly rollup (`ledger_hourly`), the conversation
//! list (`ledger_conversations`), and the rollups' upserts. Column names come from closed matches, never from input; values are bound.

use crate::ledger::{
    latency_columns, Dimension, SpendQuery, SpendRow, StatsBucket, LATENCY_CLASSES,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Which table a report reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// One row per record.
    Rows,
    /// Per hour and (key, user, team, model, provider); `''` for a missing dimension.
    Hourly,
}

impl Dialect {
    /// The `n`th bound parameter (1-based).
    fn param(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    fn int(self) -> &'static str {
        match self {
            Dialect::Sqlite => "INTEGER",
            Dialect::Postgres => "BIGINT",
        }
    }

    fn float(self) -> &'static str {
        match self {
            Dialect::Sqlite => "REAL",
            Dialect::Postgres => "DOUBLE PRECISION",
        }
    }

    /// The UTC day of a unix-ms column.
    fn day(self, time_col: &str) -> String {
        match self {
            Dialect::Sqlite => format!("strftime('%Y-%m-%d', {time_col} / 1000, 'unixepoch')"),
            Dialect::Postgres => {
                format!(
                    "to_char(to_timestamp({time_col} / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
                )
            }
        }
    }

    /// `SUM(col)` as an integer (0 over no rows).
    fn sum_int(self, col: &str) -> String {
        format!("CAST(COALESCE(SUM({col}), 0) AS {})", self.int())
    }
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Rows => "ledger",
            Table::Hourly => "ledger_hourly",
        }
    }

    fn time(self) -> &'static str {
        match self {
            Table::Rows => "time_ms",
            Table::Hourly => "hour_ms",
        }
    }

    fn requests(self) -> &'static str {
        match self {
            Table::Rows => "1",
            Table::Hourly => "requests",
        }
    }
}

/// A dimension's column or expression (the rollup keeps no conversation or agent:
/// `ledger::rollup_serves` sends those reports to the rows).
fn column(d: Dimension, table: Table, dialect: Dialect) -> String {
    match (d, table) {
        (Dimension::Key, _) => "key_id".into(),
        (Dimension::User, _) => "user_id".into(),
        (Dimension::Team, _) => "team_id".into(),
        (Dimension::Model, _) => "model".into(),
        (Dimension::Provider, _) => "provider".into(),
        (Dimension::Conversation, Table::Rows) => "conversation_id".into(),
        (Dimension::Agent, Table::Rows) => "agent".into(),
        (Dimension::Conversation | Dimension::Agent, Table::Hourly) => "NULL".into(),
        (Dimension::Day, t) => dialect.day(t.time()),
    }
}

/// A spend report over `[$1, $2)`, the filter's value as `$3`. Rows:
/// `(group, requests, prompt, completion, cost)`.
pub fn spend(q: &SpendQuery, table: Table, dialect: Dialect) -> String {
    let group = q.group_by.map_or_else(
        || "CAST(NULL AS TEXT)".to_owned(),
        |d| column(d, table, dialect),
    );
    let time = table.time();
    let mut sql = format!(
        "SELECT {group} AS g, {}, {}, {}, CAST(COALESCE(SUM(cost_usd), 0.0) AS {})
         FROM {} WHERE {time} >= {} AND {time} < {}",
        dialect.sum_int(table.requests()),
        dialect.sum_int("prompt_tokens"),
        dialect.sum_int("completion_tokens"),
        dialect.float(),
        table.name(),
        dialect.param(1),
        dialect.param(2),
    );
    if let Some((dim, _)) = &q.filter {
        sql.push_str(&format!(
            " AND {} = {}",
            column(*dim, table, dialect),
            dialect.param(3)
        ));
    }
    sql.push_str(" GROUP BY g");
    sql
}

/// Report rows as [`SpendRow`]s (an empty table still yields one total row with no requests;
/// the rollup's `''` is a missing dimension).
pub fn spend_rows(rows: Vec<(Option<String>, i64, i64, i64, f64)>) -> Vec<SpendRow> {
    rows.into_iter()
        .filter(|r| r.1 > 0)
        .map(|(group, n, p, c, cost)| SpendRow {
            group: group.filter(|g| !g.is_empty()),
            requests: n as u64,
            prompt_tokens: p as u64,
            completion_tokens: c as u64,
            cost_usd: cost,
        })
        .collect()
}

/// Statistics from the rows over `[$1, $3)` in buckets of `$2` ms: `ledger::StatsRow`s.
pub fn stats_rows(dialect: Dialect) -> String {
    format!(
        "SELECT (time_ms - {p1}) / {p2} AS b, CAST(latency_class AS {int}), COUNT(*), {}, {}, {},
                CAST(COALESCE(SUM(cost_usd), 0.0) AS {float})
         FROM ledger WHERE time_ms >= {p1} AND time_ms < {p3}
         GROUP BY b, latency_class",
        dialect.sum_int("failed"),
        dialect.sum_int("prompt_tokens"),
        dialect.sum_int("completion_tokens"),
        p1 = dialect.param(1),
        p2 = dialect.param(2),
        p3 = dialect.param(3),
        int = dialect.int(),
        float = dialect.float(),
    )
}

/// Statistics from the rollup (hour-aligned `$1`, `$2`, `$3`): rows of bucket, requests,
/// errors, prompt and completion tokens, cost, and the latency classes' counts joined by
/// commas (one text column, so both engines decode the same tuple).
pub fn stats_hourly(dialect: Dialect) -> String {
    let classes: Vec<String> = latency_columns()
        .iter()
        .map(|c| format!("CAST({} AS TEXT)", dialect.sum_int(c)))
        .collect();
    format!(
        "SELECT (hour_ms - {p1}) / {p2} AS b, {}, {}, {}, {},
                CAST(COALESCE(SUM(cost_usd), 0.0) AS {float}), {}
         FROM ledger_hourly WHERE hour_ms >= {p1} AND hour_ms < {p3}
         GROUP BY b",
        dialect.sum_int("requests"),
        dialect.sum_int("failed"),
        dialect.sum_int("prompt_tokens"),
        dialect.sum_int("completion_tokens"),
        classes.join(" || ',' || "),
        p1 = dialect.param(1),
        p2 = dialect.param(2),
        p3 = dialect.param(3),
        float = dialect.float(),
    )
}

/// One row of [`stats_hourly`].
pub type HourlyStatsRow = (i64, i64, i64, i64, i64, f64, String);

/// Rollup rows as buckets.
pub fn hourly_buckets(rows: Vec<HourlyStatsRow>) -> Vec<StatsBucket> {
    let mut buckets: std::collections::BTreeMap<i64, StatsBucket> = Default::default();
    for (index, n, errors, p, c, cost, classes) in rows {
        let b = buckets.entry(index).or_insert_with(|| StatsBucket {
            index,
            ..StatsBucket::default()
        });
        b.requests += n.max(0) as u64;
        b.errors += errors.max(0) as u64;
        b.prompt_tokens += p.max(0) as u64;
        b.completion_tokens += c.max(0) as u64;
        b.cost_usd += cost;
        for (slot, v) in b
            .latency
            .iter_mut()
            .zip(classes.split(',').take(LATENCY_CLASSES))
        {
            *slot += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    buckets.into_values().collect()
}

/// The ledger row's columns, in the order [`insert_rows`] binds them.
pub const ROW_COLUMNS: [&str; 14] = [
    "time_ms",
    "key_id",
    "user_id",
    "team_id",
    "model",
    "provider",
    "cost_usd",
    "conversation_id",
    "agent",
    "prompt_tokens",
    "completion_tokens",
    "record",
    "failed",
    "latency_class",
];

/// Most rows one INSERT carries (14 values each, far below either engine's parameter limit).
pub const MAX_ROWS_PER_INSERT: usize = 64;

/// How a batch of `n` rows is split into INSERTs: powers of two, largest first, none above
/// [`MAX_ROWS_PER_INSERT`]. A handful of distinct statements, each prepared once per
/// connection, instead of one statement (and one round trip) per row.
pub fn insert_chunks(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let size = if n >= MAX_ROWS_PER_INSERT {
            MAX_ROWS_PER_INSERT
        } else {
            1 << (usize::BITS - 1 - n.leading_zeros())
        };
        n -= size;
        Some(size)
    })
}

/// One INSERT of `rows` ledger rows ([`ROW_COLUMNS`] each, in order).
pub fn insert_rows(dialect: Dialect, rows: usize) -> String {
    let width = ROW_COLUMNS.len();
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            // SQLite gets bare `?`s: numbered ones cost a name lookup per bound value that
            // grows with the statement (sqlx asks each parameter's name), quadratic here.
            let params: Vec<String> = (1..=width)
                .map(|c| match dialect {
                    Dialect::Sqlite => "?".to_owned(),
                    Dialect::Postgres => dialect.param(r * width + c),
                })
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO ledger ({}) VALUES {}",
        ROW_COLUMNS.join(", "),
        tuples.join(", ")
    )
}

/// The rollup's upsert: 27 values (hour, key, user, team, model, provider, requests, failed,
/// prompt and completion tokens, cost, the 16 latency classes) added to the row's.
pub fn hourly_upsert(dialect: Dialect) -> String {
    let lat = latency_columns();
    let mut cols = vec![
        "hour_ms",
        "key_id",
        "user_id",
        "team_id",
        "model",
        "provider",
        "requests",
        "failed",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
    ];
    cols.extend(lat.iter().map(String::as_str));
    let values: Vec<String> = (1..=cols.len()).map(|n| dialect.param(n)).collect();
    let adds: Vec<String> = cols[6..]
        .iter()
        .map(|c| format!("{c} = ledger_hourly.{c} + excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO ledger_hourly ({}) VALUES ({})
         ON CONFLICT (hour_ms, key_id, user_id, team_id, model, provider) DO UPDATE SET {}",
        cols.join(", "),
        values.join(", "),
        adds.join(", ")
    )
}

/// The conversation rollup's upsert: 8 values (conversation, first and last time, requests,
/// failed, prompt and completion tokens, cost) merged into the row.
pub fn conversation_upsert(dialect: Dialect) -> String {
    let (least, greatest) = match dialect {
        Dialect::Sqlite => ("min", "max"),
        Dialect::Postgres => ("LEAST", "GREATEST"),
    };
    let values: Vec<String> = (1..=8).map(|n| dialect.param(n)).collect();
    let adds: Vec<String> = [
        "requests",
        "failed",
        "prompt_tokens",
        "completion_tokens",
        "cost_usd",
    ]
    .iter()
    .map(|c| format!("{c} = ledger_conversations.{c} + excluded.{c}"))
    .collect();
    format!(
        "INSERT INTO ledger_conversations (conversation_id, first_ms, last_ms, requests, failed,
             prompt_tokens, completion_tokens, cost_usd) VALUES ({})
         ON CONFLICT (conversation_id) DO UPDATE SET
             first_ms = {least}(ledger_conversations.first_ms, excluded.first_ms),
             last_ms = {greatest}(ledger_conversations.last_ms, excluded.last_ms), {}",
        values.join(", "),
        adds.join(", ")
    )
}

/// The conversations active in `[$1, $2)`, most expensive first, at most `$3`.
pub fn conversation_list(dialect: Dialect) -> String {
    format!(
        "SELECT conversation_id, first_ms, last_ms, requests, failed, prompt_tokens,
                completion_tokens, cost_usd
         FROM ledger_conversations WHERE last_ms >= {} AND first_ms < {}
         ORDER BY cost_usd DESC, conversation_id LIMIT {}",
        dialect.param(1),
        dialect.param(2),
        dialect.param(3)
    )
}

/// A row of [`conversation_list`].
pub type ConversationRow = (String, i64, i64, i64, i64, i64, i64, f64);

pub fn conversation_rows(rows: Vec<ConversationRow>) -> Vec<crate::ledger::ConversationSummary> {
    rows.into_iter()
        .map(
            |(conversation_id, first_ms, last_ms, requests, failed, prompt, completion, cost)| {
                crate::ledger::ConversationSummary {
                    conversation_id,
                    first_ms,
                    last_ms,
                    requests,
                    failed,
                    prompt_tokens: prompt,
                    completion_tokens: completion,
                    cost_usd: cost,
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_into_few_distinct_inserts() {
        let chunks = |n| insert_chunks(n).collect::<Vec<_>>();
        assert_eq!(chunks(0), Vec::<usize>::new());
        assert_eq!(chunks(1), vec![1]);
        assert_eq!(chunks(7), vec![4, 2, 1]);
        assert_eq!(chunks(64), vec![64]);
        assert_eq!(chunks(200), vec![64, 64, 64, 8]);
        for n in 0..600 {
            let c = chunks(n);
            assert_eq!(c.iter().sum::<usize>(), n);
            assert!(c
                .iter()
                .all(|s| s.is_power_of_two() && *s <= MAX_ROWS_PER_INSERT));
        }
    }

    #[test]
    fn a_multi_row_insert_numbers_its_values_in_order() {
        let pg = insert_rows(Dialect::Postgres, 2);
        assert!(
            pg.ends_with("($15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28)")
        );
        assert!(pg.contains("VALUES ($1, $2,"));
        let lite = insert_rows(Dialect::Sqlite, 3);
        assert_eq!(lite.matches('?').count(), 3 * ROW_COLUMNS.len());
        assert!(lite.starts_with("INSERT INTO ledger (time_ms, key_id,"));
    }
}

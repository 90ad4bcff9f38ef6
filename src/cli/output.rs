//! How the CLI prints answers: aligned tables for people, JSON for machines.

use comfy_table::presets::NOTHING;
use serde::Serialize;

use super::failure::Failure;
use crate::proto;

/// A table of text cells.
pub struct Table(comfy_table::Table);

impl Table {
    pub fn new(header: &[&str]) -> Self {
        let mut table = comfy_table::Table::new();
        table.load_preset(NOTHING).set_header(header.to_vec());
        Table(table)
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.0.add_row(cells);
    }

    pub fn render(&self) -> String {
        self.0.to_string()
    }
}

fn print_json(value: &impl Serialize) {
    match serde_json::to_value(value) {
        Ok(value) => match serde_json::to_string_pretty(&json_shape(value)) {
            Ok(text) => println!("{text}"),
            Err(error) => eprintln!("error: cannot encode JSON: {error}"),
        },
        Err(error) => eprintln!("error: cannot encode JSON: {error}"),
    }
}

/// The one JSON shape of every answer (and of each line of `audit export`), on top of
/// the messages' own fields: every `X_unix_ms` time gains a twin `X` in RFC 3339 (null
/// for none); a `generation` (64 bits, beyond the 2^53 a JSON number holds exactly in
/// most readers) is a string, as proto3's JSON mapping writes 64-bit integers; the
/// `next_page_token` of a listing the CLI already read to its end is left out. Enum
/// fields print by name (`crate::proto::json`).
pub fn json_shape(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(fields) => {
            let mut shaped = serde_json::Map::new();
            for (name, value) in fields {
                if name == "next_page_token" {
                    continue;
                }
                if let (Some(stem), Some(unix_ms)) = (name.strip_suffix("_unix_ms"), value.as_i64())
                {
                    let at = (unix_ms > 0).then(|| time_ms(unix_ms));
                    shaped.insert(stem.to_owned(), at.map_or(Value::Null, Value::String));
                }
                let value = match (name.as_str(), value) {
                    ("generation", Value::Number(number)) => Value::String(number.to_string()),
                    (_, value) => json_shape(value),
                };
                shaped.insert(name, value);
            }
            Value::Object(shaped)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(json_shape).collect()),
        other => other,
    }
}

/// Unix milliseconds (> 0) as an RFC 3339 UTC time with milliseconds.
fn time_ms(unix_ms: i64) -> String {
    let ms = u64::try_from(unix_ms).unwrap_or_default();
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}

/// A failed command's report on standard error: `error: CODE: message`, or with
/// `--json` one object `{"code": "NOT_FOUND", "message": "..."}`.
pub fn failure(json: bool, failure: &Failure) {
    if json {
        let report = serde_json::json!({
            "code": failure.code_name(),
            "message": failure.message(),
        });
        eprintln!("{report}");
    } else {
        eprintln!("error: {}: {}", failure.code_name(), failure.message());
    }
}

pub fn table(json: bool, answer: &impl Serialize, table: Table) {
    if json {
        print_json(answer);
    } else {
        println!("{}", table.0);
    }
}

/// A one-line answer: `text` for people; with `--json`, `answer` (an object that says
/// what was done, never `{}`).
pub fn message(json: bool, answer: &impl Serialize, text: String) {
    if json {
        print_json(answer);
    } else {
        println!("{text}");
    }
}

/// Unix milliseconds as an RFC 3339 UTC time, or "-" for none.
pub fn time(unix_ms: i64) -> String {
    let Ok(ms) = u64::try_from(unix_ms) else {
        return "-".into();
    };
    if ms == 0 {
        return "-".into();
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(at).to_string()
}

pub fn product_name(value: i32) -> &'static str {
    match proto::Product::try_from(value) {
        Ok(proto::Product::Kse) => "KSE",
        Ok(proto::Product::Kre) => "KRE",
        _ => "?",
    }
}

pub fn role_name(value: i32) -> &'static str {
    match proto::Role::try_from(value) {
        Ok(proto::Role::Owner) => "owner",
        Ok(proto::Role::Admin) => "admin",
        Ok(proto::Role::Member) => "member",
        _ => "?",
    }
}

pub fn organizations(json: bool, organizations: &[proto::Organization], answer: &impl Serialize) {
    let mut t = Table::new(&[
        "ORG",
        "NAME",
        "KSE SEATS",
        "KRE SESSIONS",
        "EXPIRES",
        "MEMBERS",
    ]);
    for org in organizations {
        let quota = org.quota.unwrap_or_default();
        t.row(vec![
            org.org_id.clone(),
            org.display_name.clone(),
            quota.kse_seats.to_string(),
            quota.kre_sessions.to_string(),
            time(quota.expires_at_unix_ms),
            org.member_count.to_string(),
        ]);
    }
    table(json, answer, t);
}

/// `quota set`'s answer: the quota before and after the change.
pub fn quota_change(json: bool, answer: &proto::SetQuotaResponse) {
    let mut t = Table::new(&["", "KSE SEATS", "KRE SESSIONS", "EXPIRES"]);
    let after = answer.organization.as_ref().and_then(|o| o.quota);
    for (when, quota) in [("before", answer.previous_quota), ("after", after)] {
        let quota = quota.unwrap_or_default();
        t.row(vec![
            when.to_owned(),
            quota.kse_seats.to_string(),
            quota.kre_sessions.to_string(),
            time(quota.expires_at_unix_ms),
        ]);
    }
    table(json, answer, t);
}

pub fn members(json: bool, members: &[proto::Member], answer: &impl Serialize) {
    let mut t = Table::new(&["EMAIL", "ROLE"]);
    for member in members {
        t.row(vec![member.email.clone(), role_name(member.role).into()]);
    }
    table(json, answer, t);
}

pub fn assignments(
    json: bool,
    results: &[proto::AssignmentResult],
    total: u32,
    answer: &impl Serialize,
) {
    let mut t = Table::new(&["EMAIL", "RESULT"]);
    for result in results {
        let outcome = match proto::AssignmentOutcome::try_from(result.outcome) {
            Ok(proto::AssignmentOutcome::Assigned) => "assigned",
            Ok(proto::AssignmentOutcome::AlreadyAssigned) => "already assigned",
            Ok(proto::AssignmentOutcome::Unassigned) => "unassigned",
            Ok(proto::AssignmentOutcome::NotAssigned) => "was not assigned",
            _ => "?",
        };
        t.row(vec![result.email.clone(), outcome.into()]);
    }
    table(json, answer, t);
    if !json {
        println!("{total} assigned in total");
    }
}

pub fn usage(json: bool, answer: &proto::GetUsageResponse) {
    let window = humantime::format_duration(std::time::Duration::from_secs(u64::from(
        answer.window_seconds,
    )));
    let peak_in_window = format!("PEAK ({window})");
    let denials_in_window = format!("DENIALS ({window})");
    let mut t = Table::new(&[
        "PRODUCT",
        "QUOTA",
        "ASSIGNED",
        "ACTIVE",
        &peak_in_window,
        &denials_in_window,
        "PEAK",
        "GRANTS",
        "DENIALS",
        "EXPIRIES",
    ]);
    for u in &answer.products {
        t.row(vec![
            product_name(u.product).into(),
            u.quota.to_string(),
            u.assigned.to_string(),
            u.active_sessions.to_string(),
            u.window_peak_sessions.to_string(),
            u.window_denials.to_string(),
            u.peak_sessions.to_string(),
            u.grants.to_string(),
            u.denials.to_string(),
            u.expiries.to_string(),
        ]);
    }
    table(json, answer, t);
    if !json {
        println!("PEAK, GRANTS, DENIALS and EXPIRIES count since the daemon started.");
    }
    if !json && answer.license_expires_at_unix_ms > 0 {
        println!(
            "licenses expire at {}",
            time(answer.license_expires_at_unix_ms)
        );
    }
}

/// `usage --series`: per product, a verdict on the quota (the console's sentence), then
/// a row per point since the daemon started keeping figures. With `--json`, one
/// object `{"series": [...]}` holding the answers.
pub fn usage_series(json: bool, series: &[proto::GetUsageSeriesResponse]) {
    #[derive(Serialize)]
    struct Answer<'a> {
        series: &'a [proto::GetUsageSeriesResponse],
    }
    if json {
        print_json(&Answer { series });
        return;
    }
    for (index, answer) in series.iter().enumerate() {
        if index > 0 {
            println!();
        }
        let name = product_name(answer.product);
        let every = humantime::format_duration(std::time::Duration::from_millis(
            u64::try_from(answer.resolution_ms).unwrap_or_default(),
        ));
        println!(
            "{name}: now {} active of a quota of {}; a point every {every}",
            answer.active_sessions, answer.quota
        );
        println!("{}", usage_verdict(answer));
        let mut t = Table::new(&["FROM", "PEAK", "QUOTA", "GRANTS", "DENIALS"]);
        let kept = answer
            .points
            .iter()
            .filter(|p| p.start_unix_ms + answer.resolution_ms > answer.kept_since_unix_ms);
        for point in kept {
            t.row(vec![
                time(point.start_unix_ms),
                point.peak_sessions.to_string(),
                point.quota.map_or_else(|| "-".into(), |q| q.to_string()),
                point.grants.to_string(),
                point.denials.to_string(),
            ]);
        }
        println!("{}", t.render());
        println!(
            "(kept in memory since {}: earlier periods hold no figures)",
            time(answer.kept_since_unix_ms)
        );
    }
}

/// Whether the quota sufficed over a series: reached or refused, or the peak against it.
fn usage_verdict(answer: &proto::GetUsageSeriesResponse) -> String {
    let peak = answer
        .points
        .iter()
        .map(|p| p.peak_sessions)
        .max()
        .unwrap_or(0);
    let denials: u64 = answer.points.iter().map(|p| p.denials).sum();
    let quota = answer.quota;
    if quota == 0 && peak == 0 && denials == 0 {
        "No quota: the organization holds no license of this product.".into()
    } else if denials > 0 {
        format!(
            "Sessions reached the quota and {denials} acquire(s) were refused: consider more seats."
        )
    } else if quota > 0 && peak >= quota {
        format!("Sessions reached the quota of {quota}: consider more seats.")
    } else {
        format!("Peak {peak} of {quota}: the quota suffices.")
    }
}

pub fn leases(json: bool, leases: &[proto::Lease], answer: &impl Serialize) {
    let mut t = Table::new(&[
        "LEASE",
        "GENERATION",
        "PRODUCT",
        "EMAIL",
        "ENGINE",
        "HOST",
        "EXPIRES",
        "HEARTBEAT EVERY",
    ]);
    for lease in leases {
        t.row(vec![
            lease.lease_id.clone(),
            lease.generation.to_string(),
            product_name(lease.product).into(),
            lease.email.clone(),
            lease.engine_id.clone(),
            lease.hostname.clone(),
            time(lease.expires_at_unix_ms),
            format!("{} ms", lease.heartbeat_interval_ms),
        ]);
    }
    table(json, answer, t);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::json_shape;

    #[test]
    fn times_gain_an_rfc_3339_twin_and_generations_are_strings() {
        let answer = json!({
            "lease": {
                "lease_id": "ls_1",
                "generation": 18_446_744_073_709_551_615_u64,
                "expires_at_unix_ms": 1_000,
                "acquired_at_unix_ms": 0,
                "product": "kre",
            },
            "next_page_token": "",
        });
        let shaped = json_shape(answer);
        assert_eq!(
            shaped,
            json!({
                "lease": {
                    "lease_id": "ls_1",
                    "generation": "18446744073709551615",
                    "expires_at_unix_ms": 1_000,
                    "expires_at": "1970-01-01T00:00:01.000Z",
                    "acquired_at_unix_ms": 0,
                    "acquired_at": null,
                    "product": "kre",
                },
            })
        );
    }
}

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
}

fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(error) => eprintln!("error: cannot encode JSON: {error}"),
    }
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

fn product_name(value: i32) -> &'static str {
    match proto::Product::try_from(value) {
        Ok(proto::Product::Kse) => "KSE",
        Ok(proto::Product::Kre) => "KRE",
        _ => "?",
    }
}

fn role_name(value: i32) -> &'static str {
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

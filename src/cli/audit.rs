//! `seatbroker audit export`: pages through `ListAuditEvents` and writes the events
//! as CSV or JSON lines to standard output.

use std::borrow::Cow;
use std::io::Write;
use std::time::Duration;

use tonic::Status;

use super::commands::ExportFormat;
use super::time::parse_time;
use crate::client::Authorized;
use crate::limits;
use crate::proto::{self, admin_service_client::AdminServiceClient};

const CSV_HEADER: [&str; 12] = [
    "at_unix_ms",
    "time",
    "org_id",
    "kind",
    "product",
    "email",
    "lease_id",
    "generation",
    "engine_id",
    "actor",
    "detail",
    "client_cert",
];

/// The `[from, to)` range of the flags; absent ends are open (0).
pub fn range(from: Option<&str>, to: Option<&str>) -> Result<(i64, i64), String> {
    let from = from.map(parse_time).transpose()?.unwrap_or(0);
    let to = to.map(parse_time).transpose()?.unwrap_or(0);
    Ok((from, to))
}

/// A CSV field's text: a value a spreadsheet would run as a formula (one starting with
/// `=`, `+`, `-`, `@`, a tab or a carriage return, as OWASP's CSV injection advice
/// lists) gets a leading single quote, so it is shown as text. Quoting is the CSV
/// writer's.
fn neutralized(text: &str) -> Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{text}"))
    } else {
        Cow::Borrowed(text)
    }
}

fn product_name(value: i32) -> &'static str {
    match proto::Product::try_from(value) {
        Ok(proto::Product::Kse) => "KSE",
        Ok(proto::Product::Kre) => "KRE",
        _ => "",
    }
}

/// An event's CSV fields, in [`CSV_HEADER`]'s order, neutralized.
fn csv_record(event: &proto::AuditEvent) -> Vec<String> {
    let generation = if event.generation == 0 {
        String::new()
    } else {
        event.generation.to_string()
    };
    [
        event.at_unix_ms.to_string(),
        super::output::time(event.at_unix_ms),
        event.org_id.clone(),
        event.kind.clone(),
        product_name(event.product).to_owned(),
        event.email.clone(),
        event.lease_id.clone(),
        generation,
        event.engine_id.clone(),
        event.actor.clone(),
        event.detail.clone(),
        event.client_cert.clone(),
    ]
    .iter()
    .map(|field| neutralized(field).into_owned())
    .collect()
}

/// Where the events go: CSV records after a header, or JSON lines of the CLI's one
/// JSON shape.
enum EventWriter<W: Write> {
    Csv(Box<csv::Writer<W>>),
    Jsonl(W),
}

impl<W: Write> EventWriter<W> {
    fn new(out: W, format: ExportFormat) -> csv::Result<Self> {
        Ok(match format {
            ExportFormat::Csv => {
                let mut writer = csv::Writer::from_writer(out);
                writer.write_record(CSV_HEADER)?;
                EventWriter::Csv(Box::new(writer))
            }
            ExportFormat::Jsonl => EventWriter::Jsonl(out),
        })
    }

    fn write(&mut self, event: &proto::AuditEvent) -> csv::Result<()> {
        match self {
            EventWriter::Csv(writer) => writer.write_record(csv_record(event)),
            EventWriter::Jsonl(out) => {
                let value = serde_json::to_value(event).map_err(std::io::Error::other)?;
                let line = serde_json::to_string(&super::output::json_shape(value))
                    .map_err(std::io::Error::other)?;
                Ok(writeln!(out, "{line}")?)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            EventWriter::Csv(writer) => writer.flush(),
            EventWriter::Jsonl(out) => out.flush(),
        }
    }
}

/// Pages through the range with the daemon's page tokens, so every event of the range
/// is written exactly once.
pub async fn export(
    admin: &mut AdminServiceClient<Authorized>,
    call_timeout: Duration,
    org_id: String,
    (from, to): (i64, i64),
    format: ExportFormat,
) -> Result<(), Status> {
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let io = |e: csv::Error| Status::internal(format!("cannot write the export: {e}"));
    let mut out = EventWriter::new(stdout, format).map_err(io)?;
    let mut page_token = String::new();
    loop {
        let request = proto::ListAuditEventsRequest {
            org_id: org_id.clone(),
            from_unix_ms: from,
            to_unix_ms: to,
            limit: limits::AUDIT_EVENTS_PER_QUERY_MAX,
            page_token,
        };
        let page = super::client::within(call_timeout, admin.list_audit_events(request)).await?;
        for event in &page.events {
            out.write(event).map_err(io)?;
        }
        if !page.truncated {
            break;
        }
        if page.next_page_token.is_empty() {
            return Err(Status::internal(
                "the daemon cut the answer without a page token to continue from; it is older than this CLI",
            ));
        }
        page_token = page.next_page_token;
    }
    out.flush().map_err(|e| io(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One field as the CSV writer of the export writes it, without the line end.
    fn csv_field(text: &str) -> String {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record([neutralized(text).as_ref()]).unwrap();
        let line = String::from_utf8(writer.into_inner().unwrap()).unwrap();
        line.strip_suffix('\n').unwrap().to_owned()
    }

    #[test]
    fn csv_fields_with_commas_and_quotes_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn csv_fields_a_spreadsheet_would_run_as_formulas_are_neutralized() {
        for (value, field) in [
            ("=1+2", "'=1+2"),
            ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
            ("\t=1", "'\t=1"),
            ("\r=1", "\"'\r=1\""),
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"",
            ),
            ("name=\"a=b\"", "\"name=\"\"a=b\"\"\""),
            ("a-b@c", "a-b@c"),
        ] {
            assert_eq!(csv_field(value), field, "{value:?}");
        }
        // A whole record: a label made by a member cannot reach a spreadsheet as a formula.
        let event = proto::AuditEvent {
            at_unix_ms: 1_000,
            org_id: "acme".into(),
            kind: "api_key_created".into(),
            email: "a@acme.test".into(),
            actor: "a@acme.test".into(),
            detail: "=cmd".into(),
            ..Default::default()
        };
        let mut out = EventWriter::new(Vec::new(), ExportFormat::Csv).unwrap();
        out.write(&event).unwrap();
        out.flush().unwrap();
        let EventWriter::Csv(writer) = out else {
            unreachable!()
        };
        let text = String::from_utf8(writer.into_inner().unwrap()).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(CSV_HEADER.join(",").as_str()));
        let row = lines.next().unwrap();
        // The detail, then an empty client_cert (the call had no client certificate).
        assert!(row.ends_with(",a@acme.test,'=cmd,"), "{row}");
    }

    #[test]
    fn a_range_takes_dates_and_leaves_absent_ends_open() {
        assert_eq!(
            range(Some("2026-12-02"), None).unwrap(),
            (1_796_169_600_000, 0)
        );
        assert!(range(None, Some("yesterday")).is_err());
    }
}

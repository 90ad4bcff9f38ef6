//! `seatbroker status`: what each address of `--addr` is, for an operator or a script
//! checking a node or a cluster. For each address: whether it answers; its phase
//! (serving, a standby naming the leader, starting, draining), read from a broker call
//! made without a key, which the daemon's phase gate answers before authentication
//! (`telemetry::rpc::refused_in_phase`), or why it refused this client's TLS
//! (`client::explain_refusal`); and the gRPC health of the server and of each broker
//! service. Needs no key. Exits 0 when an address serves, 75 (retry later) when
//! none does.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use tonic::Status;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::client::{open_channel, within};
use super::commands::ClientArgs;
use super::failure::{EXIT_RETRY_LATER, Failure};
use super::output::{self, Table};
use crate::client::{self, BearerKey};
use crate::proto;
use crate::telemetry::rpc::{Phase, refused_in_phase};

/// The services whose health is shown: the whole server, then each broker service.
const SERVICES: [&str; 3] = [
    "",
    "seatbroker.v1.SessionService",
    "seatbroker.v1.AdminService",
];

/// What an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Role {
    /// It serves broker calls: a single node, or a cluster's leader.
    Serving,
    /// A standby of a cluster (naming the leader once it knows one).
    Standby,
    /// Recovering its log.
    Starting,
    /// Shutting down.
    Draining,
    /// No connection could be made.
    Unreachable,
    /// It refused this client's TLS (its certificate, or its absence, or TLS spoken
    /// to a plaintext daemon and the reverse): the reason is in `error`.
    Refused,
    /// Connected, but the broker call found none of the above.
    Unanswered,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Serving => "serving",
            Role::Standby => "standby",
            Role::Starting => "starting",
            Role::Draining => "draining",
            Role::Unreachable => "unreachable",
            Role::Refused => "refused",
            Role::Unanswered => "unanswered",
        }
    }
}

/// What one address is, and its health.
#[derive(Debug, Serialize)]
struct NodeStatus {
    address: String,
    role: Role,
    /// The leader a standby names.
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<String>,
    /// Each service's health (`SERVING`, `NOT_SERVING`, ...), by service name (`""` is
    /// the whole server).
    health: Vec<ServiceHealth>,
    /// Why the address could not be asked, or what it answered instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct ServiceHealth {
    service: &'static str,
    status: String,
}

#[derive(Serialize)]
struct StatusAnswer<'a> {
    nodes: &'a [NodeStatus],
    /// The address that serves broker calls, if one does.
    serving: Option<&'a str>,
}

/// Asks every address of `--addr` and prints what each is, in the order given.
pub async fn status(args: &ClientArgs) -> ExitCode {
    let addrs = args.addrs();
    if addrs.is_empty() {
        let failure = Failure::Usage("--addr names no address".into());
        output::failure(args.json, &failure);
        return ExitCode::from(failure.exit_code());
    }
    // Every address at once, so that silent ones cost one timeout in all, not one each.
    let mut asking = tokio::task::JoinSet::new();
    for (index, addr) in addrs.into_iter().enumerate() {
        let args = args.clone();
        asking.spawn(async move {
            let answer = node_status(&args, &addr).await;
            (index, addr, answer)
        });
    }
    let mut answers = asking.join_all().await;
    answers.sort_by_key(|(index, _, _)| *index);
    let mut nodes = Vec::with_capacity(answers.len());
    for (_, addr, answer) in answers {
        match answer {
            Ok(node) => nodes.push(node),
            // A configuration error (TLS files, an address that does not parse) is
            // the command's own: no other address would fare better.
            Err(failure @ (Failure::Configuration(_) | Failure::Usage(_))) => {
                output::failure(args.json, &failure);
                return ExitCode::from(failure.exit_code());
            }
            Err(failure) => nodes.push(NodeStatus {
                address: addr,
                role: Role::Unreachable,
                leader: None,
                health: Vec::new(),
                error: Some(failure.message()),
            }),
        }
    }
    let serving = nodes
        .iter()
        .find(|node| node.role == Role::Serving)
        .map(|node| node.address.as_str());
    print(args.json, &nodes, serving);
    match serving {
        Some(_) => ExitCode::SUCCESS,
        None => ExitCode::from(EXIT_RETRY_LATER),
    }
}

/// One address: connected within `--connect-timeout`, then its questions asked at
/// once, each answered within `--timeout`.
async fn node_status(args: &ClientArgs, addr: &str) -> Result<NodeStatus, Failure> {
    let channel = open_channel(args, addr).await?;
    let health_of = |service: &'static str| {
        let channel = channel.clone();
        async move {
            ServiceHealth {
                service,
                status: service_health(channel, service, args.timeout).await,
            }
        }
    };
    let [server, sessions, admin] = SERVICES;
    let (phase, server, sessions, admin) = tokio::join!(
        phase(channel.clone(), args.timeout),
        health_of(server),
        health_of(sessions),
        health_of(admin)
    );
    let health = vec![server, sessions, admin];
    let (role, leader, error) = match phase {
        Ok((role, leader)) => (role, leader, None),
        // A connection closed at the first call may be the daemon refusing this
        // client's TLS, which only a handshake of our own can tell (as for the other
        // commands).
        Err(status) => match client::explain_refusal(addr, &args.tls_files(), &status).await {
            Some(cause) => (Role::Refused, None, Some(cause)),
            None => {
                let code = client::code_name(status.code());
                let error = format!("{code}: {}", status.message());
                (Role::Unanswered, None, Some(error))
            }
        },
    };
    Ok(NodeStatus {
        address: addr.to_owned(),
        role,
        leader,
        health,
        error,
    })
}

/// The phase a keyless broker call finds: refused UNAUTHENTICATED, the daemon serves
/// (it authenticates only once it serves); refused UNAVAILABLE by the phase gate, the
/// phase it names (and the leader a standby names). Any other answer is returned.
async fn phase(channel: Channel, timeout: Duration) -> Result<(Role, Option<String>), Status> {
    let mut admin = client::admin(channel, BearerKey::new(None).expect("no key is sendable"));
    let request = proto::ListOrganizationsRequest {
        page_size: 1,
        ..Default::default()
    };
    let status = match within(timeout, admin.list_organizations(request)).await {
        Ok(_) => return Ok((Role::Serving, None)),
        Err(status) => status,
    };
    if matches!(
        status.code(),
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    ) {
        return Ok((Role::Serving, None));
    }
    match refused_in_phase(&status) {
        Some((Phase::Standby, leader)) => Ok((Role::Standby, leader)),
        Some((Phase::Starting, _)) => Ok((Role::Starting, None)),
        Some((Phase::Draining, _)) => Ok((Role::Draining, None)),
        Some((Phase::Serving, _)) => Ok((Role::Serving, None)),
        None => Err(status),
    }
}

/// A service's health status by name, or what went wrong asking.
async fn service_health(channel: Channel, service: &str, timeout: Duration) -> String {
    let request = HealthCheckRequest {
        service: service.into(),
    };
    match within(timeout, HealthClient::new(channel).check(request)).await {
        Ok(answer) => {
            tonic_health::pb::health_check_response::ServingStatus::try_from(answer.status)
                .map_or_else(
                    |_| answer.status.to_string(),
                    |status| status.as_str_name().to_owned(),
                )
        }
        Err(status) => client::code_name(status.code()).to_owned(),
    }
}

/// A row per address, then what went wrong at each address that has an error; or one
/// JSON object.
fn print(json: bool, nodes: &[NodeStatus], serving: Option<&str>) {
    let mut table = Table::new(&["ADDRESS", "ROLE", "LEADER", "SERVER", "SESSION", "ADMIN"]);
    for node in nodes {
        let health = |index: usize| {
            node.health
                .get(index)
                .map_or_else(|| "-".to_owned(), |h| h.status.clone())
        };
        table.row(vec![
            node.address.clone(),
            node.role.name().into(),
            node.leader.clone().unwrap_or_else(|| "-".into()),
            health(0),
            health(1),
            health(2),
        ]);
    }
    output::table(json, &StatusAnswer { nodes, serving }, table);
    if !json {
        for node in nodes {
            if let Some(error) = &node.error {
                println!("{}: {error}", node.address);
            }
        }
    }
}

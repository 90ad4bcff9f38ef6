//! Provisioning on the broker, with the operator key, before a run: organizations
//! `bench-<run>-<i>`, members `engine<j>@bench.example`, KRE assigned to every member
//! (at most `EMAILS_PER_REQUEST_MAX` emails per call), and one API key per member.
//! Member `m` belongs to organization `m % orgs` as `engine<m / orgs>`; engine `g`
//! acts as member `g % members` with that member's key (one member per engine by
//! default; fewer members make engines share a user, each with its own KRE
//! session). Nothing is deleted afterwards (the API has no call for it); fresh run
//! ids keep runs apart.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tonic::Status;
use tonic::transport::Channel;

use crate::client::{Authorized, BearerKey};
use crate::limits::{EMAILS_PER_REQUEST_MAX, ORG_ID_BYTES_MAX};
use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::{AcquireRequest, Product, Quota, Role};

use super::bounds::{SETUP_IN_FLIGHT_MAX, SETUP_MS_MAX};
use super::channels::{self, bearer};
use super::error::LoadgenError;
use super::provision;

/// Where engines live: the names of organizations and members of one run.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub run_id: String,
    pub orgs: u32,
    pub engines: u32,
    /// At least `orgs`, at most `engines`.
    pub members: u32,
}

impl Layout {
    pub(crate) fn org_id(&self, org: u32) -> String {
        let id = format!("bench-{}-{org}", self.run_id);
        debug_assert!(id.len() <= ORG_ID_BYTES_MAX);
        id
    }

    /// The member engine `engine` acts as.
    pub(crate) fn member_of(&self, engine: u32) -> u32 {
        engine % self.members
    }

    /// The organization engine `engine` holds its session in.
    pub(crate) fn org_of(&self, engine: u32) -> u32 {
        self.member_org(self.member_of(engine))
    }

    /// The engine id engine `engine` presents; it names the engine's lease, so an
    /// engine that acquires again finds its lease.
    pub(crate) fn engine_id(&self, engine: u32) -> String {
        format!("bench-{}-engine-{engine}", self.run_id)
    }

    /// The member engine `engine` adds and removes in the `admin` workload: its own,
    /// apart from the provisioned members and from other runs'.
    pub(crate) fn admin_email(&self, engine: u32) -> String {
        format!("admin{engine}-{}@bench.example", self.run_id)
    }

    /// The hostname engine `engine` reports (256 hosts, as engines share machines).
    pub(crate) fn engine_hostname(engine: u32) -> String {
        format!("bench-host-{:03}", engine % 256)
    }

    #[cfg(test)]
    fn email_of(&self, engine: u32) -> String {
        self.member_email(self.member_of(engine))
    }

    fn member_org(&self, member: u32) -> u32 {
        member % self.orgs
    }

    fn member_email(&self, member: u32) -> String {
        format!("engine{}@bench.example", member / self.orgs)
    }

    fn members_of(&self, org: u32) -> impl Iterator<Item = u32> + '_ {
        (org..self.members).step_by(self.orgs as usize)
    }
}

/// The request an engine sends for its KRE session: one spelling for every workload,
/// so that a retried acquire is the same request as the first.
pub(crate) fn kre_acquire_request(engine_id: String, hostname: String) -> AcquireRequest {
    AcquireRequest {
        product: Product::Kre as i32,
        engine_id,
        hostname,
        label: "seatbroker-bench".to_owned(),
        wait_ms: 0,
    }
}

/// Admin calls made with the operator key.
type Admin = AdminServiceClient<Authorized>;

/// Creates everything the engines need and returns each engine's key, indexed by
/// engine.
pub(crate) async fn provision(
    channel: Channel,
    operator_key: &str,
    layout: &Layout,
    quota: u32,
) -> Result<Vec<BearerKey>, LoadgenError> {
    let member_keys = provision_members(channel, operator_key, layout, quota).await?;
    // Cloning a `BearerKey` shares its bytes: engines of one member share one key.
    Ok((0..layout.engines)
        .map(|engine| member_keys[layout.member_of(engine) as usize].clone())
        .collect())
}

/// Creates everything the engines need and returns each member's key, indexed by
/// member (engine `g` uses member `layout.member_of(g)`'s).
pub(crate) async fn provision_members(
    channel: Channel,
    operator_key: &str,
    layout: &Layout,
    quota: u32,
) -> Result<Vec<BearerKey>, LoadgenError> {
    let admin = channels::admin(&channel, &bearer(operator_key)?);
    let steps = async {
        create_organizations(&admin, layout, quota).await?;
        add_members(&admin, layout).await?;
        assign_licenses(&admin, layout).await?;
        create_api_keys(&admin, layout).await
    };
    tokio::time::timeout(Duration::from_millis(SETUP_MS_MAX), steps)
        .await
        .map_err(|_| LoadgenError::SetupTimeout)?
}

async fn create_organizations(
    admin: &Admin,
    layout: &Layout,
    quota: u32,
) -> Result<(), LoadgenError> {
    let requests = (0..layout.orgs).map(|org| provision::NewOrganization {
        org_id: layout.org_id(org),
        display_name: format!("seatbroker bench {} #{org}", layout.run_id),
        owner_email: "owner@bench.example".to_owned(),
        quota: Quota {
            kse_seats: 0,
            kre_sessions: quota,
            expires_at_unix_ms: 0,
        },
    });
    for_each_bounded("CreateOrganization", requests.collect(), |organization| {
        let mut admin = admin.clone();
        async move { provision::create_organization(&mut admin, organization).await }
    })
    .await
    .map(drop)
}

async fn add_members(admin: &Admin, layout: &Layout) -> Result<(), LoadgenError> {
    let members = (0..layout.members).map(|member| {
        let org_id = layout.org_id(layout.member_org(member));
        (org_id, layout.member_email(member))
    });
    for_each_bounded("AddMember", members.collect(), |(org_id, email)| {
        let mut admin = admin.clone();
        async move {
            provision::add_member(&mut admin, &org_id, &email, Role::Member)
                .await
                .map(drop)
        }
    })
    .await
    .map(drop)
}

async fn assign_licenses(admin: &Admin, layout: &Layout) -> Result<(), LoadgenError> {
    let mut requests = Vec::new();
    for org in 0..layout.orgs {
        let emails: Vec<String> = layout
            .members_of(org)
            .map(|member| layout.member_email(member))
            .collect();
        for chunk in emails.chunks(EMAILS_PER_REQUEST_MAX) {
            requests.push((layout.org_id(org), chunk.to_vec()));
        }
    }
    for_each_bounded("AssignLicenses", requests, |(org_id, emails)| {
        let mut admin = admin.clone();
        async move {
            provision::assign(&mut admin, &org_id, Product::Kre, emails)
                .await
                .map(drop)
        }
    })
    .await
    .map(drop)
}

async fn create_api_keys(admin: &Admin, layout: &Layout) -> Result<Vec<BearerKey>, LoadgenError> {
    let members = (0..layout.members).map(|member| {
        let org_id = layout.org_id(layout.member_org(member));
        (org_id, layout.member_email(member))
    });
    let label = format!("bench {}", layout.run_id);
    let secrets = for_each_bounded("CreateApiKey", members.collect(), |(org_id, email)| {
        let mut admin = admin.clone();
        let label = label.clone();
        async move { provision::create_api_key(&mut admin, &org_id, &email, &label).await }
    })
    .await?;
    secrets.iter().map(|secret| bearer(secret)).collect()
}

/// Runs `call` on every item with at most `SETUP_IN_FLIGHT_MAX` outstanding, and
/// returns the results in item order; the first failure stops the step.
async fn for_each_bounded<T, R, F, Fut>(
    step: &'static str,
    items: Vec<T>,
    call: F,
) -> Result<Vec<R>, LoadgenError>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<R, Status>> + Send + 'static,
    R: Send + 'static,
{
    let mut results: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    let mut pending = items.into_iter().enumerate();
    let mut running = JoinSet::new();
    loop {
        while running.len() < SETUP_IN_FLIGHT_MAX {
            let Some((index, item)) = pending.next() else {
                break;
            };
            let call = call(item);
            running.spawn(async move { (index, call.await) });
        }
        let Some(joined) = running.join_next().await else {
            break;
        };
        let (index, result) =
            joined.map_err(|e| LoadgenError::Internal(format!("setup task: {e}")))?;
        results[index] = Some(result.map_err(|status| LoadgenError::setup(step, status))?);
    }
    results
        .into_iter()
        .collect::<Option<Vec<R>>>()
        .ok_or_else(|| LoadgenError::Internal(format!("{step}: a result is missing")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_spread_over_organizations() {
        let layout = Layout {
            run_id: "abcdef12".into(),
            orgs: 3,
            engines: 10,
            members: 10,
        };
        assert_eq!(layout.org_id(2), "bench-abcdef12-2");
        assert_eq!(layout.members_of(0).collect::<Vec<_>>(), [0, 3, 6, 9]);
        assert_eq!(layout.members_of(2).collect::<Vec<_>>(), [2, 5, 8]);
        assert_eq!(
            (layout.org_of(7), layout.email_of(7)),
            (1, "engine2@bench.example".to_owned())
        );
        let total: usize = (0..3).map(|org| layout.members_of(org).count()).sum();
        assert_eq!(total, 10);
    }

    #[test]
    fn engines_share_fewer_members_within_their_organization() {
        let layout = Layout {
            run_id: "abcdef12".into(),
            orgs: 2,
            engines: 10,
            members: 4,
        };
        let total: usize = (0..2).map(|org| layout.members_of(org).count()).sum();
        assert_eq!(total, 4);
        for engine in 0..10 {
            let member = layout.member_of(engine);
            assert!(member < 4);
            // The member's organization is the engine's: its key is valid there.
            assert_eq!(layout.org_of(engine), member % 2);
            assert_eq!(layout.email_of(engine), layout.member_email(member));
        }
        assert_eq!(
            layout.email_of(1),
            layout.email_of(5),
            "engines 1 and 5 share"
        );
    }
}

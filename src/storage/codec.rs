//! The log and snapshot record formats: prost messages defined here, apart from the
//! wire API, so the API can change without changing what is on disk. Field numbers
//! are forever: add fields, never renumber. Decoding re-validates every value, so a
//! record that decodes is as well-formed as one that came through the API.

use prost::Message;

use crate::domain::{
    AdminState, ApiKeyId, ApiKeyRecord, Command, Email, OrgId, Organization, Product, Quota,
    QuotaUpdate, Role,
};
use crate::domain::{Lease, LeaseId};
use crate::leases::LeaseRef;

/// One record of the log.
#[derive(Clone, PartialEq, Message)]
pub struct LogRecord {
    #[prost(oneof = "LogBody", tags = "1, 2, 3, 4, 5")]
    pub body: Option<LogBody>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum LogBody {
    /// An admin command as the first format wrote it (read, never written).
    #[prost(message, tag = "1")]
    LegacyAdmin(legacy::AdminRecord),
    #[prost(message, tag = "2")]
    LeaseGranted(LeaseRecord),
    #[prost(message, tag = "3")]
    LeaseEnded(LeaseEndRecord),
    #[prost(message, tag = "4")]
    Boot(BootRecord),
    #[prost(message, tag = "5")]
    Command(CommandRecord),
}

/// An admin command: one message per kind of command, so that encoding and decoding
/// are exhaustive matches and a new command cannot be half stored.
#[derive(Clone, PartialEq, Message)]
pub struct CommandRecord {
    #[prost(string, tag = "1")]
    pub org: String,
    #[prost(
        oneof = "CommandBody",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15"
    )]
    pub body: Option<CommandBody>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum CommandBody {
    #[prost(message, tag = "2")]
    CreateOrganization(NewOrganizationRecord),
    #[prost(message, tag = "3")]
    SetQuota(QuotaRecord),
    #[prost(message, tag = "4")]
    AddMember(MemberRecord),
    #[prost(message, tag = "5")]
    RemoveMember(EmailRecord),
    #[prost(message, tag = "6")]
    SetRole(MemberRecord),
    #[prost(message, tag = "7")]
    AssignLicenses(LicensesRecord),
    #[prost(message, tag = "8")]
    UnassignLicenses(LicensesRecord),
    #[prost(message, tag = "9")]
    TransferLicense(TransferRecord),
    #[prost(message, tag = "10")]
    CreateApiKey(StoredApiKey),
    #[prost(message, tag = "11")]
    RevokeApiKey(KeyIdRecord),
    #[prost(message, tag = "12")]
    RenameOrganization(DisplayNameRecord),
    /// Holds nothing but its kind: the organization is the record's.
    #[prost(message, tag = "13")]
    DeleteOrganization(OrganizationDeletedRecord),
    #[prost(message, tag = "15")]
    UpdateQuota(QuotaUpdateRecord),
}

#[derive(Clone, PartialEq, Message)]
pub struct DisplayNameRecord {
    #[prost(string, tag = "1")]
    pub display_name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct OrganizationDeletedRecord {}

#[derive(Clone, PartialEq, Message)]
pub struct NewOrganizationRecord {
    #[prost(string, tag = "1")]
    pub display_name: String,
    #[prost(string, tag = "2")]
    pub owner: String,
    #[prost(message, optional, tag = "3")]
    pub quota: Option<QuotaRecord>,
}

#[derive(Clone, PartialEq, Message)]
pub struct EmailRecord {
    #[prost(string, tag = "1")]
    pub email: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct LicensesRecord {
    #[prost(int32, tag = "1")]
    pub product: i32,
    #[prost(string, repeated, tag = "2")]
    pub emails: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TransferRecord {
    #[prost(int32, tag = "1")]
    pub product: i32,
    #[prost(string, tag = "2")]
    pub from: String,
    #[prost(string, tag = "3")]
    pub to: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyIdRecord {
    #[prost(string, tag = "1")]
    pub key_id: String,
}

/// An API key, in a `CreateApiKey` command and in a snapshot. Its field numbers are
/// those of the first format's flattened admin record, whose API-key fields snapshots
/// held, so the snapshots of that format load as they are.
#[derive(Clone, PartialEq, Message)]
pub struct StoredApiKey {
    #[prost(string, tag = "4")]
    pub email: String,
    #[prost(string, tag = "10")]
    pub key_id: String,
    #[prost(string, tag = "11")]
    pub label: String,
    #[prost(bytes = "vec", tag = "12")]
    pub secret_sha256: Vec<u8>,
    #[prost(int64, tag = "13")]
    pub created_at_unix_ms: i64,
    /// The client certificate subject the key is bound to (none in the first format).
    #[prost(string, optional, tag = "14")]
    pub client_cert_subject: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct QuotaRecord {
    #[prost(uint32, tag = "1")]
    pub kse_seats: u32,
    #[prost(uint32, tag = "2")]
    pub kre_sessions: u32,
    #[prost(int64, tag = "3")]
    pub expires_at_unix_ms: i64,
}

/// A partial quota update: an absent field keeps the quota's value; an expiry of 0
/// removes it.
#[derive(Clone, PartialEq, Message)]
pub struct QuotaUpdateRecord {
    #[prost(uint32, optional, tag = "1")]
    pub kse_seats: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pub kre_sessions: Option<u32>,
    #[prost(int64, optional, tag = "3")]
    pub expires_at_unix_ms: Option<i64>,
}

/// A granted lease (also the form of a live lease in a snapshot).
#[derive(Clone, PartialEq, Message)]
pub struct LeaseRecord {
    #[prost(string, tag = "1")]
    pub org: String,
    #[prost(bytes = "vec", tag = "2")]
    pub lease_id: Vec<u8>,
    #[prost(uint64, tag = "3")]
    pub generation: u64,
    #[prost(int32, tag = "4")]
    pub product: i32,
    #[prost(string, tag = "5")]
    pub email: String,
    #[prost(string, tag = "6")]
    pub engine_id: String,
    #[prost(string, tag = "7")]
    pub hostname: String,
    #[prost(string, tag = "8")]
    pub label: String,
    #[prost(int64, tag = "9")]
    pub acquired_at_unix_ms: i64,
}

/// A lease that ended: released, expired or terminated.
#[derive(Clone, PartialEq, Message)]
pub struct LeaseEndRecord {
    #[prost(string, tag = "1")]
    pub org: String,
    #[prost(bytes = "vec", tag = "2")]
    pub lease_id: Vec<u8>,
    #[prost(uint64, tag = "3")]
    pub generation: u64,
}

/// A start of the daemon: generations of this boot carry `epoch` in their high bits.
#[derive(Clone, PartialEq, Message)]
pub struct BootRecord {
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
}

/// The whole state at one point of the log.
#[derive(Clone, PartialEq, Message)]
pub struct SnapshotRecord {
    #[prost(message, repeated, tag = "1")]
    pub organizations: Vec<OrganizationRecord>,
    #[prost(message, repeated, tag = "2")]
    pub leases: Vec<LeaseRecord>,
    #[prost(uint64, tag = "3")]
    pub boot_epoch: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct OrganizationRecord {
    #[prost(string, tag = "1")]
    pub org: String,
    #[prost(string, tag = "2")]
    pub display_name: String,
    #[prost(message, optional, tag = "3")]
    pub quota: Option<QuotaRecord>,
    #[prost(message, repeated, tag = "4")]
    pub members: Vec<MemberRecord>,
    #[prost(string, repeated, tag = "5")]
    pub kse_assigned: Vec<String>,
    #[prost(string, repeated, tag = "6")]
    pub kre_assigned: Vec<String>,
    #[prost(message, repeated, tag = "7")]
    pub api_keys: Vec<StoredApiKey>,
}

#[derive(Clone, PartialEq, Message)]
pub struct MemberRecord {
    #[prost(string, tag = "1")]
    pub email: String,
    #[prost(int32, tag = "2")]
    pub role: i32,
}

/// A record that does not decode into valid domain values.
#[derive(Debug, thiserror::Error)]
#[error("undecodable {what}: {detail}")]
pub struct DecodeError {
    pub what: &'static str,
    pub detail: String,
}

fn bad(what: &'static str, detail: impl ToString) -> DecodeError {
    DecodeError {
        what,
        detail: detail.to_string(),
    }
}

fn product_code(product: Product) -> i32 {
    match product {
        Product::Kse => 1,
        Product::Kre => 2,
    }
}

pub(crate) fn product_from(code: i32) -> Result<Product, DecodeError> {
    match code {
        1 => Ok(Product::Kse),
        2 => Ok(Product::Kre),
        other => Err(bad("product", other)),
    }
}

fn role_code(role: Role) -> i32 {
    match role {
        Role::Owner => 1,
        Role::Admin => 2,
        Role::Member => 3,
    }
}

fn role_from(code: i32) -> Result<Role, DecodeError> {
    match code {
        1 => Ok(Role::Owner),
        2 => Ok(Role::Admin),
        3 => Ok(Role::Member),
        other => Err(bad("role", other)),
    }
}

fn quota_record(quota: Quota) -> QuotaRecord {
    QuotaRecord {
        kse_seats: quota.kse_seats,
        kre_sessions: quota.kre_sessions,
        expires_at_unix_ms: quota.expires_at_unix_ms.unwrap_or(0),
    }
}

fn quota_update_record(update: QuotaUpdate) -> QuotaUpdateRecord {
    QuotaUpdateRecord {
        kse_seats: update.kse_seats,
        kre_sessions: update.kre_sessions,
        expires_at_unix_ms: update.expires_at_unix_ms.map(|at| at.unwrap_or(0)),
    }
}

fn quota_update_from(record: &QuotaUpdateRecord) -> Result<QuotaUpdate, DecodeError> {
    QuotaUpdate {
        kse_seats: record.kse_seats,
        kre_sessions: record.kre_sessions,
        expires_at_unix_ms: record.expires_at_unix_ms.map(|at| (at != 0).then_some(at)),
    }
    .validate()
    .map_err(|e| bad("quota update", e))
}

fn quota_from(record: Option<&QuotaRecord>) -> Result<Quota, DecodeError> {
    let record = record.ok_or_else(|| bad("quota", "missing"))?;
    Quota {
        kse_seats: record.kse_seats,
        kre_sessions: record.kre_sessions,
        expires_at_unix_ms: (record.expires_at_unix_ms != 0).then_some(record.expires_at_unix_ms),
    }
    .validate()
    .map_err(|e| bad("quota", e))
}

pub(crate) fn org_from(text: &str) -> Result<OrgId, DecodeError> {
    OrgId::parse(text).map_err(|e| bad("organization id", e))
}

pub(crate) fn email_from(text: &str) -> Result<Email, DecodeError> {
    // Kept as stored: recovery rebuilds what an older version acknowledged, whatever
    // today's normalization of new input says.
    Email::from_stored(text).map_err(|e| bad("email", e))
}

fn emails_from(texts: &[String]) -> Result<Vec<Email>, DecodeError> {
    texts.iter().map(|t| email_from(t)).collect()
}

fn strings(emails: &[Email]) -> Vec<String> {
    emails.iter().map(ToString::to_string).collect()
}

/// Encodes an admin command as a log record.
pub fn encode_command(command: &Command) -> Vec<u8> {
    LogRecord {
        body: Some(LogBody::Command(CommandRecord {
            org: command.org().to_string(),
            body: Some(command_body(command)),
        })),
    }
    .encode_to_vec()
}

fn command_body(command: &Command) -> CommandBody {
    match command {
        Command::CreateOrganization {
            display_name,
            owner,
            quota,
            ..
        } => CommandBody::CreateOrganization(NewOrganizationRecord {
            display_name: display_name.clone(),
            owner: owner.to_string(),
            quota: Some(quota_record(*quota)),
        }),
        Command::SetQuota { quota, .. } => CommandBody::SetQuota(quota_record(*quota)),
        Command::UpdateQuota { update, .. } => {
            CommandBody::UpdateQuota(quota_update_record(*update))
        }
        Command::AddMember { email, role, .. } => {
            CommandBody::AddMember(member_record(email, *role))
        }
        Command::RemoveMember { email, .. } => CommandBody::RemoveMember(EmailRecord {
            email: email.to_string(),
        }),
        Command::SetRole { email, role, .. } => CommandBody::SetRole(member_record(email, *role)),
        Command::AssignLicenses {
            product, emails, ..
        } => CommandBody::AssignLicenses(licenses_record(*product, emails)),
        Command::UnassignLicenses {
            product, emails, ..
        } => CommandBody::UnassignLicenses(licenses_record(*product, emails)),
        Command::TransferLicense {
            product, from, to, ..
        } => CommandBody::TransferLicense(TransferRecord {
            product: product_code(*product),
            from: from.to_string(),
            to: to.to_string(),
        }),
        Command::CreateApiKey {
            key_id,
            email,
            label,
            secret_sha256,
            created_at_unix_ms,
            client_cert_subject,
            ..
        } => CommandBody::CreateApiKey(StoredApiKey {
            email: email.to_string(),
            key_id: key_id.to_string(),
            label: label.clone(),
            secret_sha256: secret_sha256.to_vec(),
            created_at_unix_ms: *created_at_unix_ms,
            client_cert_subject: client_cert_subject.clone(),
        }),
        Command::RevokeApiKey { key_id, .. } => CommandBody::RevokeApiKey(KeyIdRecord {
            key_id: key_id.to_string(),
        }),
        Command::RenameOrganization { display_name, .. } => {
            CommandBody::RenameOrganization(DisplayNameRecord {
                display_name: display_name.clone(),
            })
        }
        Command::DeleteOrganization { .. } => {
            CommandBody::DeleteOrganization(OrganizationDeletedRecord {})
        }
    }
}

fn member_record(email: &Email, role: Role) -> MemberRecord {
    MemberRecord {
        email: email.to_string(),
        role: role_code(role),
    }
}

fn licenses_record(product: Product, emails: &[Email]) -> LicensesRecord {
    LicensesRecord {
        product: product_code(product),
        emails: strings(emails),
    }
}

/// Decodes an admin record back into the command it was made from.
pub fn decode_command(record: &CommandRecord) -> Result<Command, DecodeError> {
    let org = org_from(&record.org)?;
    let body = record
        .body
        .as_ref()
        .ok_or_else(|| bad("admin command", "empty"))?;
    let command = match body {
        CommandBody::CreateOrganization(new) => Command::CreateOrganization {
            org,
            display_name: new.display_name.clone(),
            owner: email_from(&new.owner)?,
            quota: quota_from(new.quota.as_ref())?,
        },
        CommandBody::SetQuota(quota) => Command::SetQuota {
            org,
            quota: quota_from(Some(quota))?,
        },
        CommandBody::UpdateQuota(update) => Command::UpdateQuota {
            org,
            update: quota_update_from(update)?,
        },
        CommandBody::AddMember(member) => Command::AddMember {
            org,
            email: email_from(&member.email)?,
            role: role_from(member.role)?,
        },
        CommandBody::RemoveMember(member) => Command::RemoveMember {
            org,
            email: email_from(&member.email)?,
        },
        CommandBody::SetRole(member) => Command::SetRole {
            org,
            email: email_from(&member.email)?,
            role: role_from(member.role)?,
        },
        CommandBody::AssignLicenses(licenses) => Command::AssignLicenses {
            org,
            product: product_from(licenses.product)?,
            emails: emails_from(&licenses.emails)?,
        },
        CommandBody::UnassignLicenses(licenses) => Command::UnassignLicenses {
            org,
            product: product_from(licenses.product)?,
            emails: emails_from(&licenses.emails)?,
        },
        CommandBody::TransferLicense(transfer) => Command::TransferLicense {
            org,
            product: product_from(transfer.product)?,
            from: email_from(&transfer.from)?,
            to: email_from(&transfer.to)?,
        },
        CommandBody::CreateApiKey(key) => {
            let key = api_key_from(key)?;
            Command::CreateApiKey {
                org,
                key_id: key.id,
                email: key.email,
                label: key.label,
                secret_sha256: key.secret_sha256,
                created_at_unix_ms: key.created_at_unix_ms,
                client_cert_subject: key.client_cert_subject,
            }
        }
        CommandBody::RevokeApiKey(key) => Command::RevokeApiKey {
            org,
            key_id: ApiKeyId(key.key_id.as_str().into()),
        },
        CommandBody::RenameOrganization(name) => Command::RenameOrganization {
            org,
            display_name: name.display_name.clone(),
        },
        CommandBody::DeleteOrganization(OrganizationDeletedRecord {}) => {
            Command::DeleteOrganization { org }
        }
    };
    Ok(command)
}

fn api_key_from(record: &StoredApiKey) -> Result<ApiKeyRecord, DecodeError> {
    Ok(ApiKeyRecord {
        id: ApiKeyId(record.key_id.as_str().into()),
        email: email_from(&record.email)?,
        label: record.label.clone(),
        secret_sha256: record
            .secret_sha256
            .as_slice()
            .try_into()
            .map_err(|_| bad("API key hash", "not 32 bytes"))?,
        created_at_unix_ms: record.created_at_unix_ms,
        client_cert_subject: record
            .client_cert_subject
            .as_deref()
            .map(client_cert_subject_from)
            .transpose()?,
    })
}

/// A stored key's client certificate subject, held to the bounds of a new one.
fn client_cert_subject_from(subject: &str) -> Result<String, DecodeError> {
    crate::domain::check_client_cert_subject(subject)
        .map_err(|error| bad("API key client certificate subject", error))?;
    Ok(subject.to_owned())
}

fn lease_id_bytes(id: LeaseId) -> Vec<u8> {
    id.0.to_be_bytes().to_vec()
}

pub fn lease_id_from(bytes: &[u8]) -> Result<LeaseId, DecodeError> {
    let array: [u8; 16] = bytes
        .try_into()
        .map_err(|_| bad("lease id", "not 16 bytes"))?;
    Ok(LeaseId(u128::from_be_bytes(array)))
}

pub fn lease_record(org: &OrgId, lease: &Lease) -> LeaseRecord {
    LeaseRecord {
        org: org.to_string(),
        lease_id: lease_id_bytes(lease.id),
        generation: lease.generation,
        product: product_code(lease.product),
        email: lease.email.to_string(),
        engine_id: lease.engine_id.to_string(),
        hostname: lease.hostname.to_string(),
        label: lease.label.to_string(),
        acquired_at_unix_ms: lease.acquired_at_unix_ms,
    }
}

/// A lease as recovered: every field but the deadline, which recovery sets.
pub struct RecoveredLease {
    pub org: OrgId,
    pub id: LeaseId,
    pub generation: u64,
    pub product: Product,
    pub email: Email,
    pub engine_id: String,
    pub hostname: String,
    pub label: String,
    pub acquired_at_unix_ms: i64,
}

pub fn lease_from(record: &LeaseRecord) -> Result<RecoveredLease, DecodeError> {
    Ok(RecoveredLease {
        org: org_from(&record.org)?,
        id: lease_id_from(&record.lease_id)?,
        generation: record.generation,
        product: product_from(record.product)?,
        email: email_from(&record.email)?,
        engine_id: record.engine_id.clone(),
        hostname: record.hostname.clone(),
        label: record.label.clone(),
        acquired_at_unix_ms: record.acquired_at_unix_ms,
    })
}

pub fn encode_lease_granted(org: &OrgId, lease: &Lease) -> Vec<u8> {
    LogRecord {
        body: Some(LogBody::LeaseGranted(lease_record(org, lease))),
    }
    .encode_to_vec()
}

pub fn encode_lease_ended(org: &OrgId, id: LeaseId, generation: u64) -> Vec<u8> {
    LogRecord {
        body: Some(LogBody::LeaseEnded(LeaseEndRecord {
            org: org.to_string(),
            lease_id: lease_id_bytes(id),
            generation,
        })),
    }
    .encode_to_vec()
}

pub fn encode_boot(epoch: u64) -> Vec<u8> {
    LogRecord {
        body: Some(LogBody::Boot(BootRecord { epoch })),
    }
    .encode_to_vec()
}

pub fn decode_log_record(bytes: &[u8]) -> Result<LogBody, DecodeError> {
    LogRecord::decode(bytes)
        .map_err(|e| bad("log record", e))?
        .body
        .ok_or_else(|| bad("log record", "empty"))
}

/// Encodes the admin state, the live leases and the boot epoch as one snapshot
/// (tests and tools; the daemon streams its leases through [`SnapshotEncoder`]).
pub fn encode_snapshot(state: &AdminState, leases: Vec<LeaseRecord>, boot_epoch: u64) -> Vec<u8> {
    let mut bytes = SnapshotHeadRecord {
        organizations: organization_records(state),
        boot_epoch,
    }
    .encode_to_vec();
    for lease in &leases {
        prost::encoding::message::encode(SNAPSHOT_LEASES_TAG, lease, &mut bytes);
    }
    bytes
}

fn organization_records(state: &AdminState) -> Vec<OrganizationRecord> {
    state
        .organizations()
        .map(|org| OrganizationRecord {
            org: org.id.to_string(),
            display_name: org.display_name.clone(),
            quota: Some(quota_record(org.quota)),
            members: org
                .members
                .iter()
                .map(|(email, role)| MemberRecord {
                    email: email.to_string(),
                    role: role_code(*role),
                })
                .collect(),
            kse_assigned: org.kse_assigned.iter().map(ToString::to_string).collect(),
            kre_assigned: org.kre_assigned.iter().map(ToString::to_string).collect(),
            api_keys: org
                .api_keys
                .values()
                .map(|key| StoredApiKey {
                    email: key.email.to_string(),
                    key_id: key.id.to_string(),
                    label: key.label.clone(),
                    secret_sha256: key.secret_sha256.to_vec(),
                    created_at_unix_ms: key.created_at_unix_ms,
                    client_cert_subject: key.client_cert_subject.clone(),
                })
                .collect(),
        })
        .collect()
}

/// Decodes a snapshot into the admin state, the leases and the boot epoch (tests and
/// tools; recovery reads the leases one at a time with [`for_each_snapshot_lease`]).
pub fn decode_snapshot(
    bytes: &[u8],
) -> Result<(AdminState, Vec<RecoveredLease>, u64), DecodeError> {
    let (state, boot_epoch) = decode_snapshot_head(bytes)?;
    let mut leases = Vec::new();
    for_each_snapshot_lease(bytes, |record| {
        leases.push(lease_from(record)?);
        Ok(())
    })?;
    Ok((state, leases, boot_epoch))
}

/// The field number of `SnapshotRecord::leases`: the leases are written and read
/// one at a time, so neither taking nor loading a snapshot holds a second copy of
/// a million leases.
const SNAPSHOT_LEASES_TAG: u32 = 2;

/// `SnapshotRecord` without its leases: decoding it skips the lease fields as
/// unknown, at the cost of a length read each.
#[derive(Clone, PartialEq, Message)]
struct SnapshotHeadRecord {
    #[prost(message, repeated, tag = "1")]
    organizations: Vec<OrganizationRecord>,
    #[prost(uint64, tag = "3")]
    boot_epoch: u64,
}

/// Builds a snapshot's bytes (those of one `SnapshotRecord`) lease by lease.
pub struct SnapshotEncoder {
    bytes: Vec<u8>,
    /// Refilled for each lease, so encoding one allocates nothing.
    scratch: LeaseRecord,
    leases: u64,
}

impl SnapshotEncoder {
    /// Starts with the admin state and the boot epoch.
    pub fn new(state: &AdminState, boot_epoch: u64) -> Self {
        let bytes = SnapshotHeadRecord {
            organizations: organization_records(state),
            boot_epoch,
        }
        .encode_to_vec();
        SnapshotEncoder {
            bytes,
            scratch: LeaseRecord::default(),
            leases: 0,
        }
    }

    pub fn push_lease(&mut self, org: &OrgId, lease: LeaseRef<'_>) {
        let record = &mut self.scratch;
        refill(&mut record.org, org.as_str());
        record.lease_id.clear();
        record.lease_id.extend_from_slice(&lease.id.0.to_be_bytes());
        record.generation = lease.generation;
        record.product = product_code(lease.product);
        refill(&mut record.email, lease.email.as_str());
        refill(&mut record.engine_id, lease.engine_id);
        refill(&mut record.hostname, lease.hostname);
        refill(&mut record.label, lease.label);
        record.acquired_at_unix_ms = lease.acquired_at_unix_ms;
        prost::encoding::message::encode(SNAPSHOT_LEASES_TAG, record, &mut self.bytes);
        self.leases += 1;
    }

    /// Leases pushed so far.
    pub fn leases(&self) -> u64 {
        self.leases
    }

    /// Bytes encoded and not yet taken.
    pub fn pending_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Hands the bytes encoded so far to `write` and forgets them (keeping the
    /// buffer's room), so that a snapshot is written in pieces.
    pub fn drain_into<E>(&mut self, write: impl FnOnce(&[u8]) -> Result<(), E>) -> Result<(), E> {
        write(&self.bytes)?;
        self.bytes.clear();
        Ok(())
    }
}

fn refill(field: &mut String, text: &str) {
    field.clear();
    field.push_str(text);
}

/// Decodes a snapshot's admin state and boot epoch, skipping its leases.
pub fn decode_snapshot_head(bytes: &[u8]) -> Result<(AdminState, u64), DecodeError> {
    let head = SnapshotHeadRecord::decode(bytes).map_err(|e| bad("snapshot", e))?;
    let mut organizations = Vec::with_capacity(head.organizations.len());
    for record in &head.organizations {
        organizations.push(organization_from(record)?);
    }
    Ok((
        AdminState::from_organizations(organizations),
        head.boot_epoch,
    ))
}

/// Hands each lease of a snapshot to `visit`, decoded into one record reused for all
/// of them: loading a million leases allocates nothing here.
pub fn for_each_snapshot_lease(
    bytes: &[u8],
    mut visit: impl FnMut(&LeaseRecord) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let mut buf = bytes;
    let mut record = LeaseRecord::default();
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).map_err(|e| bad("snapshot", e))?;
        if tag != SNAPSHOT_LEASES_TAG {
            skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                .map_err(|e| bad("snapshot", e))?;
            continue;
        }
        if wire_type != WireType::LengthDelimited {
            return Err(bad("snapshot", "a lease is not length-delimited"));
        }
        let length = decode_varint(&mut buf).map_err(|e| bad("snapshot", e))?;
        let Some(body) = usize::try_from(length).ok().and_then(|n| buf.get(..n)) else {
            return Err(bad("snapshot", "a lease runs past the end"));
        };
        record.clear();
        record.merge(body).map_err(|e| bad("snapshot lease", e))?;
        visit(&record)?;
        buf = &buf[body.len()..];
    }
    Ok(())
}

/// What [`decode_log_record_reusing`] found: a lease grant or end in the caller's
/// scratch records, or any other record decoded as usual.
pub enum ReusedLogBody {
    LeaseGranted,
    LeaseEnded,
    /// Boxed: admin commands are rare, and this is returned for every record.
    Other(Box<LogBody>),
}

/// The records [`decode_log_record_reusing`] decodes lease grants and ends into.
#[derive(Default)]
pub struct LogScratch {
    pub granted: LeaseRecord,
    pub ended: LeaseEndRecord,
}

/// Decodes a log record as [`decode_log_record`] does, but a lease grant or end (nearly
/// every record of a log) into `scratch`, reusing its strings: a replay of a million
/// records then allocates only for what it keeps.
pub fn decode_log_record_reusing(
    bytes: &[u8],
    scratch: &mut LogScratch,
) -> Result<ReusedLogBody, DecodeError> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    let mut buf = bytes;
    let single_field = decode_key(&mut buf).ok().and_then(|(tag, wire_type)| {
        let length = decode_varint(&mut buf).ok()?;
        let whole = wire_type == WireType::LengthDelimited && length == buf.len() as u64;
        whole.then_some(tag)
    });
    let decoded = match single_field {
        Some(2) => {
            scratch.granted.clear();
            scratch
                .granted
                .merge(buf)
                .map(|()| ReusedLogBody::LeaseGranted)
        }
        Some(3) => {
            scratch.ended.clear();
            scratch.ended.merge(buf).map(|()| ReusedLogBody::LeaseEnded)
        }
        // Anything else (an admin command, a boot, or an unusual encoding) the usual way.
        _ => return decode_log_record(bytes).map(|body| ReusedLogBody::Other(Box::new(body))),
    };
    decoded.map_err(|e| bad("log record", e))
}

fn organization_from(record: &OrganizationRecord) -> Result<Organization, DecodeError> {
    let id = org_from(&record.org)?;
    let members = record
        .members
        .iter()
        .map(|m| Ok((email_from(&m.email)?, role_from(m.role)?)))
        .collect::<Result<imbl::OrdMap<_, _>, DecodeError>>()?;
    let set =
        |emails: &[String]| emails_from(emails).map(|v| v.into_iter().collect::<imbl::OrdSet<_>>());
    let api_keys = record
        .api_keys
        .iter()
        .map(|r| api_key_from(r).map(|k| (k.id.clone(), k)))
        .collect::<Result<imbl::OrdMap<_, _>, _>>()?;
    Ok(Organization {
        id,
        display_name: record.display_name.clone(),
        quota: quota_from(record.quota.as_ref())?,
        members,
        kse_assigned: set(&record.kse_assigned)?,
        kre_assigned: set(&record.kre_assigned)?,
        api_keys,
    })
}

/// The first format of admin commands: one flattened message whose `kind` says which
/// fields are set. Logs written before the oneof of [`CommandRecord`] hold these
/// (`tests/fixtures/data-v1`); they are read, never written.
pub mod legacy {
    use prost::Message;

    use super::{
        DecodeError, QuotaRecord, StoredApiKey, api_key_from, bad, email_from, emails_from,
        org_from, product_from, quota_from, role_from,
    };
    use crate::domain::{ApiKeyId, Command};

    /// The kinds of admin command, as the first format stored them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
    #[repr(i32)]
    pub enum AdminKind {
        Unspecified = 0,
        CreateOrganization = 1,
        SetQuota = 2,
        AddMember = 3,
        RemoveMember = 4,
        SetRole = 5,
        AssignLicenses = 6,
        UnassignLicenses = 7,
        TransferLicense = 8,
        CreateApiKey = 9,
        RevokeApiKey = 10,
    }

    /// An admin command, flattened: `kind` says which fields are set.
    #[derive(Clone, PartialEq, Message)]
    pub struct AdminRecord {
        #[prost(enumeration = "AdminKind", tag = "1")]
        pub kind: i32,
        #[prost(string, tag = "2")]
        pub org: String,
        #[prost(string, tag = "3")]
        pub display_name: String,
        #[prost(string, tag = "4")]
        pub email: String,
        #[prost(string, repeated, tag = "5")]
        pub emails: Vec<String>,
        #[prost(int32, tag = "6")]
        pub role: i32,
        #[prost(int32, tag = "7")]
        pub product: i32,
        #[prost(message, optional, tag = "8")]
        pub quota: Option<QuotaRecord>,
        #[prost(string, tag = "9")]
        pub to_email: String,
        #[prost(string, tag = "10")]
        pub key_id: String,
        #[prost(string, tag = "11")]
        pub label: String,
        #[prost(bytes = "vec", tag = "12")]
        pub secret_sha256: Vec<u8>,
        #[prost(int64, tag = "13")]
        pub created_at_unix_ms: i64,
    }

    /// Decodes a first-format admin record into the command it was made from.
    pub fn decode_command(record: &AdminRecord) -> Result<Command, DecodeError> {
        let org = org_from(&record.org)?;
        let kind = AdminKind::try_from(record.kind).map_err(|_| bad("admin kind", record.kind))?;
        let email = || email_from(&record.email);
        let command = match kind {
            AdminKind::Unspecified => return Err(bad("admin kind", 0)),
            AdminKind::CreateOrganization => Command::CreateOrganization {
                org,
                display_name: record.display_name.clone(),
                owner: email()?,
                quota: quota_from(record.quota.as_ref())?,
            },
            AdminKind::SetQuota => Command::SetQuota {
                org,
                quota: quota_from(record.quota.as_ref())?,
            },
            AdminKind::AddMember => Command::AddMember {
                org,
                email: email()?,
                role: role_from(record.role)?,
            },
            AdminKind::RemoveMember => Command::RemoveMember {
                org,
                email: email()?,
            },
            AdminKind::SetRole => Command::SetRole {
                org,
                email: email()?,
                role: role_from(record.role)?,
            },
            AdminKind::AssignLicenses => Command::AssignLicenses {
                org,
                product: product_from(record.product)?,
                emails: emails_from(&record.emails)?,
            },
            AdminKind::UnassignLicenses => Command::UnassignLicenses {
                org,
                product: product_from(record.product)?,
                emails: emails_from(&record.emails)?,
            },
            AdminKind::TransferLicense => Command::TransferLicense {
                org,
                product: product_from(record.product)?,
                from: email()?,
                to: email_from(&record.to_email)?,
            },
            AdminKind::CreateApiKey => {
                let key = api_key_from(&StoredApiKey {
                    email: record.email.clone(),
                    key_id: record.key_id.clone(),
                    label: record.label.clone(),
                    secret_sha256: record.secret_sha256.clone(),
                    created_at_unix_ms: record.created_at_unix_ms,
                    client_cert_subject: None,
                })?;
                Command::CreateApiKey {
                    org,
                    key_id: key.id,
                    email: key.email,
                    label: key.label,
                    secret_sha256: key.secret_sha256,
                    created_at_unix_ms: key.created_at_unix_ms,
                    client_cert_subject: None,
                }
            }
            AdminKind::RevokeApiKey => Command::RevokeApiKey {
                org,
                key_id: ApiKeyId(record.key_id.as_str().into()),
            },
        };
        Ok(command)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(s: &str) -> Email {
        Email::parse(s).unwrap()
    }

    #[test]
    fn every_command_round_trips() {
        let org = OrgId::parse("acme").unwrap();
        let quota = Quota {
            kse_seats: 3,
            kre_sessions: 4,
            expires_at_unix_ms: Some(99),
        };
        let commands = vec![
            Command::CreateOrganization {
                org: org.clone(),
                display_name: "Acme".into(),
                owner: email("o@acme.com"),
                quota,
            },
            Command::SetQuota {
                org: org.clone(),
                quota,
            },
            Command::UpdateQuota {
                org: org.clone(),
                update: QuotaUpdate {
                    kre_sessions: Some(0),
                    expires_at_unix_ms: Some(None),
                    ..QuotaUpdate::default()
                },
            },
            Command::AddMember {
                org: org.clone(),
                email: email("a@acme.com"),
                role: Role::Admin,
            },
            Command::RemoveMember {
                org: org.clone(),
                email: email("a@acme.com"),
            },
            Command::SetRole {
                org: org.clone(),
                email: email("a@acme.com"),
                role: Role::Owner,
            },
            Command::AssignLicenses {
                org: org.clone(),
                product: Product::Kse,
                emails: vec![email("a@acme.com"), email("b@acme.com")],
            },
            Command::UnassignLicenses {
                org: org.clone(),
                product: Product::Kre,
                emails: vec![email("a@acme.com")],
            },
            Command::TransferLicense {
                org: org.clone(),
                product: Product::Kse,
                from: email("a@acme.com"),
                to: email("b@acme.com"),
            },
            Command::CreateApiKey {
                org: org.clone(),
                key_id: ApiKeyId("0123456789ab".into()),
                email: email("a@acme.com"),
                label: "ci".into(),
                secret_sha256: [7; 32],
                created_at_unix_ms: 1234,
                client_cert_subject: Some("CN=engine-7, O=Acme".into()),
            },
            Command::RevokeApiKey {
                org: org.clone(),
                key_id: ApiKeyId("0123456789ab".into()),
            },
            Command::RenameOrganization {
                org: org.clone(),
                display_name: "Acme Corp".into(),
            },
            Command::DeleteOrganization { org },
        ];
        for command in commands {
            let bytes = encode_command(&command);
            let LogBody::Command(record) = decode_log_record(&bytes).unwrap() else {
                panic!("not an admin command");
            };
            assert_eq!(decode_command(&record).unwrap(), command);
        }
    }
}

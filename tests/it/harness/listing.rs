//! The List calls of the API, page by page (AIP-158): [`List`] knows each request and
//! its answer, [`walk`] follows the page tokens to the end (checking every page's
//! bound on the way), and [`list_all`] is the whole listing for tests that only need
//! its items. The audit record pages differently (a limit and `truncated`):
//! [`audit_record`].

use seatbroker::client::Authorized;
use seatbroker::limits;
use seatbroker::proto::{self, admin_service_client::AdminServiceClient};
use tonic::Status;

type Admin = AdminServiceClient<Authorized>;
/// A page's items and the next page's token (empty on the last page).
pub type Page<T> = Result<(Vec<T>, String), Status>;

/// The pages any walk may take before it is taken for endless.
const PAGES_MAX: usize = 10_000;

/// A List request of the API.
pub trait List: Clone {
    type Item;

    /// This request for the page of at most `page_size` items (0: the default) after
    /// `page_token` (empty: the first page).
    fn page(&self, page_size: i32, page_token: String) -> Self;

    /// Makes the call.
    async fn call(self, admin: &mut Admin) -> Page<Self::Item>;
}

/// One page of `request`: `page_size` items at most after `page_token`.
pub async fn page<L: List>(
    admin: &Admin,
    request: &L,
    page_size: i32,
    page_token: String,
) -> Page<L::Item> {
    request
        .page(page_size, page_token)
        .call(&mut admin.clone())
        .await
}

/// Walks `request` from its first page, `page_size` items at most per page (0: the
/// default), until the next page's token is empty; returns the pages, each asserted
/// to stay within its size.
pub async fn walk<L: List>(admin: &Admin, request: &L, page_size: i32) -> Vec<Vec<L::Item>> {
    let size_max = match page_size {
        0 => limits::LIST_PAGE_SIZE_DEFAULT,
        size => (size as usize).min(limits::LIST_PAGE_SIZE_MAX),
    };
    let mut pages = Vec::new();
    let mut token = String::new();
    for _ in 0..PAGES_MAX {
        let (items, next) = page(admin, request, page_size, token)
            .await
            .expect("a page");
        assert!(items.len() <= size_max, "a page past its size");
        pages.push(items);
        if next.is_empty() {
            return pages;
        }
        token = next;
    }
    panic!("the listing never ended");
}

/// Every item of `request`, in the order listed.
pub async fn list_all<L: List>(admin: &Admin, request: L) -> Vec<L::Item> {
    let pages = walk(admin, &request, 0).await;
    pages.into_iter().flatten().collect()
}

/// Implements [`List`] for `$request`, answered by `$method` with its items in the
/// field `$items`.
macro_rules! list_call {
    ($request:ty, $method:ident, $items:ident: $item:ty) => {
        impl List for $request {
            type Item = $item;

            #[allow(clippy::needless_update)]
            fn page(&self, page_size: i32, page_token: String) -> Self {
                Self {
                    page_size,
                    page_token,
                    ..self.clone()
                }
            }

            async fn call(self, admin: &mut Admin) -> Page<Self::Item> {
                let page = admin.$method(self).await?.into_inner();
                Ok((page.$items, page.next_page_token))
            }
        }
    };
}

list_call!(proto::ListOrganizationsRequest, list_organizations, organizations: proto::Organization);
list_call!(proto::ListMembersRequest, list_members, members: proto::Member);
// An item is the email of an assigned member.
list_call!(proto::ListAssignmentsRequest, list_assignments, emails: String);
list_call!(proto::ListApiKeysRequest, list_api_keys, keys: proto::ApiKey);
list_call!(proto::ListSessionsRequest, list_sessions, sessions: proto::Lease);

/// Every organization, as the operator lists them.
pub async fn organizations(operator: &Admin) -> Vec<proto::Organization> {
    list_all(operator, proto::ListOrganizationsRequest::default()).await
}

/// Every member of `org`.
pub async fn members(admin: &Admin, org: &str) -> Vec<proto::Member> {
    let request = proto::ListMembersRequest {
        org_id: org.into(),
        ..Default::default()
    };
    list_all(admin, request).await
}

/// The email of every member of `org`.
pub async fn member_emails(admin: &Admin, org: &str) -> Vec<String> {
    let members = members(admin, org).await;
    members.into_iter().map(|member| member.email).collect()
}

/// The emails holding a license of `product` in `org`.
pub async fn assigned_emails(admin: &Admin, org: &str, product: i32) -> Vec<String> {
    let request = proto::ListAssignmentsRequest {
        org_id: org.into(),
        product,
        ..Default::default()
    };
    list_all(admin, request).await
}

/// Every API key of `org` that `admin` may see.
pub async fn api_keys(admin: &Admin, org: &str) -> Vec<proto::ApiKey> {
    let request = proto::ListApiKeysRequest {
        org_id: org.into(),
        ..Default::default()
    };
    list_all(admin, request).await
}

/// Every live session of `org` (of `product`; 0 for both).
pub async fn sessions(admin: &Admin, org: &str, product: i32) -> Vec<proto::Lease> {
    let request = proto::ListSessionsRequest {
        org_id: org.into(),
        product,
        ..Default::default()
    };
    list_all(admin, request).await
}

/// One page of `org`'s audit record in `[from, to)` (0: unbounded), `limit` events at
/// most (0: the daemon's maximum), after `page_token`.
pub async fn audit_page(
    admin: &Admin,
    org: &str,
    (from_unix_ms, to_unix_ms): (i64, i64),
    limit: u32,
    page_token: String,
) -> Result<proto::ListAuditEventsResponse, Status> {
    let request = proto::ListAuditEventsRequest {
        org_id: org.into(),
        from_unix_ms,
        to_unix_ms,
        limit,
        page_token,
    };
    let answer = admin.clone().list_audit_events(request).await?;
    Ok(answer.into_inner())
}

/// `org`'s whole audit record, `limit` events a page (more than 0), each page asserted
/// to stay within it and the last one to carry no token.
pub async fn audit_record(admin: &Admin, org: &str, limit: u32) -> Vec<proto::AuditEvent> {
    assert!(limit > 0, "a limit of 0 asks for the daemon's maximum");
    let mut events = Vec::new();
    let mut token = String::new();
    for _ in 0..PAGES_MAX {
        let page = audit_page(admin, org, (0, 0), limit, token).await.unwrap();
        assert!(page.events.len() <= limit as usize, "a page past its limit");
        events.extend(page.events);
        if !page.truncated {
            assert!(page.next_page_token.is_empty());
            return events;
        }
        token = page.next_page_token;
    }
    panic!("the audit record never ended");
}

//! Pages of the List calls, as AIP-158 describes them: `page_size` (0 means
//! `limits::LIST_PAGE_SIZE_DEFAULT`, more than `limits::LIST_PAGE_SIZE_MAX` means the
//! maximum, negative is refused), an opaque `page_token`, and a `next_page_token` that
//! is empty on the last page.
//!
//! A token names the last key a page covered, so the next page starts right after it
//! in the listing's order: a range read of the ordered maps of the admin state, or of
//! the lease table's slots for sessions. Items that live through the whole listing are
//! listed exactly once; items added or removed meanwhile may or may not be.
//!
//! A token is bound to its listing and to the request's filters (organization,
//! product) by a fingerprint, so a token reused with other filters is refused, and it
//! carries a checksum, so a garbled one is refused too, each with its own message. It
//! holds no secret and grants nothing: every page is authorized on its own, and a token
//! made by hand can only start a listing at a key of the caller's choosing.
//!
//! Layout, then base64url without padding:
//! `version (1) | listing (1) | fingerprint of the filters (8) | last key | checksum (4)`,
//! the fingerprint and the checksum being the first bytes of SHA-256 digests.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::domain::DomainError;
use crate::limits;

const VERSION: u8 = 1;
const FINGERPRINT_BYTES: usize = 8;
const CHECKSUM_BYTES: usize = 4;
const HEADER_BYTES: usize = 2 + FINGERPRINT_BYTES;

// The longest key a token holds is an email; its token stays within the bound.
const _: () = assert!(
    (HEADER_BYTES + limits::EMAIL_BYTES_MAX + CHECKSUM_BYTES).div_ceil(3) * 4
        <= limits::LIST_PAGE_TOKEN_BYTES_MAX
);

/// The listings that page; a token of one is refused by the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Organizations = 1,
    Members = 2,
    Assignments = 3,
    ApiKeys = 4,
    Sessions = 5,
}

/// One List request's paging: which listing, with which filters.
pub struct Pager {
    listing: Listing,
    fingerprint: [u8; FINGERPRINT_BYTES],
    /// The request fields the fingerprint covers, for messages ("org_id and product").
    filter_names: &'static str,
}

/// The page a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Items to return at most, between 1 and `limits::LIST_PAGE_SIZE_MAX`.
    pub size: usize,
    /// The last key of the previous page; `None` for the first page.
    pub after: Option<Vec<u8>>,
}

impl Pager {
    /// `filters` are the values of the request's other fields, named by `filter_names`.
    pub fn new(listing: Listing, filter_names: &'static str, filters: &[&str]) -> Self {
        let mut digest = Sha256::new();
        digest.update(b"seatbroker list filters");
        digest.update([listing as u8]);
        for filter in filters {
            digest.update((filter.len() as u64).to_le_bytes());
            digest.update(filter.as_bytes());
        }
        let mut fingerprint = [0; FINGERPRINT_BYTES];
        fingerprint.copy_from_slice(&digest.finalize()[..FINGERPRINT_BYTES]);
        Pager {
            listing,
            fingerprint,
            filter_names,
        }
    }

    /// Reads a request's `page_size` and `page_token`.
    pub fn page(&self, page_size: i32, page_token: &str) -> Result<Page, DomainError> {
        let size = page_size_of(page_size)?;
        let after = match page_token {
            "" => None,
            token => Some(self.decode(token)?),
        };
        Ok(Page { size, after })
    }

    /// The token of the page after `last_key`; empty when the listing is over.
    pub fn next_token(&self, last_key: Option<&[u8]>) -> String {
        let Some(key) = last_key else {
            return String::new();
        };
        let mut bytes = Vec::with_capacity(HEADER_BYTES + key.len() + CHECKSUM_BYTES);
        bytes.push(VERSION);
        bytes.push(self.listing as u8);
        bytes.extend_from_slice(&self.fingerprint);
        bytes.extend_from_slice(key);
        let checksum = checksum(&bytes);
        bytes.extend_from_slice(&checksum);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn decode(&self, token: &str) -> Result<Vec<u8>, DomainError> {
        let garbled = || {
            DomainError::invalid(
                "page_token",
                "is not a token this daemon issued (garbled, truncated or made by hand); \
                 send the next_page_token of the previous answer unchanged, or none to \
                 start from the first page",
            )
        };
        if token.len() > limits::LIST_PAGE_TOKEN_BYTES_MAX {
            return Err(garbled());
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| garbled())?;
        if bytes.len() < HEADER_BYTES + CHECKSUM_BYTES || bytes[0] != VERSION {
            return Err(garbled());
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
        if checksum(body) != sum {
            return Err(garbled());
        }
        if body[1] != self.listing as u8 {
            return Err(DomainError::invalid(
                "page_token",
                "was issued by another List call; send each next_page_token back to \
                 the call that returned it",
            ));
        }
        if body[2..HEADER_BYTES] != self.fingerprint {
            return Err(DomainError::invalid(
                "page_token",
                format!(
                    "was issued for a request with another {}; send it with the same \
                     fields as the request that returned it, or none to start from the \
                     first page",
                    self.filter_names
                ),
            ));
        }
        Ok(body[HEADER_BYTES..].to_vec())
    }
}

fn checksum(bytes: &[u8]) -> [u8; CHECKSUM_BYTES] {
    let mut digest = Sha256::new();
    digest.update(b"seatbroker page token");
    digest.update(bytes);
    let mut sum = [0; CHECKSUM_BYTES];
    sum.copy_from_slice(&digest.finalize()[..CHECKSUM_BYTES]);
    sum
}

/// A request's `page_size`: 0 is the default, and more than the maximum is lowered to
/// it (AIP-158 coerces rather than refuses); negative is refused.
pub fn page_size_of(raw: i32) -> Result<usize, DomainError> {
    match usize::try_from(raw) {
        Ok(0) => Ok(limits::LIST_PAGE_SIZE_DEFAULT),
        Ok(size) => Ok(size.min(limits::LIST_PAGE_SIZE_MAX)),
        Err(_) => Err(DomainError::invalid(
            "page_size",
            format!(
                "{raw} is negative; send 0 for pages of {} items, or up to {}",
                limits::LIST_PAGE_SIZE_DEFAULT,
                limits::LIST_PAGE_SIZE_MAX
            ),
        )),
    }
}

impl Page {
    /// The previous page's last key, read by `parse` (the admin state's keys are text).
    pub fn after_key<K>(
        &self,
        parse: impl FnOnce(&str) -> Result<K, DomainError>,
    ) -> Result<Option<K>, DomainError> {
        let Some(after) = &self.after else {
            return Ok(None);
        };
        std::str::from_utf8(after)
            .ok()
            .and_then(|text| parse(text).ok())
            .map(Some)
            .ok_or_else(no_position)
    }
}

/// Where a page of sessions continues: the lease table's next slot to read. Slots do
/// not survive a restart, so the position names the boot that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotPosition {
    pub boot_epoch: u64,
    pub slot: u32,
}

impl SlotPosition {
    pub fn to_bytes(self) -> [u8; 12] {
        let mut bytes = [0; 12];
        bytes[..8].copy_from_slice(&self.boot_epoch.to_be_bytes());
        bytes[8..].copy_from_slice(&self.slot.to_be_bytes());
        bytes
    }

    /// The slot a page starts at (0 for the first page). FAILED_PRECONDITION for a
    /// token of an earlier boot of the daemon.
    pub fn first_slot(page: &Page, boot_epoch: u64) -> Result<u32, DomainError> {
        let Some(after) = &page.after else {
            return Ok(0);
        };
        let bytes: [u8; 12] = after.as_slice().try_into().map_err(|_| no_position())?;
        let position = SlotPosition {
            boot_epoch: u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes")),
            slot: u32::from_be_bytes(bytes[8..].try_into().expect("4 bytes")),
        };
        if position.boot_epoch != boot_epoch {
            return Err(DomainError::FailedPrecondition(
                "page_token was issued before the daemon restarted, and sessions are not \
                 listed in the same order across restarts; list again from the first page \
                 (no page_token)"
                    .into(),
            ));
        }
        Ok(position.slot)
    }
}

fn no_position() -> DomainError {
    DomainError::invalid(
        "page_token",
        "names no position of this listing; send the next_page_token of the previous \
         answer unchanged, or none to start from the first page",
    )
}

/// One page taken from `entries`, which start right after the previous page's last
/// key, in the listing's order. Each entry is a key and its item, `None` when the
/// caller may not see it (it still counts as examined). Takes at most `size` items and
/// examines at most `limits::LIST_ENTRIES_SCANNED_PER_PAGE_MAX` entries; returns the
/// items and, when entries may remain, the key the next page starts after.
pub fn take_page<K, T>(
    entries: impl Iterator<Item = (K, Option<T>)>,
    size: usize,
) -> (Vec<T>, Option<K>) {
    let mut items = Vec::with_capacity(size.min(limits::LIST_PAGE_SIZE_MAX));
    let mut last_key = None;
    for (examined, (key, item)) in entries.enumerate() {
        if items.len() == size || examined == limits::LIST_ENTRIES_SCANNED_PER_PAGE_MAX {
            return (items, last_key);
        }
        last_key = Some(key);
        items.extend(item);
    }
    (items, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members_of(org: &str) -> Pager {
        Pager::new(Listing::Members, "org_id", &[org])
    }

    #[test]
    fn a_token_round_trips_to_its_key() {
        let pager = members_of("acme");
        let token = pager.next_token(Some(b"alice@acme.com"));
        assert!(token.len() <= limits::LIST_PAGE_TOKEN_BYTES_MAX);
        let page = pager.page(0, &token).unwrap();
        assert_eq!(page.after.as_deref(), Some(&b"alice@acme.com"[..]));
        assert_eq!(page.size, limits::LIST_PAGE_SIZE_DEFAULT);
        assert_eq!(pager.next_token(None), "");
    }

    #[test]
    fn page_sizes_default_clamp_and_refuse_negatives() {
        assert_eq!(page_size_of(0).unwrap(), limits::LIST_PAGE_SIZE_DEFAULT);
        assert_eq!(page_size_of(7).unwrap(), 7);
        assert_eq!(page_size_of(i32::MAX).unwrap(), limits::LIST_PAGE_SIZE_MAX);
        assert!(matches!(
            page_size_of(-1),
            Err(DomainError::InvalidArgument {
                field: "page_size",
                ..
            })
        ));
    }

    #[test]
    fn a_token_is_refused_by_other_filters_other_listings_and_when_garbled() {
        let token = members_of("acme").next_token(Some(b"alice@acme.com"));
        let reason = |result: Result<Page, DomainError>| match result {
            Err(DomainError::InvalidArgument { reason, .. }) => reason,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        };
        assert!(reason(members_of("other").page(0, &token)).contains("another org_id"));
        let keys = Pager::new(Listing::ApiKeys, "org_id", &["acme"]);
        assert!(reason(keys.page(0, &token)).contains("another List call"));
        let mut flipped = token.clone().into_bytes();
        flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        for garbled in [
            "x",
            "not base64!",
            &flipped,
            &token[..token.len() - 2],
            &"A".repeat(4000),
        ] {
            assert!(reason(members_of("acme").page(0, garbled)).contains("not a token"));
        }
    }

    #[test]
    fn take_page_stops_at_the_size_and_at_the_scan_bound() {
        let entries = (0..10).map(|k| (k, Some(k)));
        assert_eq!(take_page(entries.clone(), 3), (vec![0, 1, 2], Some(2)));
        assert_eq!(
            take_page(entries.clone(), 10),
            (Vec::from_iter(0..10), None)
        );
        assert_eq!(take_page(entries, 20), (Vec::from_iter(0..10), None));
        // Nothing visible: the page comes back empty after the scan bound, with a key.
        let hidden = (0..).map(|k| (k, None::<u32>));
        let bound = limits::LIST_ENTRIES_SCANNED_PER_PAGE_MAX;
        assert_eq!(take_page(hidden, 5), (vec![], Some(bound - 1)));
    }
}

//! Borrowing: a floating seat taken for offline use (a laptop on a plane). The server keeps the
//! seat without heartbeats for the borrow period; the signed lease token it returns is the
//! product's proof, checked offline with the embedded public key. Keep a [`BorrowedSeat`] with
//! [`BorrowedSeat::save`]; returning it early frees the seat at once.

use crate::floating::{request, ts_millis, CheckoutOptions};
use crate::storage::{read_json, write_json};
use crate::{Client, ClientError, Credentials};
use licensing_domain::certificate::{verify_lease_token, LeaseTokenPayload};
use licensing_domain::clock::Millis;
use licensing_proto::seat::v1 as pb;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

/// A borrowed seat as the product keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BorrowedSeat {
    /// License ID (`lic_…`).
    pub license_id: String,
    /// Lease ID (`lse_…`) of the borrowed seat.
    pub lease_id: String,
    /// The signed lease token (`payload.signature`).
    pub lease_token: String,
    /// The borrow ends at this instant (Unix ms).
    pub expires_at_ms: Millis,
    /// The latest time the product has seen, to detect a clock set back.
    pub last_seen_ms: Millis,
}

impl BorrowedSeat {
    /// The seat saved at `path`; `None` when no file is there.
    pub fn load(path: &Path) -> Result<Option<Self>, ClientError> {
        read_json(path)
    }

    /// Written through a temporary file and a rename.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        write_json(path, self)
    }
}

impl Client {
    /// Borrows a seat for `period` (at most the license's `max_borrow`, never past its expiry).
    pub async fn borrow(
        &self,
        credentials: Credentials,
        options: CheckoutOptions,
        period: Duration,
    ) -> Result<BorrowedSeat, ClientError> {
        let mut checkout = request(&credentials, &options);
        checkout.borrow_for =
            Some(prost_types::Duration { seconds: period.as_secs() as i64, nanos: period.subsec_nanos() as i32 });
        let grant = self.seat.clone().checkout(checkout).await.map_err(ClientError::from_status)?.into_inner().grant;
        let grant = grant.ok_or(ClientError::Config("the server sent no lease"))?;
        let seat = BorrowedSeat {
            license_id: grant.license_id,
            lease_id: grant.lease_id,
            lease_token: grant.lease_token,
            expires_at_ms: ts_millis(grant.expires_at.as_ref()),
            last_seen_ms: self.clock.now(),
        };
        // Verified now, so a product never stores a proof that will not hold offline.
        let token = self.verify_token(&seat)?;
        if !token.borrowed {
            return Err(ClientError::BadLeaseToken("the server did not grant a borrow".into()));
        }
        Ok(seat)
    }

    /// Checks a borrowed seat offline: the token's signature (with the embedded key), that it
    /// is a borrow of this lease, that its period has not ended, and that the clock was not set
    /// back. Moves `last_seen_ms` forward; save the seat afterwards.
    pub fn check_borrowed(&self, seat: &mut BorrowedSeat) -> Result<LeaseTokenPayload, ClientError> {
        let token = self.verify_token(seat)?;
        if !token.borrowed {
            return Err(ClientError::BadLeaseToken("the token is not a borrow".into()));
        }
        let now = self.clock.now();
        if now < seat.last_seen_ms {
            return Err(ClientError::ClockSetBack { now, last_seen: seat.last_seen_ms });
        }
        if now >= token.expires_at_ms {
            return Err(ClientError::BorrowEnded(token.expires_at_ms));
        }
        seat.last_seen_ms = now;
        Ok(token)
    }

    /// Returns a borrowed seat early; `true` when the server released it (`false` when it had
    /// ended already).
    pub async fn return_borrowed(&self, seat: &BorrowedSeat) -> Result<bool, ClientError> {
        let checkin = pb::CheckinRequest { license_id: seat.license_id.clone(), lease_id: seat.lease_id.clone() };
        Ok(self.seat.clone().checkin(checkin).await.map_err(ClientError::from_status)?.into_inner().released)
    }

    fn verify_token(&self, seat: &BorrowedSeat) -> Result<LeaseTokenPayload, ClientError> {
        let token = verify_lease_token(&self.public_key, &seat.lease_token)
            .map_err(|e| ClientError::BadLeaseToken(e.to_string()))?;
        if token.lease_id != seat.lease_id || token.license_id != seat.license_id {
            return Err(ClientError::BadLeaseToken("the token names another lease".into()));
        }
        Ok(token)
    }
}

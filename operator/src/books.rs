//! What the operator reads of a campaign's books each pass: the ledger's rows per coupon and
//! the gate's stock left over them.
use coupon_core::ledger::CouponBook;

use crate::error::Error;
use crate::secrets::Connected;

/// A campaign's books as one pass read them.
pub struct CampaignBooks {
    pub books: Vec<CouponBook>,
    /// The gate's remaining stock per coupon, in `books` order (`None`: the key is gone).
    pub gate: Vec<Option<i64>>,
    /// Redis no longer has the catalog or some coupon (restarted without persistence, keys gone).
    pub lost: bool,
}

impl CampaignBooks {
    /// Both sides in one pass.
    pub async fn read(campaign: &str, be: &Connected) -> Result<Self, Error> {
        let books = be.ledger.books(campaign).await?;
        let mut lost = be.gate.catalog(campaign).await?.is_none();
        let mut gate = Vec::with_capacity(books.len());
        for b in &books {
            let left = be
                .gate
                .snapshot(campaign, b.coupon_id)
                .await?
                .map(|s| s.remaining);
            lost |= left.is_none();
            gate.push(left);
        }
        Ok(Self { books, gate, lost })
    }
}

//! `redeliver`: fetch a case again by id and publish it as a new entry, for a consumer that
//! lost one. Touches nothing on the hub: no status, no event, no DELETE.

use crate::deliver::names;
use crate::state::{DeliveryKey, Stage};

use super::context::{ItemError, SubscriptionCtx};
use super::entry::{self, EntrySource, Publication};

/// Publishes the case `case_id` again; returns the new entry's name.
pub async fn redeliver(ctx: &SubscriptionCtx, case_id: &str) -> Result<String, ItemError> {
    let (case, raw) = ctx
        .session
        .get_case(case_id)
        .await
        .map_err(|e| ItemError::hub(e, "fetching the case to redeliver it"))?;
    let external_id = case.external_id.clone().unwrap_or_default();
    // A name of its own, so the new entry never collides with the original (which the
    // consumer may still have in cur/).
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ").to_string();
    let tag = format!("redelivery-{stamp}");
    let key = DeliveryKey {
        subscription: ctx.name.clone(),
        case_id: case_id.to_string(),
        event_id: tag.clone(),
        round: 0,
    };
    let entry_name = names::entry_name(&external_id, case_id, Some(&tag), 0);
    let src = EntrySource {
        key: &key,
        kind: "redelivery",
        entry_name: entry_name.clone(),
        external_id,
        process_code: case
            .process_code
            .clone()
            .unwrap_or_else(|| ctx.process_code.clone()),
        notification_id: None,
        case_raw: &raw,
        event_raw: None,
        event_id: None,
        attachments: &case.attachments,
        receipt_start: None,
    };
    match entry::publish(ctx, src).await? {
        Publication::Done => {
            // Nothing is owed to the hub for a redelivery.
            ctx.state.advance(&key, Stage::Acknowledged).await?;
            Ok(entry_name)
        }
        Publication::Waiting { attachment_id } => Err(ItemError::Refused(format!(
            "attachment {attachment_id} is still PENDING on the hub; try again later"
        ))),
    }
}

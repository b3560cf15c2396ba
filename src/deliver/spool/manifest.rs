//! manifest.json: what an entry holds, as the legacy software reads it.

use super::*;

/// `manifest.json`: what hubee-sync adds to the case as the hub returned it (CONTRACT "Spool
/// layout").
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Manifest {
    pub subscription: String,
    pub process_code: String,
    pub case_id: String,
    pub external_id: String,
    pub event_id: Option<String>,
    /// 0 for the case, N for its Nth reopening.
    pub round: u32,
    /// RFC 3339.
    pub received_at: String,
    /// Grows with every entry published in this spool: the consumer's processing order.
    pub sequence: u64,
    pub attachments: Vec<ManifestAttachment>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ManifestAttachment {
    pub attachment_id: String,
    /// As the hub sent it.
    pub file_name: String,
    /// Relative to the entry; `None` when not fetched (CORRUPTED, REJECTED, DELETED).
    pub path: Option<String>,
    #[serde(rename = "type")]
    pub type_: String,
    pub mime_type: String,
    pub size: u64,
    /// Hex.
    pub sha256: Option<String>,
    pub status: String,
}

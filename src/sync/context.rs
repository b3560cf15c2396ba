//! What every step of a subscription's cycle shares: the subscription's context, the
//! per-notification error, progress counters and the activity journal's recorder.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Delivery, Settings, Subscription};
use crate::deliver::{Spool, SpoolError};
use crate::hubee::status::CaseStatus;
use crate::hubee::{HubClient, HubError, HubSession};
use crate::shutdown::Shutdown;
use crate::state::{DeliveryRow, StateDb, StateError};

/// Everything one subscription's cycle needs, built from validated settings.
pub struct SubscriptionCtx {
    pub name: String,
    pub process_code: String,
    pub receipt_status: CaseStatus,
    pub session: HubSession,
    pub spool: Spool,
    pub state: StateDb,
    pub max_parallel_downloads: usize,
    /// Downloads in flight for this subscription, all cases together (max_parallel_downloads).
    pub downloads: tokio::sync::Semaphore,
    /// Cases worked at the same time within a batch (spool delivery; one for a database).
    pub max_parallel_cases: usize,
    /// Spool sequence numbers, handed out so that entries are published in their order.
    pub sequences: super::sequence::Sequences,
    pub download_attempts: u32,
    pub retry_base_delay: Duration,
    /// `author` of our events: the editor name.
    pub author: String,
    /// Becomes `true` when the process is asked to stop: downloads in flight are abandoned
    /// (nothing is published or acknowledged for them), and no new item is started.
    pub shutdown: Shutdown,
    /// How long an item may keep failing before it is quarantined.
    pub quarantine_after: Duration,
    /// Counters for a progress display (shared by every subscription of a run).
    pub progress: std::sync::Arc<Progress>,
    /// For `delivery = "database"`: the business database's URL, opened at first use.
    pub database_url: Option<String>,
    pub database: tokio::sync::OnceCell<crate::deliver::database::BusinessDb>,
}

impl SubscriptionCtx {
    /// The business database, opened (and migrated) at first use.
    pub async fn business_db(
        &self,
    ) -> Result<Option<&crate::deliver::database::BusinessDb>, ItemError> {
        let Some(url) = &self.database_url else {
            return Ok(None);
        };
        self.database
            .get_or_try_init(|| crate::deliver::database::BusinessDb::open(url))
            .await
            .map(Some)
            .map_err(ItemError::Database)
    }
}

/// What has been received so far, for `once` on a terminal.
#[derive(Debug, Default)]
pub struct Progress {
    pub entries: std::sync::atomic::AtomicU64,
    pub bytes: std::sync::atomic::AtomicU64,
}

impl Progress {
    pub fn add_bytes(&self, n: u64) {
        self.bytes
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn add_entry(&self) {
        self.entries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Why one notification could not be handled this cycle.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    #[error("{doing}: {source}")]
    Hub {
        doing: &'static str,
        #[source]
        source: HubError,
    },
    #[error("{0}")]
    Download(#[from] super::download::DownloadError),
    #[error("{0}")]
    Spool(#[source] SpoolError),
    #[error("{0}")]
    Database(#[source] crate::deliver::database::DbError),
    #[error("{0}")]
    State(#[from] StateError),
    /// The hub sent something we refuse to deliver as it is.
    #[error("{0}")]
    Refused(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ItemError {
    pub fn spool(e: SpoolError) -> ItemError {
        ItemError::Spool(e)
    }

    /// The work was abandoned because the process is stopping.
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            ItemError::Download(super::download::DownloadError::Cancelled)
        )
    }

    /// Failures that concern the whole subscription, not this item: stop the cycle.
    pub(crate) fn stops_cycle(&self) -> bool {
        match self {
            ItemError::Hub { source, .. } => source.is_auth() || source.is_fenced(),
            ItemError::Spool(_) | ItemError::State(_) | ItemError::Database(_) => true,
            ItemError::Download(d) => d.is_local(),
            _ => false,
        }
    }

    /// For `hubee_sync_items_failed_total{kind}`: the hub's doing, this machine's, or what
    /// the hub sent did not verify.
    pub fn failure_kind(&self) -> crate::metrics::FailureKind {
        match self {
            ItemError::Hub { .. } => crate::metrics::FailureKind::Hub,
            ItemError::Download(d) => d.failure_kind(),
            ItemError::Refused(_) => crate::metrics::FailureKind::Verify,
            _ => crate::metrics::FailureKind::Local,
        }
    }
}

/// Appends to the activity journal (digests read it); a failure to record is logged, never
/// a reason to fail the delivery it describes.
pub(crate) async fn note(
    ctx: &SubscriptionCtx,
    kind: &str,
    case_id: &str,
    external_id: Option<&str>,
    event_id: Option<&str>,
    detail: serde_json::Value,
) {
    if let Err(e) = ctx
        .state
        .record_activity(
            &ctx.name,
            kind,
            Some(case_id),
            external_id,
            event_id,
            detail,
        )
        .await
    {
        tracing::warn!(subscription = %ctx.name, case_id, error = %e, "cannot record activity for the digest");
    }
}

pub(crate) fn log_acknowledged(ctx: &SubscriptionCtx, row: &DeliveryRow) {
    crate::events::acknowledged(
        &ctx.name,
        &row.key.case_id,
        &row.external_id,
        row.notification_id.as_deref().unwrap_or(""),
    );
}

/// Builds what a cycle needs. Errors name the subscription and what to do.
pub fn subscription_ctx(
    settings: &Settings,
    sub: &Subscription,
    client: &HubClient,
    state: &StateDb,
    shutdown: Shutdown,
    progress: Arc<Progress>,
) -> Result<SubscriptionCtx, String> {
    let secret = sub
        .secret
        .load()
        .map_err(|e| format!("subscription {}: {e}", sub.name))?;
    let spool = match &sub.delivery {
        Delivery::Spool { path, group } => Spool::open(path, group.as_deref())
            .map_err(|e| format!("subscription {}: {e}", sub.name))?,
        Delivery::Database { spool, group, .. } => Spool::open(spool, group.as_deref())
            .map_err(|e| format!("subscription {}: {e}", sub.name))?,
    };
    let database_url = match &sub.delivery {
        Delivery::Database { url, .. } => Some(url.expose().to_string()),
        Delivery::Spool { .. } => None,
    };
    Ok(SubscriptionCtx {
        name: sub.name.clone(),
        process_code: sub.process_code.clone(),
        receipt_status: sub.receipt_status,
        session: match crate::cluster::Cluster::of(state) {
            // Several nodes: every change on the hub first checks this node's lease.
            Some(cluster) => client
                .session(&sub.client_id, secret.expose())
                .with_fence(cluster.fence(&sub.name)),
            None => client.session(&sub.client_id, secret.expose()),
        },
        spool,
        state: state.clone(),
        max_parallel_downloads: settings.hub.max_parallel_downloads,
        downloads: tokio::sync::Semaphore::new(settings.hub.max_parallel_downloads.max(1)),
        max_parallel_cases: settings.hub.max_parallel_cases,
        sequences: Default::default(),
        download_attempts: settings.hub.download_attempts,
        retry_base_delay: settings.hub.retry_base_delay,
        author: settings.hub.editor_name.clone(),
        shutdown,
        quarantine_after: sub.quarantine_after,
        progress,
        database_url,
        database: tokio::sync::OnceCell::new(),
    })
}

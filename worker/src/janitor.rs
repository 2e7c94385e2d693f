//! The janitor deletes outputs whose `expires_at` has passed and marks them deleted on the job, so
//! the api shows them as expired instead of handing out URLs to nothing. Object deletion comes
//! first and is idempotent: if the process dies between the two steps, the next pass deletes a
//! missing object (a no-op) and then marks it. Uploads (`POST /v1/files`) expire the same way.
//! It also purges idempotency keys past their 24 h.

use kiln_core::{Ledger, LedgerError};
use kiln_storage::ObjectStore;
use std::sync::Arc;

const BATCH: u32 = 500;

pub struct Janitor {
    pub ledger: Arc<dyn Ledger>,
    pub store: Arc<dyn ObjectStore>,
}

impl Janitor {
    /// One pass; returns how many outputs and uploads were deleted.
    pub async fn pass(&self) -> Result<usize, LedgerError> {
        let expired = self
            .ledger
            .expired_outputs(kiln_core::time::now(), BATCH)
            .await?;
        let mut deleted = 0;
        for output in expired {
            // The preview first (deleting a missing one is no error): once the output is marked
            // deleted, nothing would come back for its preview.
            let preview = kiln_core::job::preview_key(&output.object_key);
            let removed = match self.store.delete(&preview).await {
                Ok(()) => self.store.delete(&output.object_key).await,
                Err(e) => Err(e),
            };
            match removed {
                Ok(()) => {
                    self.ledger
                        .mark_output_deleted(output.job_id, output.index)
                        .await?;
                    deleted += 1;
                }
                Err(e) => {
                    tracing::warn!(key = %output.object_key, error = %e, "could not delete an expired output")
                }
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "expired outputs deleted");
        }
        // Uploads (`POST /v1/files`) expire like outputs, object first.
        let files = self
            .ledger
            .expired_files(kiln_core::time::now(), BATCH)
            .await?;
        for (id, key) in files {
            match self.store.delete(&key).await {
                Ok(()) => {
                    self.ledger.mark_file_deleted(None, &id).await?;
                    deleted += 1;
                }
                Err(e) => {
                    tracing::warn!(key = %key, error = %e, "could not delete an expired upload")
                }
            }
        }
        let purged = self
            .ledger
            .purge_idempotency(kiln_core::time::now(), BATCH)
            .await?;
        if purged > 0 {
            tracing::debug!(purged, "expired idempotency keys purged");
        }
        Ok(deleted)
    }
}

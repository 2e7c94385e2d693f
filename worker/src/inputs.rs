//! Resolving a job's input images to bytes. Inline data URIs need nothing; a URL that is one of
//! Kiln's own signed download URLs is read straight from the object store (an earlier job's
//! output, the common chaining case, works even when the api's address is loopback); any other
//! URL is fetched through the SSRF-safe client with a size cap; a `kiln://jobs/{id}/outputs/{n}`
//! reference is looked up in the ledger (scoped by the running job's tenant, so a job can only
//! read its own tenant's outputs) and read from the store by its key. Failures are classified: a
//! refused or malformed input is permanent, an unreachable server is worth retrying.

use crate::provider::ProviderError;
use bytes::BytesMut;
use futures::StreamExt;
use kiln_core::catalog::ImageSource;
use kiln_core::{JobId, Ledger, TenantId};
use kiln_storage::{ObjectStore, StorageError};
use kiln_webhooks::{FetchError, SafeClient};
use std::sync::Arc;

pub struct InputResolver {
    ledger: Arc<dyn Ledger>,
    store: Arc<dyn ObjectStore>,
    client: SafeClient,
    max_bytes: u64,
}

impl InputResolver {
    pub fn new(
        ledger: Arc<dyn Ledger>,
        store: Arc<dyn ObjectStore>,
        client: SafeClient,
        max_bytes: u64,
    ) -> Self {
        InputResolver {
            ledger,
            store,
            client,
            max_bytes,
        }
    }

    pub async fn image_bytes(
        &self,
        source: &ImageSource,
        tenant: &TenantId,
    ) -> Result<Vec<u8>, ProviderError> {
        let url = match source {
            ImageSource::Inline { bytes, .. } => return Ok(bytes.clone()),
            ImageSource::Output { job, index } => {
                let key = self.output_key(tenant, *job, *index).await?;
                return self.read_object(&key).await;
            }
            ImageSource::Url(url) => url,
        };
        if let Some(own) = self.store.resolve_own_url(url).await {
            let key = own.map_err(|e| {
                ProviderError::fail("input_url_invalid", format!("input.image: {e}"))
            })?;
            return self.read_object(&key).await;
        }
        let bytes = self
            .client
            .fetch(url, self.max_bytes, &["image/"])
            .await
            .map_err(|e| {
                let code = match &e {
                    FetchError::Forbidden(_) => "input_forbidden",
                    FetchError::TooLarge(_) => "input_too_large",
                    FetchError::ContentType(_) => "input_not_an_image",
                    _ => "input_unavailable",
                };
                let message = format!("could not fetch input.image: {e}");
                if e.is_transient() {
                    ProviderError::retry(code, message)
                } else {
                    ProviderError::fail(code, message)
                }
            })?;
        Ok(bytes.to_vec())
    }

    /// The storage key of an earlier output of the same tenant's, if it is still kept.
    async fn output_key(
        &self,
        tenant: &TenantId,
        job: JobId,
        index: u32,
    ) -> Result<String, ProviderError> {
        let source = self.ledger.get_job(tenant, job).await.map_err(|e| {
            ProviderError::retry("internal_error", format!("the ledger is unavailable: {e}"))
        })?;
        let output = source
            .as_ref()
            .and_then(|j| j.outputs.iter().find(|o| o.index == index))
            .ok_or_else(|| {
                ProviderError::fail(
                    "input_reference_invalid",
                    format!("input.image: there is no output {index} of job {job}"),
                )
            })?;
        if output.is_expired(kiln_core::time::now()) {
            return Err(ProviderError::fail(
                "input_expired",
                "input.image names an output that no longer exists",
            ));
        }
        Ok(output.object_key.clone())
    }

    async fn read_object(&self, key: &str) -> Result<Vec<u8>, ProviderError> {
        let mut stream = self.store.get(key).await.map_err(|e| match e {
            StorageError::NotFound(_) => ProviderError::fail(
                "input_expired",
                "input.image names an output that no longer exists",
            ),
            other => {
                tracing::warn!(key, error = %other, "reading an input from storage failed");
                ProviderError::retry(
                    "storage_unavailable",
                    "input.image could not be read from storage",
                )
            }
        })?;
        let mut body = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| {
                tracing::warn!(key, error = %e, "reading an input from storage failed");
                ProviderError::retry(
                    "storage_unavailable",
                    "input.image could not be read from storage",
                )
            })?;
            if (body.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(ProviderError::fail(
                    "input_too_large",
                    format!("input.image is larger than {} bytes", self.max_bytes),
                ));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.to_vec())
    }
}

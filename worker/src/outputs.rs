//! Storing an attempt's outputs, and describing them: what the executor does once a generator
//! has answered. An output in memory is written to `jobs/{job}/{index}.{ext}` (deterministic,
//! so a retried or rescued attempt overwrites instead of duplicating), one the generator
//! uploaded itself (a Cog upload) is recorded where it lies. Either way the output is then
//! described from its own bytes (`crate::media`: size, duration, frame rate) and its preview
//! stored beside it. Writes wait out a storage outage (`STORE_TRIES`), since the output in hand
//! is paid for and generating it again would pay twice.

use crate::provider::{GeneratedOutput, ProviderError};
use futures::StreamExt;
use kiln_core::time::Timestamp;
use kiln_core::{JobId, NewOutput};
use kiln_storage::ObjectStore;
use std::sync::Arc;
use std::time::Duration;

/// Writes of one object tried before giving up (about 20 s of waiting in all).
const STORE_TRIES: u32 = 7;

/// Stores and describes the outputs of one attempt of `job_id`, in the generator's order.
pub async fn store_all(
    store: &Arc<dyn ObjectStore>,
    job_id: JobId,
    outputs: Vec<GeneratedOutput>,
    expires_at: Timestamp,
) -> Result<Vec<NewOutput>, ProviderError> {
    let mut stored = Vec::with_capacity(outputs.len());
    for (index, output) in outputs.into_iter().enumerate() {
        if let Some(key) = output.uploaded {
            stored.push(describe_upload(store, index, key, expires_at).await?);
            continue;
        }
        // Deterministic keys: a retried or rescued attempt overwrites, never duplicates.
        let key = format!("jobs/{job_id}/{index}.{}", output.extension);
        let size = output.bytes.len();
        let bytes = bytes::Bytes::from(output.bytes);
        // The output is paid for: a storage outage is waited out here, with the bytes in
        // hand, rather than failing the attempt and generating (and paying) again. The
        // attempt's deadline bounds the wait; past STORE_TRIES the attempt fails as a retry.
        let written = put_patiently(store, &key, output.content_type, bytes.clone())
            .await
            .map_err(|_| {
                ProviderError::retry(
                    "storage_unavailable",
                    format!("output {index} could not be stored"),
                )
            })?;
        debug_assert_eq!(written as usize, size);
        let content_type = output.content_type;
        let described = match crate::media::small_image(&bytes, content_type) {
            Some(described) => described,
            None => tokio::task::spawn_blocking(move || {
                crate::media::describe(std::io::Cursor::new(bytes), written, content_type)
            })
            .await
            .map_err(|e| ProviderError::fail("describe_failed", e.to_string()))?,
        };
        stored.push(NewOutput {
            index: index as u32,
            media: keep_preview(store, &key, described).await,
            object_key: key,
            content_type: output.content_type.to_owned(),
            bytes: written,
            expires_at,
        });
    }
    Ok(stored)
}

/// An output the generator uploaded into the store itself: its size from the store, its
/// media type from its first bytes (sniffed, as for every other output: the uploader's
/// `Content-Type` is the generator's guess from a file name), else from its extension.
async fn describe_upload(
    store: &Arc<dyn ObjectStore>,
    index: usize,
    key: String,
    expires_at: Timestamp,
) -> Result<NewOutput, ProviderError> {
    let missing = |e: kiln_storage::StorageError| {
        tracing::warn!(key, error = %e, "a generator's upload cannot be read");
        ProviderError::retry(
            "upload_missing",
            format!("output {index} was reported uploaded but cannot be read"),
        )
    };
    let info = store.head(&key).await.map_err(missing)?;
    let mut head = Vec::new();
    let mut stream = store
        .get_range(&key, 0..info.bytes.min(64))
        .await
        .map_err(missing)?;
    while let Some(chunk) = stream.next().await {
        head.extend_from_slice(&chunk.map_err(|e| missing(e.into()))?);
    }
    let content_type = crate::upstream::sniff(&head)
        .map(|(content_type, _)| content_type)
        .unwrap_or_else(|| crate::upstream::media_type_of(&key));
    let reader = crate::media::StoreReader::new(
        store.clone(),
        key.clone(),
        info.bytes,
        tokio::runtime::Handle::current(),
    );
    let described = tokio::task::spawn_blocking(move || {
        crate::media::describe(reader, info.bytes, content_type)
    })
    .await
    .map_err(|e| ProviderError::fail("describe_failed", e.to_string()))?;
    Ok(NewOutput {
        index: index as u32,
        media: keep_preview(store, &key, described).await,
        object_key: key,
        content_type: content_type.to_owned(),
        bytes: info.bytes,
        expires_at,
    })
}

/// Stores an output's preview beside it; the output's metadata says whether there is one.
/// A preview that cannot be stored is left out rather than failing a paid-for output.
async fn keep_preview(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    described: crate::media::Described,
) -> kiln_core::OutputMedia {
    let mut media = described.media;
    let Some(crate::media::PreviewImage::Jpeg(preview)) = described.preview else {
        media.preview = described.preview.map(|_| kiln_core::Preview::Itself);
        return media;
    };
    media.preview = Some(kiln_core::Preview::Stored);
    // Waited out like the output's own write, so an outage the output survived does not
    // leave it without its preview.
    let preview_key = kiln_core::job::preview_key(key);
    let put = put_patiently(store, &preview_key, "image/jpeg", preview.into());
    if put.await.is_err() {
        media.preview = None;
    }
    media
}

/// Writes `bytes` to `key`, trying `STORE_TRIES` times with backoff (about 20 s in all).
async fn put_patiently(
    store: &Arc<dyn ObjectStore>,
    key: &str,
    content_type: &str,
    bytes: bytes::Bytes,
) -> Result<u64, kiln_storage::StorageError> {
    let mut pause = Duration::from_millis(200);
    let mut tries = 0;
    loop {
        let body = futures::stream::iter([Ok(bytes.clone())]).boxed();
        match store.put(key, content_type, body).await {
            Ok(written) => return Ok(written),
            Err(e) => {
                tries += 1;
                // The cause (endpoints, request ids) is for the operator, not the tenant.
                tracing::warn!(key, error = %e, tries, "storing an object failed");
                if tries >= STORE_TRIES {
                    return Err(e);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

//! Storing an attempt's outputs, and describing them: what the executor does once a generator
//! has answered. An output in memory (a demo's, a data URI, OpenAI's `b64_json`) is written to
//! `jobs/{job}/{index}.{ext}` (deterministic, so a retried or rescued attempt overwrites instead
//! of duplicating); one an upstream names by URL (ComfyUI's `/view`, Replicate's and fal's CDNs)
//! is streamed from its download into the same key, never held whole, and counted against
//! `outputs.max_output_bytes` as it comes; one the generator uploaded itself (a Cog upload) is
//! recorded where it lies. Either way the output is then
//! described from its own bytes (`crate::media`: size, duration, frame rate) and its preview
//! stored beside it. Writes wait out a storage outage (`STORE_TRIES`), since the output in hand
//! is paid for and generating it again would pay twice.

use crate::provider::{Elsewhere, GeneratedOutput, ProviderError};
use crate::upstream::RemoteOutput;
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
        match output.elsewhere {
            Some(Elsewhere::Uploaded(key)) => {
                stored.push(describe_upload(store, index, key, expires_at).await?);
                continue;
            }
            Some(Elsewhere::Remote(remote)) => {
                let key_base = format!("jobs/{job_id}/{index}");
                let (key, content_type, bytes) = stream_remote(store, &key_base, &remote).await?;
                stored.push(
                    describe_stored(store, index, key, Some(content_type), bytes, expires_at)
                        .await?,
                );
                continue;
            }
            None => {}
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
    describe_stored(store, index, key, None, info.bytes, expires_at).await
}

/// The output record of an object in the store, described where it lies (ranged reads). Its
/// media type is `content_type` when the caller already sniffed it, else sniffed here from the
/// first bytes through the same reader (whose first block the description then reuses), else
/// taken from the key's extension.
async fn describe_stored(
    store: &Arc<dyn ObjectStore>,
    index: usize,
    key: String,
    content_type: Option<&'static str>,
    bytes: u64,
    expires_at: Timestamp,
) -> Result<NewOutput, ProviderError> {
    let mut reader = crate::media::StoreReader::new(
        store.clone(),
        key.clone(),
        bytes,
        tokio::runtime::Handle::current(),
    );
    let sniff_key = key.clone();
    let (content_type, described) = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek};
        let content_type = content_type.unwrap_or_else(|| {
            let mut head = Vec::with_capacity(64);
            let sniffed =
                (&mut reader).take(64).read_to_end(&mut head).is_ok() && reader.rewind().is_ok();
            sniffed
                .then(|| crate::upstream::sniff(&head).map(|(content_type, _)| content_type))
                .flatten()
                .unwrap_or_else(|| kiln_storage::media_type_of(&sniff_key))
        });
        (
            content_type,
            crate::media::describe(reader, bytes, content_type),
        )
    })
    .await
    .map_err(|e| ProviderError::fail("describe_failed", e.to_string()))?;
    Ok(NewOutput {
        index: index as u32,
        media: keep_preview(store, &key, described).await,
        object_key: key,
        content_type: content_type.to_owned(),
        bytes,
        expires_at,
    })
}

/// Streams an output an upstream named by URL into the store at `{key_base}.{ext}`, the
/// extension from its first bytes (a known image or video format, as for every output). Memory
/// is one chunk of the download and the store's buffer, whatever the size; the bytes are
/// counted against `outputs.max_output_bytes` as they come. A store that fails mid-write is
/// waited out as for any output, downloading again (the output is paid for, its download is
/// not); a download that fails is the attempt's failure, as before.
async fn stream_remote(
    store: &Arc<dyn ObjectStore>,
    key_base: &str,
    remote: &RemoteOutput,
) -> Result<(String, &'static str, u64), ProviderError> {
    let what = remote.what.as_str();
    let mut pause = Duration::from_millis(200);
    let mut tries = 0;
    loop {
        let response = remote.downloads.open(&remote.url, what).await?;
        let mut body = response.bytes_stream();
        // Enough of the start to tell the format.
        let mut head = Vec::new();
        let mut first = Vec::new();
        while head.len() < 64 {
            match body.next().await {
                Some(Ok(chunk)) => {
                    head.extend_from_slice(&chunk[..chunk.len().min(64)]);
                    first.push(chunk);
                }
                Some(Err(_)) => return Err(download_broke(what)),
                None => break,
            }
        }
        let (content_type, extension) = crate::upstream::sniff(&head).ok_or_else(|| {
            crate::upstream::malformed(what, "an output is not a known image or video format")
        })?;
        let key = format!("{key_base}.{extension}");
        // The download's own failure, told apart from the store's once `put` returns.
        let failed: Arc<std::sync::Mutex<Option<ProviderError>>> = Default::default();
        let limit = remote.downloads.max_bytes();
        let mut seen = 0u64;
        let stream = {
            let failed = failed.clone();
            let what = what.to_owned();
            futures::stream::iter(first.into_iter().map(Ok))
                .chain(body)
                .map(move |chunk| {
                    let outcome = match chunk {
                        Ok(chunk) => {
                            seen += chunk.len() as u64;
                            if seen <= limit {
                                return Ok(chunk);
                            }
                            crate::upstream::output_too_large(&what, limit)
                        }
                        Err(_) => download_broke(&what),
                    };
                    let message = outcome.error.message.clone();
                    *failed.lock().expect("not poisoned") = Some(outcome);
                    Err(std::io::Error::other(message))
                })
                .boxed()
        };
        match store.put(&key, content_type, stream).await {
            Ok(written) => return Ok((key, content_type, written)),
            Err(e) => {
                if let Some(download) = failed.lock().expect("not poisoned").take() {
                    return Err(download);
                }
                tries += 1;
                tracing::warn!(key, error = %e, tries, "storing a downloaded output failed");
                if tries >= STORE_TRIES {
                    return Err(ProviderError::retry(
                        "storage_unavailable",
                        "an output could not be stored",
                    ));
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn download_broke(what: &str) -> ProviderError {
    ProviderError::retry(
        "upstream_output_unavailable",
        format!("{what}: downloading an output broke off"),
    )
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

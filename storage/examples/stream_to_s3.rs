//! Benchmark: stream a large output into S3 and report the peak memory growth it cost.
//!
//! `cargo run --release -p kiln-storage --example stream_to_s3 -- 300`
//!
//! It starts its own s3s-fs (as the tests do), generates SIZE_MB of bytes lazily in 1 MiB chunks
//! (never holding the whole output), uploads them with `S3Store::put`, then compares the
//! process's peak resident set (`VmHWM`) with its resident set before the upload (`VmRSS`).

use bytes::Bytes;
use futures::StreamExt;
use kiln_core::testing::S3Server;
use kiln_storage::{ObjectStore, S3Settings, S3Store};
use std::time::Instant;

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let size_mb: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let server = S3Server::start();
    let store = S3Store::connect(&S3Settings {
        bucket: S3Server::BUCKET.into(),
        prefix: "bench".into(),
        endpoint: Some(server.endpoint()),
        public_endpoint: None,
        force_path_style: true,
        region: Some("us-east-1".into()),
        credentials: Some((S3Server::ACCESS_KEY.into(), S3Server::SECRET_KEY.into())),
    })
    .await
    .unwrap();
    store.check().await.unwrap();
    // Warm the client (TLS-free here, but connection pools and SDK caches) before measuring.
    store
        .put(
            "jobs/warm/0.bin",
            "application/octet-stream",
            futures::stream::iter([Ok(Bytes::from_static(b"x"))]).boxed(),
        )
        .await
        .unwrap();

    let chunk = Bytes::from(vec![7u8; 1024 * 1024]);
    let body = futures::stream::iter((0..size_mb).map(move |_| Ok(chunk.clone()))).boxed();
    let rss_before = status_kib("VmRSS:");
    let started = Instant::now();
    let written = store
        .put("jobs/bench/0.mp4", "video/mp4", body)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let peak = status_kib("VmHWM:");
    assert_eq!(written, (size_mb * 1024 * 1024) as u64);
    let on_disk = std::fs::metadata(server.root.join("kiln/bench/jobs/bench/0.mp4"))
        .unwrap()
        .len();
    assert_eq!(on_disk, written);
    println!(
        "streamed {size_mb} MB in {:.2} s ({:.0} MB/s); RSS before {} MiB, peak {} MiB, growth {} MiB",
        elapsed.as_secs_f64(),
        size_mb as f64 / elapsed.as_secs_f64(),
        rss_before / 1024,
        peak / 1024,
        peak.saturating_sub(rss_before) / 1024
    );
}

//! Downloads a player and a cache can use: one byte range answered `206` with exactly those
//! bytes, `416` past the end, `304` for a copy the client already holds, and the headers that
//! go with them, on Kiln's own download route (the local store) and on S3's presigned URLs
//! alike. Outputs carry what they are (size, a video's duration and rate) and a preview.

use crate::common::*;
use serde_json::json;

/// A video job's output: its URL and its whole bytes.
async fn video_output(kiln: &Kiln, key: &str) -> (String, Vec<u8>) {
    let image = kiln.submit_ok(key, image_job(96, 64)).await;
    let image = kiln.wait_terminal(key, &image).await;
    assert_eq!(image["status"], "succeeded", "{image:#}");
    let video = kiln
        .submit_ok(
            key,
            json!({"model": "demo/video", "input": {"image": image["outputs"][0]["url"], "seconds": 1, "fps": 6}}),
        )
        .await;
    let video = kiln.wait_terminal(key, &video).await;
    assert_eq!(video["status"], "succeeded", "{video:#}");
    // The output says what it is, read from the file, and offers a small preview.
    let output = &video["outputs"][0];
    assert_eq!(output["content_type"], "video/mp4");
    assert_eq!(
        (output["width"].as_u64(), output["height"].as_u64()),
        (Some(96), Some(64))
    );
    assert_eq!(output["duration_seconds"], 1.0);
    assert_eq!(output["fps"], 6.0);
    let preview = kiln
        .http
        .get(output["preview_url"].as_str().expect("a preview_url"))
        .send()
        .await
        .unwrap();
    assert_eq!(preview.status(), 200);
    let poster = image::load_from_memory_with_format(
        &preview.bytes().await.unwrap(),
        image::ImageFormat::Jpeg,
    )
    .unwrap();
    assert_eq!((poster.width(), poster.height()), (96, 64));
    let image_output = &image["outputs"][0];
    assert_eq!(
        (
            image_output["width"].as_u64(),
            image_output["height"].as_u64()
        ),
        (Some(96), Some(64))
    );
    assert!(image_output["preview_url"].is_string(), "{image_output:#}");
    assert!(image_output.get("duration_seconds").is_none());

    let url = output["url"].as_str().unwrap().to_owned();
    let whole = kiln.http.get(&url).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    let bytes = whole.bytes().await.unwrap().to_vec();
    assert!(bytes.len() > 2000, "the clip has {} bytes", bytes.len());
    (url, bytes)
}

/// What every store's downloads answer to a range, past the end, and a suffix; the answer to a
/// range past the end.
async fn ranges_are_served(http: &reqwest::Client, url: &str, whole: &[u8]) -> reqwest::Response {
    let len = whole.len();
    let part = http
        .get(url)
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 1000-1999/{len}").as_str()
    );
    assert_eq!(part.headers()["content-length"], "1000");
    assert_eq!(part.bytes().await.unwrap().as_ref(), &whole[1000..2000]);

    let tail = http
        .get(url)
        .header("Range", "bytes=-100")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &whole[len - 100..]);

    let past = http
        .get(url)
        .header("Range", format!("bytes={len}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(past.status(), 416);
    past
}

#[tokio::test(flavor = "multi_thread")]
async fn local_downloads_answer_ranges_and_conditional_requests() {
    let kiln = Kiln::start().await;
    let key = kiln.key("acme").await;
    let (url, whole) = video_output(&kiln, &key).await;
    let past = ranges_are_served(&kiln.http, &url, &whole).await;
    // Kiln's 416 says how long the object is, as RFC 9110 §15.5.17 asks.
    assert_eq!(
        past.headers()["content-range"],
        format!("bytes */{}", whole.len()).as_str()
    );

    let full = kiln.http.get(&url).send().await.unwrap();
    let headers = full.headers().clone();
    assert_eq!(headers["accept-ranges"], "bytes");
    assert_eq!(headers["content-length"], whole.len().to_string().as_str());
    assert!(headers.contains_key("last-modified"));
    let disposition = headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("inline; filename=\"") && disposition.contains("-0."),
        "{disposition}"
    );
    // The URL lives until the output expires (7 days); a cache keeps it at most an hour, and
    // never past the URL's own end.
    let cache = headers["cache-control"].to_str().unwrap();
    let max_age: i64 = cache
        .rsplit("max-age=")
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("{cache}"));
    assert!((1..=3600).contains(&max_age), "{cache}");

    let etag = headers["etag"].to_str().unwrap().to_owned();
    let cached = kiln
        .http
        .get(&url)
        .header("If-None-Match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    assert!(cached.bytes().await.unwrap().is_empty());

    // A range for another version of the object is not applied: the whole object comes back.
    let stale = kiln
        .http
        .get(&url)
        .header("Range", "bytes=0-9")
        .header("If-Range", "\"another-version\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.bytes().await.unwrap().len(), whole.len());
    let same = kiln
        .http
        .get(&url)
        .header("Range", "bytes=0-9")
        .header("If-Range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(same.status(), 206);
    assert_eq!(same.bytes().await.unwrap().as_ref(), &whole[..10]);
    kiln.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn presigned_s3_downloads_answer_the_same_ranges() {
    let kiln = Kiln::start_production(|_| {}).await;
    let key = kiln.key("acme").await;
    let (url, whole) = video_output(&kiln, &key).await;
    assert!(
        !url.contains("/v1/files/"),
        "the output URL is presigned by the S3 server: {url}"
    );
    ranges_are_served(&kiln.http, &url, &whole).await;
    kiln.shutdown().await;
}

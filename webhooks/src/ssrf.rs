//! The SSRF-safe HTTP client. A user-supplied URL is checked twice: at submit (`check_url`: only
//! http(s), no literal forbidden address, no `localhost`) and at connect, where Kiln's own DNS
//! resolver drops every forbidden address before the connection is made, so the address that was
//! checked is the address that is dialled and DNS rebinding gains nothing. Redirects are never
//! followed and proxies from the environment are ignored, since either would route around the
//! check. Local development may allow-list ranges explicitly.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use url::{Host, Url};

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Forbidden(String),
    #[error("the response is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the server answered {0}")]
    Status(u16),
    #[error("the server answered with a redirect, which Kiln does not follow")]
    Redirect,
    #[error("the server answered with content of type {0}, which is not accepted here")]
    ContentType(String),
    #[error("the request failed: {0}")]
    Transport(String),
}

impl FetchError {
    /// Whether trying again later could succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::Status(s) => *s == 429 || *s >= 500,
            FetchError::Transport(_) => true,
            _ => false,
        }
    }
}

/// Which addresses outbound requests may reach.
#[derive(Debug, Clone, Default)]
pub struct SsrfPolicy {
    allow: Vec<IpNet>,
}

impl SsrfPolicy {
    /// `allow` lists ranges that are reachable even though they are private (local development).
    pub fn new(allow: Vec<IpNet>) -> Self {
        SsrfPolicy { allow }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|net| net.contains(&ip)) || !is_forbidden(ip)
    }

    /// The submit-time check. Hostnames are checked again at connect.
    pub fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::Forbidden(format!(
                "only http and https URLs are allowed, not {}",
                url.scheme()
            )));
        }
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            Some(Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                // `localhost` names loopback (RFC 6761) whatever DNS says: it is as reachable as
                // loopback is, which is nowhere unless the policy allows loopback (the embedded
                // default does for webhooks, so local workflow tools can receive them).
                let loopback = [
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ];
                if (d == "localhost" || d.ends_with(".localhost"))
                    && !loopback.iter().any(|ip| self.permits(*ip))
                {
                    return Err(FetchError::Forbidden(
                        "the URL points at this machine (localhost)".into(),
                    ));
                }
                return Ok(());
            }
            None => return Err(FetchError::Forbidden("the URL has no host".into())),
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(FetchError::Forbidden(format!(
                "the URL points at a private or reserved address ({ip})"
            )))
        }
    }
}

impl SsrfPolicy {
    /// The submit-time check with the host name resolved too, so a name that points at a
    /// forbidden address is refused with a clear answer now rather than failing at send. A
    /// name that does not resolve yet passes: the check at connect still holds.
    pub async fn check_url_resolving(&self, url: &Url) -> Result<(), FetchError> {
        self.check_url(url)?;
        let (Some(Host::Domain(name)), Some(port)) = (url.host(), url.port_or_known_default())
        else {
            return Ok(());
        };
        // Bounded: a slow name server chosen by the caller must not hold the request.
        let lookup = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::lookup_host((name, port)),
        );
        let Ok(Ok(addrs)) = lookup.await else {
            return Ok(());
        };
        for addr in addrs {
            if !self.permits(addr.ip()) {
                // The address itself is not named: the answer must not map internal DNS.
                return Err(FetchError::Forbidden(format!(
                    "{name} resolves to a private or reserved address"
                )));
            }
        }
        Ok(())
    }
}

/// Loopback, private, link-local (cloud metadata included), CGNAT, unique-local, multicast,
/// reserved and documentation ranges, and IPv6 forms that embed such an IPv4 address.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => is_forbidden_v6(v6),
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || a >= 240 // reserved
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_forbidden_v4(v4);
    }
    let seg = ip.segments();
    let embedded_v4 = || {
        Ipv4Addr::new(
            (seg[6] >> 8) as u8,
            seg[6] as u8,
            (seg[7] >> 8) as u8,
            seg[7] as u8,
        )
    };
    // Translation prefixes that carry an IPv4 address in their last 32 bits: IPv4-compatible
    // (::/96), SIIT (::ffff:0:0:0/96) and NAT64 well-known (64:ff9b::/96). They are as safe as
    // the IPv4 address they lead to.
    let translated = seg[..6] == [0, 0, 0, 0, 0, 0]
        || seg[..6] == [0, 0, 0, 0, 0xffff, 0]
        || seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    if translated {
        return ip.is_unspecified() || ip.is_loopback() || is_forbidden_v4(embedded_v4());
    }
    // The local-use NAT64 prefix (64:ff9b:1::/48, RFC 8215) is a network's own translator: the
    // IPv4 address sits wherever that network's prefix length puts it (RFC 6052 spreads it
    // around the reserved octet for prefixes shorter than /96), so no fixed 32 bits tell where
    // it leads. It is refused whole; it is not globally reachable anyway.
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        return true;
    }
    // Only global unicast (2000::/3) is reachable, less its special-purpose parts: Teredo and
    // other IETF assignments (2001::/23), documentation (2001:db8::/32) and 6to4 (2002::/16),
    // which embed arbitrary IPv4 addresses. Everything else (loopback, unique and link local,
    // multicast, discard 100::/64, …) is outside 2000::/3.
    let global_unicast = (seg[0] & 0xe000) == 0x2000;
    !global_unicast
        || (seg[0] == 0x2001 && seg[1] < 0x0200)
        || (seg[0] == 0x2001 && seg[1] == 0x0db8)
        || seg[0] == 0x2002
}

/// Resolves names and keeps only permitted addresses, so reqwest connects to nothing else.
struct CheckedResolver {
    policy: SsrfPolicy,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if permitted.is_empty() {
                let why = if found.is_empty() {
                    format!("{host} does not resolve")
                } else {
                    format!("{host} resolves only to private or reserved addresses")
                };
                return Err(Box::new(FetchError::Forbidden(why))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as Addrs)
        })
    }
}

/// The one client for user-chosen URLs.
#[derive(Clone)]
pub struct SafeClient {
    client: reqwest::Client,
    policy: SsrfPolicy,
}

impl SafeClient {
    pub fn new(policy: SsrfPolicy, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(CheckedResolver {
                policy: policy.clone(),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .timeout(timeout)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client configuration is valid");
        SafeClient { client, policy }
    }

    pub fn policy(&self) -> &SsrfPolicy {
        &self.policy
    }

    /// GETs `url` into memory, refusing bodies over `max_bytes` (checked while streaming, not
    /// trusted from Content-Length alone) and, when `accept` names media-type prefixes (such as
    /// `image/`), any declared content type outside them (`application/octet-stream` and an
    /// undeclared type pass: the caller's decoder has the last word).
    pub async fn fetch(
        &self,
        url: &Url,
        max_bytes: u64,
        accept: &[&str],
    ) -> Result<Bytes, FetchError> {
        let response = self.open(url, max_bytes, accept).await?;
        let mut body = BytesMut::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(transport)?;
            if body.len() as u64 + chunk.len() as u64 > max_bytes {
                return Err(FetchError::TooLarge(max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// What `fetch` checks before reading a byte of the body (the address, the status, a
    /// declared length over `max_bytes`, a declared type outside `accept`); the body is left to
    /// the caller to stream, counting it against its own limit as it goes.
    pub async fn open(
        &self,
        url: &Url,
        max_bytes: u64,
        accept: &[&str],
    ) -> Result<reqwest::Response, FetchError> {
        self.policy.check_url(url)?;
        let response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if status.is_redirection() {
            return Err(FetchError::Redirect);
        }
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        if response.content_length().is_some_and(|n| n > max_bytes) {
            return Err(FetchError::TooLarge(max_bytes));
        }
        if let Some(declared) = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            let media = declared
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            let acceptable = accept.is_empty()
                || media == "application/octet-stream"
                || accept.iter().any(|prefix| media.starts_with(prefix));
            if !acceptable {
                return Err(FetchError::ContentType(media));
            }
        }
        Ok(response)
    }
}

/// What a webhook receiver answered.
#[derive(Debug, Clone)]
pub struct PostAnswer {
    pub status: u16,
    /// The receiver's `Retry-After`, in seconds.
    pub retry_after: Option<Duration>,
}

impl SafeClient {
    /// POSTs a JSON body with `headers`; the answer's body is read and dropped (up to 64 KiB),
    /// so a receiver cannot hold the connection with a slow, endless answer.
    pub async fn post_json(
        &self,
        url: &Url,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<PostAnswer, FetchError> {
        self.policy.check_url(url)?;
        let mut call = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            call = call.header(*name, value);
        }
        let response = call.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut read = 0usize;
        let mut stream = response.bytes_stream();
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > 64 * 1024 {
                break;
            }
        }
        Ok(PostAnswer {
            status,
            retry_after,
        })
    }
}

/// Surfaces the resolver's refusal as `Forbidden` instead of a generic transport error.
fn transport(e: reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(FetchError::Forbidden(why)) = err.downcast_ref::<FetchError>() {
            return FetchError::Forbidden(why.clone());
        }
        source = err.source();
    }
    FetchError::Transport(e.without_url().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn forbidden_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            // Local-use NAT64 with a /48 prefix puts 10.0.0.1 in bits 48..88, not the last 32.
            "64:ff9b:1:a00:1::",
            "64:ff9b:1::808:808",
        ] {
            assert!(is_forbidden(ip.parse().unwrap()), "{ip} must be forbidden");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_forbidden(ip.parse().unwrap()), "{ip} must be allowed");
        }
    }

    #[test]
    fn submit_time_check() {
        let p = SsrfPolicy::default();
        for bad in [
            "http://127.0.0.1/x",
            "http://[::1]/",
            "http://localhost:8080/",
            "http://api.localhost/",
            "http://169.254.169.254/latest/meta-data",
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://[::ffff:10.0.0.1]/",
            "http://2130706433/",
        ] {
            assert!(p.check_url(&Url::parse(bad).unwrap()).is_err(), "{bad}");
        }
        assert!(p
            .check_url(&Url::parse("https://example.com/a.png").unwrap())
            .is_ok());
        let dev = SsrfPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert!(dev
            .check_url(&Url::parse("http://127.0.0.1:9/x").unwrap())
            .is_ok());
        // Where loopback is allowed, `localhost` is too: it names loopback.
        for local in ["http://localhost:5678/webhook", "http://n8n.localhost/x"] {
            assert!(
                dev.check_url(&Url::parse(local).unwrap()).is_ok(),
                "{local}"
            );
        }
    }

    /// A one-shot HTTP server on loopback answering every connection with `response`.
    async fn serve(response: &'static str) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(response.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_is_refused_at_connect() {
        let port = serve("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
        let client = SafeClient::new(SsrfPolicy::default(), Duration::from_secs(5));
        let url = Url::parse(&format!("http://localhost:{port}/")).unwrap();
        assert!(matches!(
            client.fetch(&url, 100, &[]).await,
            Err(FetchError::Forbidden(_))
        ));
        // The connect-time resolver refuses on its own, without the submit-time name check.
        let resolver = CheckedResolver {
            policy: SsrfPolicy::default(),
        };
        let refused = resolver.resolve("localhost".parse().unwrap()).await;
        assert!(
            refused.is_err(),
            "a name that resolves to loopback must not be dialled"
        );
        // With loopback allow-listed the same request succeeds, so the refusal was the policy's.
        let dev = SafeClient::new(
            SsrfPolicy::new(vec![
                "127.0.0.0/8".parse().unwrap(),
                "::1/128".parse().unwrap(),
            ]),
            Duration::from_secs(5),
        );
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        assert_eq!(
            dev.fetch(&url, 100, &[]).await.unwrap(),
            Bytes::from_static(b"ok")
        );
    }

    #[tokio::test]
    async fn declared_content_types_must_match() {
        let dev = SafeClient::new(
            SsrfPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]),
            Duration::from_secs(5),
        );
        let html = serve("HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: 2\r\n\r\nhi").await;
        let url = Url::parse(&format!("http://127.0.0.1:{html}/")).unwrap();
        assert!(
            matches!(dev.fetch(&url, 100, &["image/"]).await, Err(FetchError::ContentType(t)) if t == "text/html")
        );
        assert!(
            dev.fetch(&url, 100, &[]).await.is_ok(),
            "no restriction asked for"
        );
        let png =
            serve("HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 2\r\n\r\nok")
                .await;
        let url = Url::parse(&format!("http://127.0.0.1:{png}/")).unwrap();
        assert!(dev.fetch(&url, 100, &["image/"]).await.is_ok());
    }

    #[tokio::test]
    async fn redirects_are_not_followed_and_bodies_are_capped() {
        let dev = SafeClient::new(
            SsrfPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]),
            Duration::from_secs(5),
        );
        let port = serve(
            "HTTP/1.1 302 Found\r\nlocation: http://169.254.169.254/\r\ncontent-length: 0\r\n\r\n",
        )
        .await;
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        assert!(matches!(
            dev.fetch(&url, 100, &[]).await,
            Err(FetchError::Redirect)
        ));
        let port = serve("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n0123456789").await;
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        assert!(matches!(
            dev.fetch(&url, 5, &[]).await,
            Err(FetchError::TooLarge(5))
        ));
        let port = serve("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n0123456789").await;
        let url = Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        assert!(matches!(
            dev.fetch(&url, 5, &[]).await,
            Err(FetchError::TooLarge(5))
        ));
    }
}

//! Where an input image comes from, and the grammar of the text that names it: an http(s) URL,
//! a base64 `data:` URI of an image, or a `kiln://jobs/{id}/outputs/{n}` reference to one of
//! the caller's outputs. `IMAGE_SOURCE_PATTERN` is that grammar, published in each model's
//! input schema, and `ImageSource::parse` takes exactly the strings it matches (the pattern is
//! checked first, so the document and the validator cannot drift). The URL grammar is a plain
//! subset of what a URL parser takes: a DNS name whose last label starts with a letter, or a
//! dotted IPv4 address; a port up to 65535; no user info.
//!
//! Whether a URL may be fetched (the SSRF policy) and whether a referenced output exists are
//! not shape: the api checks them against its configuration and the ledger.

use base64::Engine;
use std::sync::LazyLock;
use url::Url;

/// Largest decoded image accepted inline as a data URI.
pub const MAX_DATA_URI_BYTES: usize = 6 * 1024 * 1024;
/// Longest media type a `data:` input may name.
pub const MAX_MEDIA_TYPE_BYTES: usize = 100;
/// Longest image source text: a data URI of the largest image with the longest media type. The
/// length is what is checked (the pattern cannot count), so a data URI with a shorter media type
/// may carry a few bytes more than `MAX_DATA_URI_BYTES`.
pub const IMAGE_SOURCE_MAX_CHARS: usize =
    "data:".len() + MAX_MEDIA_TYPE_BYTES + ";base64,".len() + MAX_DATA_URI_BYTES.div_ceil(3) * 4;

/// An http(s) URL as Kiln takes one (see the module's doc), unanchored: a macro, so that the
/// patterns built on it are literals.
macro_rules! http_url {
    () => {
        concat!(
            "https?://",
            "(?:(?:[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*\\.)*[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*",
            "|(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
            // An IPv6 literal: the full and compressed forms, and IPv4-mapped addresses.
            "|\\[(?:",
            "(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}",
            "|(?:[0-9a-fA-F]{1,4}:){1,7}:",
            "|(?:[0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}",
            "|(?:[0-9a-fA-F]{1,4}:){1,5}(?::[0-9a-fA-F]{1,4}){1,2}",
            "|(?:[0-9a-fA-F]{1,4}:){1,4}(?::[0-9a-fA-F]{1,4}){1,3}",
            "|(?:[0-9a-fA-F]{1,4}:){1,3}(?::[0-9a-fA-F]{1,4}){1,4}",
            "|(?:[0-9a-fA-F]{1,4}:){1,2}(?::[0-9a-fA-F]{1,4}){1,5}",
            "|[0-9a-fA-F]{1,4}:(?::[0-9a-fA-F]{1,4}){1,6}",
            "|:(?:(?::[0-9a-fA-F]{1,4}){1,7}|:)",
            "|::(?:[fF]{4}:)?(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])",
            ")\\])",
            "(?::(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
            "(?:[/?#][\\x21-\\x7e]*)?",
        )
    };
}

/// An http(s) URL Kiln takes: for webhooks, and the URL form of an image source.
pub const HTTP_URL_PATTERN: &str = concat!("^", http_url!(), "$");

/// The grammar of an image source (see the module's doc).
pub const IMAGE_SOURCE_PATTERN: &str = concat!(
    "^",
    http_url!(),
    "$",
    // 94: `MAX_MEDIA_TYPE_BYTES` less "image/" (a test holds them together).
    "|^data:image/[a-z0-9.+-]{1,94};base64,(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
    "|^kiln://jobs/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}/outputs/[0-9]{1,9}$",
);

/// The header of a data URI, up to its comma: `IMAGE_SOURCE_PATTERN`'s data branch without the
/// data (a test holds the two together).
static DATA_HEADER: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new("^data:image/[a-z0-9.+-]{1,94};base64,$")
        .expect("the header pattern compiles")
});

static HTTP_URL: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(HTTP_URL_PATTERN).expect("the URL pattern compiles"));

/// `text` parsed as an http(s) URL, if it is one of the shape `HTTP_URL_PATTERN` publishes.
pub fn parse_http_url(text: &str) -> Option<Url> {
    HTTP_URL
        .is_match(text)
        .then(|| Url::parse(text).ok())
        .flatten()
}

static GRAMMAR: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(IMAGE_SOURCE_PATTERN).expect("the image source pattern compiles")
});

/// Where an input image comes from. Fetching is the worker's business; the catalog only checks
/// the shape (and decodes data URIs, which need no fetch).
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    Inline {
        content_type: String,
        bytes: Vec<u8>,
    },
    Url(Url),
    /// `kiln://jobs/{id}/outputs/{n}`: one of the caller's earlier outputs, read from storage
    /// by its key (never re-downloaded through a public URL); tenant-checked at submit and at
    /// run.
    Output {
        job: crate::JobId,
        index: u32,
    },
}

impl ImageSource {
    /// The `kiln://` reference to output `index` of `job`.
    pub fn output_reference(job: crate::JobId, index: u32) -> String {
        format!("kiln://jobs/{job}/outputs/{index}")
    }

    /// The source `text` names, or the refusal's code and reason.
    pub fn parse(text: &str) -> Result<ImageSource, (&'static str, String)> {
        let code = if text.starts_with("data:") {
            "invalid_data_uri"
        } else if text.starts_with("kiln://") {
            "invalid_reference"
        } else {
            "invalid_url"
        };
        if text.len() > IMAGE_SOURCE_MAX_CHARS {
            return Err((
                code,
                format!("an image source is at most {IMAGE_SOURCE_MAX_CHARS} characters (a {MAX_DATA_URI_BYTES}-byte image as a data: URI)"),
            ));
        }
        // A data URI's header is matched here and its data by the decoder, whose alphabet and
        // padding rules are the pattern's: a regex need not walk megabytes of base64.
        let shaped = match text.split_once(',') {
            Some((header, _)) if code == "invalid_data_uri" => {
                DATA_HEADER.is_match(&text[..header.len() + 1])
            }
            _ => GRAMMAR.is_match(text),
        };
        if !shaped {
            let why = match code {
                "invalid_data_uri" => "a data: URI must be data:image/{type};base64,{base64 data}",
                "invalid_reference" => "must look like kiln://jobs/{job id}/outputs/{index}",
                _ => "must be an http(s) URL with a DNS name or an IP address, a data: URI, or a kiln:// reference",
            };
            return Err((code, why.to_owned()));
        }
        if let Some(rest) = text.strip_prefix("data:") {
            return parse_data_uri(rest).map_err(|why| (code, why));
        }
        if let Some(rest) = text.strip_prefix("kiln://") {
            return parse_output_reference(rest).ok_or_else(|| {
                (
                    code,
                    "must look like kiln://jobs/{job id}/outputs/{index}".to_owned(),
                )
            });
        }
        Url::parse(text)
            .map(ImageSource::Url)
            .map_err(|e| (code, format!("not a valid URL: {e}")))
    }
}

/// `jobs/{id}/outputs/{n}` (after `kiln://`).
fn parse_output_reference(rest: &str) -> Option<ImageSource> {
    let (job, index) = rest.strip_prefix("jobs/")?.split_once("/outputs/")?;
    Some(ImageSource::Output {
        job: job.parse().ok()?,
        index: index.parse().ok()?,
    })
}

/// `image/{type};base64,{data}` (after `data:`), the grammar already checked.
fn parse_data_uri(rest: &str) -> Result<ImageSource, String> {
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| "a data: URI needs a ',' before its data".to_owned())?;
    let content_type = meta
        .strip_suffix(";base64")
        .ok_or_else(|| "only base64 data: URIs are accepted".to_owned())?;
    // Trailing bits past the last whole byte are ignored, as most decoders do and as the
    // pattern (which cannot see bits) allows.
    const LENIENT: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    let bytes = LENIENT
        .decode(data)
        .map_err(|e| format!("the data: URI is not valid base64: {e}"))?;
    Ok(ImageSource::Inline {
        content_type: content_type.to_owned(),
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_source_is_read() {
        assert!(matches!(
            ImageSource::parse("https://img.example.com:8443/a.png?x=1"),
            Ok(ImageSource::Url(_))
        ));
        assert!(matches!(
            ImageSource::parse("http://127.0.0.1:1/x.png"),
            Ok(ImageSource::Url(_))
        ));
        let inline = ImageSource::parse("data:image/png;base64,iVBORw0KGgo=").unwrap();
        assert!(
            matches!(inline, ImageSource::Inline { ref content_type, .. } if content_type == "image/png")
        );
        let job = crate::JobId::new();
        assert_eq!(
            ImageSource::parse(&ImageSource::output_reference(job, 3)),
            Ok(ImageSource::Output { job, index: 3 })
        );
    }

    #[test]
    fn what_the_grammar_refuses_is_refused_with_its_kind() {
        for (text, code) in [
            ("ftp://example.com/a.png", "invalid_url"),
            ("https://user@example.com/a.png", "invalid_url"),
            ("https://1.2.3.999/a.png", "invalid_url"),
            ("https://example.com:65536/a.png", "invalid_url"),
            ("https://xn--a/a.png", "invalid_url"),
            ("https://example.com a.png", "invalid_url"),
            ("http://[1:2:3:4:5:6:7:8:9]/", "invalid_url"),
            ("http://[:::]/", "invalid_url"),
            ("data:text/plain;base64,aGk=", "invalid_data_uri"),
            ("data:image/png,raw", "invalid_data_uri"),
            ("data:image/png;base64,abc", "invalid_data_uri"),
            ("data:image/png;base64, aGk=", "invalid_data_uri"),
            ("kiln://jobs/x/outputs/0", "invalid_reference"),
            (
                "kiln://jobs/01890000-0000-7000-8000-000000000000/outputs/",
                "invalid_reference",
            ),
        ] {
            assert_eq!(
                ImageSource::parse(text).map_err(|e| e.0),
                Err(code),
                "{text}"
            );
        }
        let huge = format!(
            "data:image/png;base64,{}",
            "A".repeat(IMAGE_SOURCE_MAX_CHARS)
        );
        assert_eq!(
            ImageSource::parse(&huge).map_err(|e| e.0),
            Err("invalid_data_uri")
        );
    }

    #[test]
    fn the_media_type_bound_in_the_pattern_is_the_constant() {
        let longest = format!(
            "data:image/{};base64,",
            "a".repeat(MAX_MEDIA_TYPE_BYTES - "image/".len())
        );
        assert!(GRAMMAR.is_match(&longest));
        let longer = format!(
            "data:image/{};base64,",
            "a".repeat(MAX_MEDIA_TYPE_BYTES - "image/".len() + 1)
        );
        assert!(!GRAMMAR.is_match(&longer));
    }

    /// The data branch: what the header check and the decoder take together is what the
    /// pattern matches.
    #[test]
    fn data_uris_are_taken_exactly_as_the_pattern_says() {
        for data in [
            "", "AAAA", "AA==", "AAA=", "K0==", "A", "AA", "AAA", "AA=", "A===", "AA==AAAA",
            "AA AA", "AA\nAA", "====", "AAAA=",
        ] {
            for header in [
                "data:image/png;base64,",
                "data:image/PNG;base64,",
                "data:image/;base64,",
                "data:image/png,",
            ] {
                let text = format!("{header}{data}");
                assert_eq!(
                    GRAMMAR.is_match(&text),
                    ImageSource::parse(&text).is_ok(),
                    "{text:?}"
                );
            }
        }
    }

    /// Everything the grammar matches, the parser takes: hosts and ports at their edges.
    #[test]
    fn every_string_the_grammar_matches_is_taken() {
        for text in [
            "http://a",
            "https://a-b.c-d.e",
            "http://0.0.0.0",
            "http://255.255.255.255:65535",
            "http://a:0",
            "http://A.B/%zz",
            "https://a.b#frag",
            "http://a?q",
            "http://x1.y2/~!$&'()*+,;=:@",
            "data:image/svg+xml;base64,",
            "data:image/x.y-z;base64,AAAA",
        ] {
            assert!(GRAMMAR.is_match(text), "{text}");
            assert!(ImageSource::parse(text).is_ok(), "{text}");
        }
    }
}

//! What an output is, read from its own bytes: width and height for images, and for videos
//! also duration and frame rate, plus a small preview image (a poster frame for video). Nothing
//! external runs: image headers through `image`, MP4/MOV through the `mp4` crate's box reader,
//! GIF frame timing through `gif`, and a video's first frame through OpenH264's decoder.
//!
//! Everything here reads through `Read + Seek`, so an output in memory (a `Cursor`) and one
//! already in the store (`StoreReader`, ranged reads) are described the same way, and no output
//! is read whole for it: an image's header, an MP4's `moov` box and first sample, a PNG a row
//! at a time (shrunk as it streams, whatever its size), a GIF's first frame. Other image
//! formats are decoded for their preview only up to `MAX_PREVIEW_SOURCE_PIXELS`. A file that is
//! none of these, or that fails to parse, simply has no metadata: describing an output never
//! fails its job.

use image::codecs::jpeg::JpegEncoder;
use image::{ImageReader, RgbImage};
use kiln_core::OutputMedia;
use std::io::{BufReader, Read, Seek, SeekFrom};

/// A preview fits in this square.
pub const PREVIEW_SIDE: u32 = 256;
/// Largest image (other than PNG, which is shrunk as it streams) decoded whole for a preview.
pub const MAX_PREVIEW_SOURCE_PIXELS: u64 = 4096 * 4096;
/// The decoder's allocation limit for such an image (16-bit RGBA at the pixel limit is 128 MiB;
/// an 8-bit RGB one, the usual case, 48 MiB).
const MAX_PREVIEW_DECODE_BYTES: u64 = 64 * 1024 * 1024;

/// What was learned of an output, and its preview where it has one (`media.preview` is left for
/// the caller, which knows whether the preview could be stored).
pub struct Described {
    pub media: OutputMedia,
    pub preview: Option<PreviewImage>,
}

pub enum PreviewImage {
    /// A JPEG made from the output.
    Jpeg(Vec<u8>),
    /// The output is an image within `PREVIEW_SIDE`: its own preview.
    Itself,
}

/// Describes an output of `len` bytes and media type `content_type`.
pub fn describe<R: Read + Seek>(mut reader: R, len: u64, content_type: &str) -> Described {
    let mut described = Described {
        media: OutputMedia::default(),
        preview: None,
    };
    match content_type {
        "video/mp4" | "video/quicktime" => {
            if let Some((media, poster)) = describe_mp4(&mut reader, len) {
                described.media = media;
                described.preview = poster.map(PreviewImage::Jpeg);
            }
        }
        t if t.starts_with("image/") => {
            described.media = match t {
                "image/gif" => gif_timing(&mut reader).unwrap_or_default(),
                _ => image_size(&mut reader),
            };
            let (Some(w), Some(h)) = (described.media.width, described.media.height) else {
                return described;
            };
            let browsers_show =
                matches!(t, "image/png" | "image/jpeg" | "image/gif" | "image/webp");
            described.preview = if browsers_show && w.max(h) <= PREVIEW_SIDE {
                Some(PreviewImage::Itself)
            } else if rewind(&mut reader).is_none() {
                None
            } else if t == "image/png" {
                preview_png(&mut reader).map(PreviewImage::Jpeg)
            } else {
                preview_decoded(&mut reader).map(PreviewImage::Jpeg)
            };
        }
        _ => {}
    }
    described
}

/// The description of an image within `PREVIEW_SIDE` (its own preview), read from its header
/// alone: cheap enough to run where the output is, without a hop to the blocking pool. `None`
/// for anything else, which `describe` handles.
pub fn small_image(bytes: &[u8], content_type: &str) -> Option<Described> {
    if !matches!(content_type, "image/png" | "image/jpeg" | "image/webp") {
        return None;
    }
    let media = image_size(&mut std::io::Cursor::new(bytes));
    let (w, h) = (media.width?, media.height?);
    (w.max(h) <= PREVIEW_SIDE).then_some(Described {
        media,
        preview: Some(PreviewImage::Itself),
    })
}

fn rewind<R: Seek>(reader: &mut R) -> Option<()> {
    reader.seek(SeekFrom::Start(0)).ok().map(|_| ())
}

fn image_size<R: Read + Seek>(reader: &mut R) -> OutputMedia {
    let size = ImageReader::new(BufReader::new(reader))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok());
    OutputMedia {
        width: size.map(|(w, _)| w),
        height: size.map(|(_, h)| h),
        ..OutputMedia::default()
    }
}

/// A GIF's size, and its duration and average frame rate from its frames' delays (frames are
/// walked, their pixels not kept). A single-frame GIF is a still image: no duration.
fn gif_timing<R: Read>(reader: &mut R) -> Option<OutputMedia> {
    let mut options = gif::DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    let mut decoder = options.read_info(BufReader::new(reader)).ok()?;
    let (width, height) = (u32::from(decoder.width()), u32::from(decoder.height()));
    let (mut frames, mut centiseconds) = (0u64, 0u64);
    while let Ok(Some(frame)) = decoder.next_frame_info() {
        frames += 1;
        centiseconds += u64::from(frame.delay);
    }
    let mut media = OutputMedia {
        width: Some(width),
        height: Some(height),
        ..OutputMedia::default()
    };
    if frames > 1 && centiseconds > 0 {
        let seconds = centiseconds as f64 / 100.0;
        media.duration_seconds = Some(seconds);
        media.fps = Some(frames as f64 / seconds);
    }
    Some(media)
}

/// An MP4's (or MOV's) first video track: size, duration, frame rate, and a poster frame when
/// it is H.264.
fn describe_mp4<R: Read + Seek>(
    reader: &mut R,
    len: u64,
) -> Option<(OutputMedia, Option<Vec<u8>>)> {
    let mut mp4 = mp4::Mp4Reader::read_header(BufReader::new(reader), len).ok()?;
    let track = mp4
        .tracks()
        .values()
        .find(|t| matches!(t.track_type(), Ok(mp4::TrackType::Video)))?;
    let seconds = track.duration().as_secs_f64();
    let frames = track.sample_count();
    let media = OutputMedia {
        width: Some(u32::from(track.width())),
        height: Some(u32::from(track.height())),
        duration_seconds: (seconds > 0.0).then_some(seconds),
        fps: (seconds > 0.0 && frames > 0).then(|| f64::from(frames) / seconds),
        preview: None,
    };
    let is_h264 = matches!(track.media_type(), Ok(mp4::MediaType::H264));
    let parameter_sets = is_h264
        .then(|| {
            Some((
                track.sequence_parameter_set().ok()?.to_vec(),
                track.picture_parameter_set().ok()?.to_vec(),
            ))
        })
        .flatten();
    let id = track.track_id();
    let poster = parameter_sets.and_then(|(sps, pps)| {
        let sample = mp4.read_sample(id, 1).ok()??;
        poster_frame(&sps, &pps, &sample.bytes)
    });
    Some((media, poster))
}

/// Decodes an H.264 key frame (length-prefixed NAL units, as MP4 stores them) into a preview.
fn poster_frame(sps: &[u8], pps: &[u8], sample: &[u8]) -> Option<Vec<u8>> {
    use openh264::formats::YUVSource;
    // OpenH264 reads Annex B: each NAL unit after a start code, the parameter sets first.
    let mut annex_b = Vec::with_capacity(sample.len() + sps.len() + pps.len() + 16);
    for nal in [sps, pps] {
        annex_b.extend_from_slice(&[0, 0, 0, 1]);
        annex_b.extend_from_slice(nal);
    }
    let mut rest = sample;
    while rest.len() >= 4 {
        let n = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
        let nal = rest.get(4..4 + n)?;
        annex_b.extend_from_slice(&[0, 0, 0, 1]);
        annex_b.extend_from_slice(nal);
        rest = &rest[4 + n..];
    }
    let mut decoder = openh264::decoder::Decoder::new().ok()?;
    let frame = decoder.decode(&annex_b).ok()??;
    let (w, h) = frame.dimensions();
    let mut rgb = vec![0u8; w * h * 3];
    frame.write_rgb8(&mut rgb);
    let image = RgbImage::from_raw(w as u32, h as u32, rgb)?;
    Some(jpeg(&shrunk(image::DynamicImage::ImageRgb8(image))))
}

/// A preview of an image the `image` crate decodes whole (JPEG, WebP, a GIF's first frame),
/// when it is small enough to decode.
fn preview_decoded<R: Read + Seek>(reader: &mut R) -> Option<Vec<u8>> {
    let mut image = ImageReader::new(BufReader::new(reader))
        .with_guessed_format()
        .ok()?;
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_PREVIEW_DECODE_BYTES);
    image.limits(limits);
    let decoded = image.decode().ok()?;
    if u64::from(decoded.width()) * u64::from(decoded.height()) > MAX_PREVIEW_SOURCE_PIXELS {
        return None;
    }
    Some(jpeg(&shrunk(decoded)))
}

/// A PNG's preview, shrunk as its rows stream by (an area average into the preview's grid), so
/// a 4096-pixel upscale costs a row and the preview's sums, not the whole image.
fn preview_png<R: Read + Seek>(reader: &mut R) -> Option<Vec<u8>> {
    let mut decoder = png::Decoder::new(BufReader::new(reader));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut png = decoder.read_info().ok()?;
    let (width, height) = {
        let info = png.info();
        (info.width, info.height)
    };
    if png.info().interlaced {
        return None;
    }
    let (color, _) = png.output_color_type();
    let channels = color.samples();
    let scale = (PREVIEW_SIDE as f64 / width.max(height) as f64).min(1.0);
    let tw = ((width as f64 * scale).round() as u32).max(1);
    let th = ((height as f64 * scale).round() as u32).max(1);
    let mut sums = vec![[0u64; 4]; (tw * th) as usize];
    let mut y = 0u32;
    while let Ok(Some(row)) = png.next_row() {
        let ty = (u64::from(y) * u64::from(th) / u64::from(height)) as u32;
        for (x, px) in row.data().chunks_exact(channels).enumerate() {
            let tx = (x as u64 * u64::from(tw) / u64::from(width)) as u32;
            let rgba = match channels {
                1 => [px[0], px[0], px[0], 255],
                2 => [px[0], px[0], px[0], px[1]],
                3 => [px[0], px[1], px[2], 255],
                _ => [px[0], px[1], px[2], px[3]],
            };
            let cell = &mut sums[(ty * tw + tx) as usize];
            // Premultiplied by alpha, so transparent pixels do not darken the average; shown
            // over white, as a JPEG has no alpha.
            let a = u64::from(rgba[3]);
            for c in 0..3 {
                cell[c] += u64::from(rgba[c]) * a;
            }
            cell[3] += a;
        }
        y += 1;
    }
    if y != height {
        return None;
    }
    let per_cell = |t: u32, total: u32, target: u32| {
        // Source pixels that fall into target index t along one axis.
        let start = (u64::from(t) * u64::from(total)).div_ceil(u64::from(target));
        let end = (u64::from(t + 1) * u64::from(total)).div_ceil(u64::from(target));
        end.saturating_sub(start).max(1)
    };
    let mut preview = RgbImage::new(tw, th);
    for (i, cell) in sums.iter().enumerate() {
        let (tx, ty) = (i as u32 % tw, i as u32 / tw);
        let count = per_cell(tx, width, tw) * per_cell(ty, height, th);
        let alpha = cell[3] as f64 / count as f64 / 255.0;
        let mut out = [0u8; 3];
        for c in 0..3 {
            let color = if cell[3] > 0 {
                cell[c] as f64 / cell[3] as f64
            } else {
                0.0
            };
            out[c] = (color * alpha + 255.0 * (1.0 - alpha))
                .round()
                .clamp(0.0, 255.0) as u8;
        }
        preview.put_pixel(tx, ty, image::Rgb(out));
    }
    Some(jpeg(&image::DynamicImage::ImageRgb8(preview)))
}

/// The image fitted within `PREVIEW_SIDE`, keeping its aspect; a smaller one is kept as it is.
fn shrunk(image: image::DynamicImage) -> image::DynamicImage {
    if image.width().max(image.height()) <= PREVIEW_SIDE {
        image
    } else {
        image.thumbnail(PREVIEW_SIDE, PREVIEW_SIDE)
    }
}

fn jpeg(image: &image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    let rgb = image.to_rgb8();
    // Encoding a 256-pixel RGB image into a Vec cannot fail.
    let _ = JpegEncoder::new_with_quality(&mut out, 80).encode_image(&rgb);
    out
}

/// A stored object read as `Read + Seek` through ranged reads of `BLOCK` bytes, so an output a
/// generator uploaded can be described where it lies. Blocking: run it on the blocking pool.
pub struct StoreReader {
    store: std::sync::Arc<dyn kiln_storage::ObjectStore>,
    key: String,
    len: u64,
    pos: u64,
    block: Vec<u8>,
    block_start: u64,
    runtime: tokio::runtime::Handle,
}

/// Bytes fetched per ranged read: an image header or an MP4's box headers take one.
const BLOCK: u64 = 256 * 1024;

impl StoreReader {
    pub fn new(
        store: std::sync::Arc<dyn kiln_storage::ObjectStore>,
        key: String,
        len: u64,
        runtime: tokio::runtime::Handle,
    ) -> StoreReader {
        StoreReader {
            store,
            key,
            len,
            pos: 0,
            block: Vec::new(),
            block_start: 0,
            runtime,
        }
    }

    fn fetch(&mut self) -> std::io::Result<()> {
        use futures::StreamExt;
        let end = (self.pos + BLOCK).min(self.len);
        let (store, key, range) = (self.store.clone(), self.key.clone(), self.pos..end);
        let block = self.runtime.block_on(async move {
            let mut stream = store
                .get_range(&key, range)
                .await
                .map_err(std::io::Error::other)?;
            let mut block = Vec::new();
            while let Some(chunk) = stream.next().await {
                block.extend_from_slice(&chunk?);
            }
            Ok::<_, std::io::Error>(block)
        })?;
        self.block = block;
        self.block_start = self.pos;
        Ok(())
    }
}

impl Read for StoreReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len || out.is_empty() {
            return Ok(0);
        }
        let in_block =
            self.pos >= self.block_start && self.pos < self.block_start + self.block.len() as u64;
        if !in_block {
            self.fetch()?;
            if self.block.is_empty() {
                return Ok(0);
            }
        }
        let offset = (self.pos - self.block_start) as usize;
        let n = out.len().min(self.block.len() - offset);
        out[..n].copy_from_slice(&self.block[offset..offset + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for StoreReader {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blocking::Stop;
    use kiln_core::catalog::{DemoImageInput, DemoKnobs, VideoFormat};
    use std::io::Cursor;

    fn png(width: u32, height: u32) -> Vec<u8> {
        let input = DemoImageInput {
            prompt: "media".into(),
            width,
            height,
            seed: Some(1),
            knobs: DemoKnobs::default(),
        };
        crate::demo::render_image(&input, &Stop::default())
            .unwrap()
            .bytes
    }

    /// The mean difference per channel between two images of one size.
    fn mean_error(a: &RgbImage, b: &RgbImage) -> f64 {
        assert_eq!(a.dimensions(), b.dimensions());
        let total: u64 = a
            .pixels()
            .zip(b.pixels())
            .map(|(p, q)| (0..3).map(|c| u64::from(p[c].abs_diff(q[c]))).sum::<u64>())
            .sum();
        total as f64 / (a.width() * a.height() * 3) as f64
    }

    fn jpeg_of(described: &Described) -> &[u8] {
        let Some(PreviewImage::Jpeg(preview)) = described.preview.as_ref() else {
            panic!("a JPEG preview");
        };
        preview
    }

    fn preview_size(described: &Described) -> (u32, u32) {
        let preview = jpeg_of(described);
        let image = image::load_from_memory_with_format(preview, image::ImageFormat::Jpeg).unwrap();
        (image.width(), image.height())
    }

    #[test]
    fn a_png_is_measured_and_shrunk_as_it_streams() {
        let bytes = png(600, 300);
        let described = describe(Cursor::new(&bytes), bytes.len() as u64, "image/png");
        assert_eq!(described.media.width, Some(600));
        assert_eq!(described.media.height, Some(300));
        assert_eq!(described.media.duration_seconds, None);
        assert_eq!(preview_size(&described), (256, 128));
        // An image within the preview's size is its own preview: nothing is made.
        let small = png(40, 30);
        let described = describe(Cursor::new(&small), small.len() as u64, "image/png");
        assert!(matches!(described.preview, Some(PreviewImage::Itself)));
    }

    #[test]
    fn the_streamed_preview_matches_a_whole_image_shrink() {
        let bytes = png(512, 512);
        let described = describe(Cursor::new(&bytes), bytes.len() as u64, "image/png");
        let preview = image::load_from_memory(jpeg_of(&described))
            .unwrap()
            .to_rgb8();
        let whole = image::load_from_memory(&bytes).unwrap().to_rgb8();
        let reference = image::imageops::resize(&whole, 256, 256, image::imageops::Triangle);
        let mean_error = mean_error(&preview, &reference);
        assert!(mean_error < 8.0, "mean error per channel {mean_error}");
    }

    #[test]
    fn an_mp4_gives_its_size_duration_rate_and_a_poster_frame() {
        let source = png(96, 64);
        let clip = crate::demo::zoom_clip(&source, 2, 12, VideoFormat::Mp4, &Stop::default())
            .unwrap()
            .bytes;
        let described = describe(Cursor::new(&clip), clip.len() as u64, "video/mp4");
        assert_eq!(described.media.width, Some(96));
        assert_eq!(described.media.height, Some(64));
        assert_eq!(described.media.duration_seconds, Some(2.0));
        assert_eq!(described.media.fps, Some(12.0));
        assert_eq!(preview_size(&described), (96, 64));
        // The poster is the first frame, which is the source image (the zoom starts at 1x):
        // decoded, not a blank of the right size.
        let poster = image::load_from_memory(jpeg_of(&described))
            .unwrap()
            .to_rgb8();
        let first = image::load_from_memory(&source).unwrap().to_rgb8();
        let mean_error = mean_error(&poster, &first);
        assert!(mean_error < 16.0, "mean error per channel {mean_error}");
    }

    #[test]
    fn a_gif_gives_its_timing_from_its_frame_delays() {
        let source = png(96, 64);
        let clip = crate::demo::zoom_clip(&source, 2, 12, VideoFormat::Gif, &Stop::default())
            .unwrap()
            .bytes;
        let described = describe(Cursor::new(&clip), clip.len() as u64, "image/gif");
        assert_eq!(described.media.width, Some(96));
        assert_eq!(described.media.duration_seconds, Some(2.0));
        assert_eq!(described.media.fps, Some(12.0));
        assert!(matches!(described.preview, Some(PreviewImage::Itself)));
    }

    #[test]
    fn a_small_image_is_described_from_its_header_alone() {
        let small = png(40, 30);
        let described = small_image(&small, "image/png").expect("a small image");
        assert_eq!(
            (described.media.width, described.media.height),
            (Some(40), Some(30))
        );
        assert!(matches!(described.preview, Some(PreviewImage::Itself)));
        assert!(small_image(&png(600, 300), "image/png").is_none());
        assert!(small_image(&small, "video/mp4").is_none());
    }

    #[test]
    fn what_is_not_media_has_no_metadata() {
        let bytes = vec![7u8; 4096];
        for content_type in ["application/octet-stream", "image/png", "video/mp4"] {
            let described = describe(Cursor::new(&bytes), 4096, content_type);
            assert_eq!(described.media, OutputMedia::default(), "{content_type}");
            assert!(described.preview.is_none());
        }
    }
}

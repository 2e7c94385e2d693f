//! The demo generators: real, deterministic image work with no GPU. `demo/image` draws a PNG from
//! a prompt and a seed, `demo/upscale` resizes an image 2x or 4x, `demo/video` turns an image into
//! a short zoom clip (H.264 in MP4, or an animated GIF when asked; `crate::clip` writes them). Same input and seed give the same bytes, so tests
//! can compare outputs and a retried attempt reproduces its result exactly.
//!
//! These functions are CPU-bound and synchronous; the executor runs them on the blocking pool
//! with a `Stop` they check between rows, bands and frames, so a canceled job stops within one
//! of those. Their memory is budgeted from what an input's header declares, before a pixel is
//! decoded: at most `MAX_INPUT_SIDE` a side and `MAX_INPUT_PIXELS` in all, and an upscaled
//! output at most `MAX_OUTPUT_SIDE` a side, written into the PNG a band of rows at a time. The
//! worst allowed input of each model stays within the budget the README states.

use crate::blocking::Stop;
use crate::clip::ClipWriter;
use crate::provider::{GeneratedOutput, ProviderError};
use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageEncoder, ImageReader, Limits, Rgba, RgbaImage};
use kiln_core::catalog::{DemoImageInput, VideoFormat, MAX_GIF_SIDE, MAX_MP4_SIDE};
use std::io::Cursor;

/// Largest side of an upscaled output.
pub const MAX_OUTPUT_SIDE: u32 = 4096;
/// Largest side of an input image, read from its header before decoding.
pub const MAX_INPUT_SIDE: u32 = 2048;
/// Most pixels of an input image.
pub const MAX_INPUT_PIXELS: u64 = 2048 * 2048;
/// Most bytes the decoder may allocate for one input (a 16-bit RGBA image at the pixel limit).
pub const MAX_DECODE_BYTES: u64 = MAX_INPUT_PIXELS * 8;
/// Input rows upscaled at once: the unit of memory and of stopping.
const UPSCALE_BAND: u32 = 64;

/// A tiny deterministic generator (SplitMix64): stable across platforms and crate versions,
/// which a library RNG does not promise.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// FNV-1a: a stable hash of the prompt, mixed into the seed.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn encode_png(img: &RgbaImage) -> Result<Vec<u8>, ProviderError> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgba8,
        )
        .map_err(|e| {
            ProviderError::fail("encode_failed", format!("could not encode the PNG: {e}"))
        })?;
    Ok(out)
}

fn png(bytes: Vec<u8>) -> GeneratedOutput {
    GeneratedOutput {
        content_type: "image/png",
        extension: "png",
        bytes,
        elsewhere: None,
    }
}

/// `demo/image`: a gradient in prompt-derived colours with seeded translucent discs.
pub fn render_image(input: &DemoImageInput, stop: &Stop) -> Result<GeneratedOutput, ProviderError> {
    let seed = input.seed.unwrap_or(0) ^ fnv1a(&input.prompt);
    let mut rng = SplitMix(seed);
    let mut colour = || {
        [
            rng.next() as u8,
            (rng.next() >> 8) as u8,
            (rng.next() >> 16) as u8,
        ]
    };
    let (from, to, disc) = (colour(), colour(), colour());
    let (w, h) = (input.width, input.height);
    let mut img = RgbaImage::from_fn(w, h, |x, y| {
        let t = (x as f32 / w as f32 + y as f32 / h as f32) / 2.0;
        let mix = |a: u8, b: u8| (a as f32 + (b as f32 - a as f32) * t) as u8;
        Rgba([
            mix(from[0], to[0]),
            mix(from[1], to[1]),
            mix(from[2], to[2]),
            255,
        ])
    });
    let discs = 3 + rng.next() % 6;
    for _ in 0..discs {
        stop.check()?;
        let cx = rng.unit() * w as f32;
        let cy = rng.unit() * h as f32;
        let r = (0.05 + rng.unit() * 0.25) * w.min(h) as f32;
        let x0 = (cx - r).max(0.0) as u32;
        let x1 = ((cx + r) as u32).min(w - 1);
        let y0 = (cy - r).max(0.0) as u32;
        let y1 = ((cy + r) as u32).min(h - 1);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                if dx * dx + dy * dy <= r * r {
                    let p = img.get_pixel_mut(x, y);
                    for c in 0..3 {
                        p[c] = ((p[c] as u16 + disc[c] as u16) / 2) as u8;
                    }
                }
            }
        }
    }
    encode_png(&img).map(png)
}

fn input_invalid(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::fail(
        "input_invalid_image",
        format!("could not read the input image: {e}"),
    )
}

/// An input image's size as its header declares it, refused if over the input budget, before
/// anything is decoded: a small file can declare a huge image (a "decompression bomb").
pub fn input_dimensions(bytes: &[u8]) -> Result<(u32, u32), ProviderError> {
    let (w, h) = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(input_invalid)?
        .into_dimensions()
        .map_err(input_invalid)?;
    if w > MAX_INPUT_SIDE || h > MAX_INPUT_SIDE || u64::from(w) * u64::from(h) > MAX_INPUT_PIXELS {
        return Err(ProviderError::fail(
            "input_too_large",
            format!(
                "the input image is {w}x{h}; the largest allowed is {MAX_INPUT_SIDE}x{MAX_INPUT_SIDE}"
            ),
        ));
    }
    if w == 0 || h == 0 {
        return Err(input_invalid("the image is empty"));
    }
    Ok((w, h))
}

/// Decodes an input image within the input budget (its declared size is checked first, and
/// the decoder may allocate no more than that size needs).
pub fn decode_input(bytes: &[u8]) -> Result<DynamicImage, ProviderError> {
    input_dimensions(bytes)?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(input_invalid)?;
    reader.limits(limits);
    reader.decode().map_err(|e| {
        ProviderError::fail(
            "input_invalid_image",
            format!("could not decode the input image: {e}"),
        )
    })
}

/// `demo/upscale`: a Lanczos resize by `scale`, a band of rows at a time. Each band is resized
/// with a margin of source rows above and below (the filter's reach), so the bands join
/// without seams, and its rows go straight into the PNG stream: memory holds the source and one
/// band, never the whole output's pixels.
pub fn upscale(source: &[u8], scale: u32, stop: &Stop) -> Result<GeneratedOutput, ProviderError> {
    let (w0, h0) = input_dimensions(source)?;
    let (w, h) = (w0 * scale, h0 * scale);
    if w > MAX_OUTPUT_SIDE || h > MAX_OUTPUT_SIDE {
        return Err(ProviderError::fail(
            "output_too_large",
            format!("the upscaled image would be {w}x{h}; the largest side allowed is {MAX_OUTPUT_SIDE}"),
        ));
    }
    let img = decode_input(source)?.to_rgba8();
    let encode_failed = |e: &dyn std::fmt::Display| {
        ProviderError::fail("encode_failed", format!("could not encode the PNG: {e}"))
    };
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| encode_failed(&e))?;
        let mut rows = writer.stream_writer().map_err(|e| encode_failed(&e))?;
        // Lanczos3 reaches three source rows either side; one more absorbs rounding.
        const MARGIN: u32 = 4;
        let mut top = 0;
        while top < h0 {
            stop.check()?;
            let bottom = (top + UPSCALE_BAND).min(h0);
            let from = top.saturating_sub(MARGIN);
            let to = (bottom + MARGIN).min(h0);
            let band = image::imageops::crop_imm(&img, 0, from, w0, to - from).to_image();
            let resized =
                image::imageops::resize(&band, w, (to - from) * scale, FilterType::Lanczos3);
            let row_bytes = w as usize * 4;
            let first = ((top - from) * scale) as usize * row_bytes;
            let last = first + ((bottom - top) * scale) as usize * row_bytes;
            std::io::Write::write_all(&mut rows, &resized.as_raw()[first..last])
                .map_err(|e| encode_failed(&e))?;
            top = bottom;
        }
        rows.finish().map_err(|e| encode_failed(&e))?;
    }
    Ok(png(out))
}

/// `demo/video`: a slow zoom towards the centre, `seconds * fps` frames at the input's size
/// (rounded down to even sides, which H.264's 4:2:0 chroma needs). An input larger than the
/// format's cap (`MAX_MP4_SIDE`, `MAX_GIF_SIDE`, published in the model's schema) is refused,
/// not shrunk behind the caller's back.
pub fn zoom_clip(
    source: &[u8],
    seconds: u32,
    fps: u32,
    format: VideoFormat,
    stop: &Stop,
) -> Result<GeneratedOutput, ProviderError> {
    let img = decode_input(source)?.to_rgba8();
    let (largest, name) = match format {
        VideoFormat::Mp4 => (MAX_MP4_SIDE, "an mp4"),
        VideoFormat::Gif => (MAX_GIF_SIDE, "a gif"),
    };
    if img.width().max(img.height()) > largest {
        return Err(ProviderError::fail(
            "input_too_large",
            format!(
                "the image is {}x{}; {name} clip takes at most {largest} px a side",
                img.width(),
                img.height()
            ),
        ));
    }
    // H.264 codes 16-pixel macroblocks and OpenH264 takes no frame smaller than one: a tinier
    // image is drawn onto a 16-pixel side.
    let least = match format {
        VideoFormat::Mp4 => 16,
        VideoFormat::Gif => 2,
    };
    let fw = (img.width() & !1).max(least);
    let fh = (img.height() & !1).max(least);
    let frames = (seconds * fps).max(1);
    let mut gif = Vec::new();
    let mut clip = match format {
        VideoFormat::Mp4 => ClipWriter::mp4(fw, fh, fps)?,
        VideoFormat::Gif => ClipWriter::gif(&mut gif, fps)?,
    };
    for i in 0..frames {
        stop.check()?;
        let t = if frames == 1 {
            0.0
        } else {
            i as f32 / (frames - 1) as f32
        };
        let zoom = 1.0 + 0.5 * t;
        let cw = ((img.width() as f32 / zoom) as u32).max(1);
        let ch = ((img.height() as f32 / zoom) as u32).max(1);
        let x = (img.width() - cw) / 2;
        let y = (img.height() - ch) / 2;
        let crop = image::imageops::crop_imm(&img, x, y, cw, ch).to_image();
        clip.push(image::imageops::resize(&crop, fw, fh, FilterType::Triangle))?;
    }
    Ok(match clip.finish()? {
        Some(mp4) => GeneratedOutput {
            content_type: "video/mp4",
            extension: "mp4",
            bytes: mp4,
            elsewhere: None,
        },
        None => GeneratedOutput {
            content_type: "image/gif",
            extension: "gif",
            bytes: gif,
            elsewhere: None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::catalog::DemoKnobs;

    fn input(prompt: &str, seed: Option<u64>) -> DemoImageInput {
        DemoImageInput {
            prompt: prompt.into(),
            width: 96,
            height: 64,
            seed,
            knobs: DemoKnobs::default(),
        }
    }

    #[test]
    fn images_are_deterministic_and_sized() {
        let go = Stop::default();
        let a = render_image(&input("a kiln at dusk", Some(1)), &go).unwrap();
        let b = render_image(&input("a kiln at dusk", Some(1)), &go).unwrap();
        let c = render_image(&input("a kiln at dusk", Some(2)), &go).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_ne!(a.bytes, c.bytes);
        let img = image::load_from_memory(&a.bytes).unwrap();
        assert_eq!((img.width(), img.height()), (96, 64));
    }

    #[test]
    fn upscale_multiplies_the_size() {
        let go = Stop::default();
        let src = render_image(&input("x", None), &go).unwrap();
        let out = upscale(&src.bytes, 4, &go).unwrap();
        let img = image::load_from_memory(&out.bytes).unwrap();
        assert_eq!((img.width(), img.height()), (384, 256));
        assert!(upscale(b"not an image", 2, &go).is_err());
    }

    #[test]
    fn clips_have_the_requested_frame_count() {
        let go = Stop::default();
        let src = render_image(&input("x", None), &go).unwrap();
        let gif = zoom_clip(&src.bytes, 1, 5, VideoFormat::Gif, &go).unwrap();
        assert_eq!(gif.content_type, "image/gif");
        let decoder = image::codecs::gif::GifDecoder::new(Cursor::new(&gif.bytes)).unwrap();
        use image::AnimationDecoder;
        let frames = decoder.into_frames().collect_frames().unwrap();
        assert_eq!(frames.len(), 5);
        assert_eq!(frames[0].buffer().dimensions(), (96, 64));
        // 12 fps is no whole number of hundredths: the delays alternate and add up exactly.
        let gif = zoom_clip(&src.bytes, 2, 12, VideoFormat::Gif, &go).unwrap();
        let decoder = image::codecs::gif::GifDecoder::new(Cursor::new(&gif.bytes)).unwrap();
        let frames = decoder.into_frames().collect_frames().unwrap();
        assert_eq!(frames.len(), 24);
        let total_ms: u32 = frames
            .iter()
            .map(|f| {
                let (n, d) = f.delay().numer_denom_ms();
                n / d
            })
            .sum();
        assert_eq!(total_ms, 2000);

        let mp4 = zoom_clip(&src.bytes, 2, 12, VideoFormat::Mp4, &go).unwrap();
        assert_eq!(mp4.content_type, "video/mp4");
        let len = mp4.bytes.len() as u64;
        let reader = mp4::Mp4Reader::read_header(Cursor::new(&mp4.bytes), len).unwrap();
        let track = reader.tracks().values().next().unwrap();
        assert_eq!((track.width(), track.height()), (96, 64));
        assert_eq!(track.sample_count(), 24);
        assert_eq!(track.duration(), std::time::Duration::from_secs(2));

        // An image smaller than one macroblock still makes a clip, one macroblock in size.
        let mut tiny = input("tiny", None);
        (tiny.width, tiny.height) = (1, 1);
        let tiny = render_image(&tiny, &go).unwrap();
        let mp4 = zoom_clip(&tiny.bytes, 1, 2, VideoFormat::Mp4, &go).unwrap();
        let len = mp4.bytes.len() as u64;
        let reader = mp4::Mp4Reader::read_header(Cursor::new(&mp4.bytes), len).unwrap();
        let track = reader.tracks().values().next().unwrap();
        assert_eq!((track.width(), track.height()), (16, 16));
    }

    #[test]
    fn a_gif_larger_than_it_can_take_is_refused_not_shrunk() {
        let mut wide = input("wide", None);
        wide.width = MAX_GIF_SIDE + 2;
        let src = render_image(&wide, &Stop::default()).unwrap();
        let e = zoom_clip(&src.bytes, 1, 5, VideoFormat::Gif, &Stop::default()).unwrap_err();
        assert_eq!(e.error.code, "input_too_large");
    }

    #[test]
    fn banded_upscaling_matches_resizing_the_whole_image() {
        let mut tall = input("bands", Some(3));
        tall.height = UPSCALE_BAND * 2 + 17;
        let src = render_image(&tall, &Stop::default()).unwrap();
        let out = upscale(&src.bytes, 2, &Stop::default()).unwrap();
        let banded = image::load_from_memory(&out.bytes).unwrap().to_rgba8();
        let source = image::load_from_memory(&src.bytes).unwrap().to_rgba8();
        let whole = image::imageops::resize(
            &source,
            source.width() * 2,
            source.height() * 2,
            FilterType::Lanczos3,
        );
        assert_eq!(banded.dimensions(), whole.dimensions());
        // The same filter over the same rows: equal but for float rounding in the weights.
        let worst = banded
            .as_raw()
            .iter()
            .zip(whole.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(
            worst <= 2,
            "the bands differ from the whole by up to {worst}"
        );
    }

    /// A PNG that declares `width`x`height` at 16 bits per channel and holds no pixels at all:
    /// the header alone must be enough to refuse it.
    fn declared_png(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Sixteen);
        let mut writer = encoder.write_header().unwrap();
        // One empty zlib stream as the image data: a decoder finds the header and the start of
        // the data, as it would in a real file, and nothing to decode.
        writer
            .write_chunk(
                png::chunk::IDAT,
                &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
            )
            .unwrap();
        drop(writer);
        out
    }

    #[test]
    fn an_input_over_budget_is_refused_from_its_header() {
        let huge = declared_png(8192, 8192);
        for result in [
            decode_input(&huge).map(|_| ()),
            upscale(&huge, 2, &Stop::default()).map(|_| ()),
            zoom_clip(&huge, 1, 1, VideoFormat::Mp4, &Stop::default()).map(|_| ()),
        ] {
            let e = result.unwrap_err();
            assert_eq!(e.error.code, "input_too_large", "{}", e.error.message);
        }
        // Within the input budget but over the output's: refused before decoding too.
        let wide = declared_png(2048, 16);
        let e = upscale(&wide, 4, &Stop::default()).unwrap_err();
        assert_eq!(e.error.code, "output_too_large");
    }

    #[test]
    fn stopped_work_returns_at_once() {
        let src = render_image(&input("x", None), &Stop::default()).unwrap();
        let raised = Stop::default();
        raised.raise();
        assert!(upscale(&src.bytes, 2, &raised).is_err());
        assert!(zoom_clip(&src.bytes, 1, 5, VideoFormat::Mp4, &raised).is_err());
        assert!(render_image(&input("x", None), &raised).is_err());
    }
}

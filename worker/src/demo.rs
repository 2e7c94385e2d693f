//! The demo generators: real, deterministic image work with no GPU. `demo/image` draws a PNG from
//! a prompt and a seed, `demo/upscale` resizes an image 2x or 4x, `demo/video` turns an image into
//! a short zoom clip (an animated GIF: no MP4 encoder builds here without native codec libraries,
//! and `ffprobe` reads GIF as a video stream). Same input and seed give the same bytes, so tests
//! can compare outputs and a retried attempt reproduces its result exactly.
//!
//! These functions are CPU-bound and synchronous; the executor runs them on the blocking pool.

use crate::provider::{GeneratedOutput, ProviderError};
use image::codecs::gif::{GifEncoder, Repeat};
use image::codecs::png::PngEncoder;
use image::imageops::FilterType;
use image::{Delay, DynamicImage, Frame, ImageEncoder, ImageReader, Limits, Rgba, RgbaImage};
use kiln_core::catalog::DemoImageInput;
use std::io::Cursor;

/// Largest side of an upscaled output.
pub const MAX_OUTPUT_SIDE: u32 = 8192;
/// Clips are drawn at most this wide or tall; larger sources are scaled down first.
pub const MAX_CLIP_SIDE: u32 = 512;

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
    }
}

/// `demo/image`: a gradient in prompt-derived colours with seeded translucent discs.
pub fn render_image(input: &DemoImageInput) -> Result<GeneratedOutput, ProviderError> {
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

/// Decodes an input image with limits, so a hostile file cannot make the worker allocate
/// without bound (a "decompression bomb").
pub fn decode_input(bytes: &[u8]) -> Result<DynamicImage, ProviderError> {
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_OUTPUT_SIDE);
    limits.max_image_height = Some(MAX_OUTPUT_SIDE);
    limits.max_alloc = Some(512 * 1024 * 1024);
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| {
            ProviderError::fail(
                "input_invalid_image",
                format!("could not read the input image: {e}"),
            )
        })?;
    reader.limits(limits);
    reader.decode().map_err(|e| {
        ProviderError::fail(
            "input_invalid_image",
            format!("could not decode the input image: {e}"),
        )
    })
}

/// `demo/upscale`: a Lanczos resize by `scale`.
pub fn upscale(source: &[u8], scale: u32) -> Result<GeneratedOutput, ProviderError> {
    let img = decode_input(source)?;
    let (w, h) = (img.width() * scale, img.height() * scale);
    if w > MAX_OUTPUT_SIDE || h > MAX_OUTPUT_SIDE {
        return Err(ProviderError::fail(
            "output_too_large",
            format!("the upscaled image would be {w}x{h}; the largest side allowed is {MAX_OUTPUT_SIDE}"),
        ));
    }
    let resized = image::imageops::resize(&img.to_rgba8(), w, h, FilterType::Lanczos3);
    encode_png(&resized).map(png)
}

/// `demo/video`: a slow zoom towards the centre, `seconds * fps` frames, looping GIF.
pub fn zoom_clip(source: &[u8], seconds: u32, fps: u32) -> Result<GeneratedOutput, ProviderError> {
    let img = decode_input(source)?.to_rgba8();
    let fit = (MAX_CLIP_SIDE as f32 / img.width().max(img.height()) as f32).min(1.0);
    // GIF frames must have even-ish, non-zero sizes; keep at least 2 px.
    let fw = ((img.width() as f32 * fit) as u32).max(2);
    let fh = ((img.height() as f32 * fit) as u32).max(2);
    let frames = (seconds * fps).max(1);
    let delay = Delay::from_numer_denom_ms(1000, fps);
    let mut out = Vec::new();
    {
        let mut encoder = GifEncoder::new_with_speed(&mut out, 20);
        encoder
            .set_repeat(Repeat::Infinite)
            .map_err(|e| ProviderError::fail("encode_failed", e.to_string()))?;
        for i in 0..frames {
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
            let frame = image::imageops::resize(&crop, fw, fh, FilterType::Triangle);
            encoder
                .encode_frame(Frame::from_parts(frame, 0, 0, delay))
                .map_err(|e| {
                    ProviderError::fail("encode_failed", format!("could not encode the clip: {e}"))
                })?;
        }
    }
    Ok(GeneratedOutput {
        content_type: "image/gif",
        extension: "gif",
        bytes: out,
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
        let a = render_image(&input("a kiln at dusk", Some(1))).unwrap();
        let b = render_image(&input("a kiln at dusk", Some(1))).unwrap();
        let c = render_image(&input("a kiln at dusk", Some(2))).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_ne!(a.bytes, c.bytes);
        let img = image::load_from_memory(&a.bytes).unwrap();
        assert_eq!((img.width(), img.height()), (96, 64));
    }

    #[test]
    fn upscale_multiplies_the_size() {
        let src = render_image(&input("x", None)).unwrap();
        let out = upscale(&src.bytes, 4).unwrap();
        let img = image::load_from_memory(&out.bytes).unwrap();
        assert_eq!((img.width(), img.height()), (384, 256));
        assert!(upscale(b"not an image", 2).is_err());
    }

    #[test]
    fn clips_have_the_requested_frame_count() {
        let src = render_image(&input("x", None)).unwrap();
        let out = zoom_clip(&src.bytes, 1, 5).unwrap();
        let decoder = image::codecs::gif::GifDecoder::new(Cursor::new(&out.bytes)).unwrap();
        use image::AnimationDecoder;
        let frames = decoder.into_frames().collect_frames().unwrap();
        assert_eq!(frames.len(), 5);
        assert_eq!(frames[0].buffer().dimensions(), (96, 64));
    }
}

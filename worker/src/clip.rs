//! Writing the demo's clips: H.264 in MP4 (the default) or an animated GIF. The MP4 path is
//! OpenH264 (the `openh264` crate compiles Cisco's C++ source with the system compiler, so the
//! embedded default still needs nothing installed) and the `mp4` crate's muxer. Frames go into
//! the encoder one at a time and each encoded frame straight into the MP4's sample data, so a
//! clip's working memory is one frame plus the file so far, whatever its length.
//!
//! The MP4 track's timescale is `fps * 1000` with every frame 1000 ticks long: exact for any
//! whole frame rate, which GIF's hundredths of a second are not (the catalog refuses a GIF at a
//! frame rate it cannot keep). The encoder never skips a frame (`skip_frames(false)`), so the
//! file has exactly `seconds * fps` frames and lasts exactly `seconds`.

use crate::provider::ProviderError;
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, RgbaImage};
use openh264::encoder::{
    BitRate, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod, RateControlMode,
};
use openh264::formats::{RgbaSliceU8, YUVBuffer};
use openh264::OpenH264API;
use std::io::Cursor;

fn encode_failed(e: impl std::fmt::Display) -> ProviderError {
    ProviderError::fail("encode_failed", format!("could not encode the clip: {e}"))
}

/// A clip being written, frame by frame. A GIF is written into a buffer its caller holds (the
/// GIF encoder does not give its writer back).
pub enum ClipWriter<'a> {
    Mp4(Box<Mp4Clip>),
    Gif(GifClip<'a>),
}

/// A GIF being written. Its frame delays are whole hundredths of a second; each frame's delay
/// is the difference between where its end and its start fall on that grid, so at 12 fps they
/// run 8, 8, 9, … and the clip lasts exactly frames / fps seconds.
pub struct GifClip<'a> {
    encoder: GifEncoder<&'a mut Vec<u8>>,
    fps: u32,
    frames: u32,
}

impl<'a> ClipWriter<'a> {
    /// An H.264 MP4 of `width` × `height` (both even) at `fps`.
    pub fn mp4(width: u32, height: u32, fps: u32) -> Result<ClipWriter<'a>, ProviderError> {
        Ok(ClipWriter::Mp4(Box::new(Mp4Clip::new(width, height, fps)?)))
    }

    /// A looping GIF at `fps`, written into `out`.
    pub fn gif(out: &'a mut Vec<u8>, fps: u32) -> Result<ClipWriter<'a>, ProviderError> {
        let mut encoder = GifEncoder::new_with_speed(out, 20);
        encoder
            .set_repeat(Repeat::Infinite)
            .map_err(encode_failed)?;
        Ok(ClipWriter::Gif(GifClip {
            encoder,
            fps,
            frames: 0,
        }))
    }

    /// Appends the next frame, of the clip's size.
    pub fn push(&mut self, frame: RgbaImage) -> Result<(), ProviderError> {
        match self {
            ClipWriter::Mp4(clip) => clip.push(&frame),
            ClipWriter::Gif(gif) => {
                let at = |frame: u32| (u64::from(frame) * 100).div_ceil(u64::from(gif.fps));
                let centiseconds = at(gif.frames + 1) - at(gif.frames);
                gif.frames += 1;
                let delay = Delay::from_numer_denom_ms(centiseconds as u32 * 10, 1);
                gif.encoder
                    .encode_frame(Frame::from_parts(frame, 0, 0, delay))
                    .map_err(encode_failed)
            }
        }
    }

    /// Ends the clip: an MP4's bytes, or `None` for a GIF, whose bytes are in its buffer.
    pub fn finish(self) -> Result<Option<Vec<u8>>, ProviderError> {
        match self {
            ClipWriter::Mp4(clip) => Ok(Some(clip.finish()?)),
            // Dropping the encoder writes the GIF's trailer.
            ClipWriter::Gif(..) => Ok(None),
        }
    }
}

/// An MP4 being written: the encoder, and the muxer once the first frame has given the
/// sequence and picture parameter sets its track description needs.
pub struct Mp4Clip {
    encoder: Encoder,
    muxer: Option<mp4::Mp4Writer<Cursor<Vec<u8>>>>,
    width: u32,
    height: u32,
    fps: u32,
    frames: u64,
}

/// Ticks per frame in the track's timescale (`fps * TICKS_PER_FRAME` ticks a second).
const TICKS_PER_FRAME: u32 = 1000;

impl Mp4Clip {
    fn new(width: u32, height: u32, fps: u32) -> Result<Mp4Clip, ProviderError> {
        // About 0.1 bit per pixel per frame: plenty for the demo's smooth zooms, and a
        // 512 × 512 clip at 12 fps comes to ~3 Mbit/s.
        let bitrate = (u64::from(width) * u64::from(height) * u64::from(fps) / 10)
            .clamp(200_000, 20_000_000) as u32;
        let config = EncoderConfig::new()
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(bitrate))
            .max_frame_rate(FrameRate::from_hz(fps as f32))
            .skip_frames(false)
            // A key frame every two seconds, so a player can seek without decoding the whole
            // clip from its start.
            .intra_frame_period(IntraFramePeriod::from_num_frames(fps * 2));
        let encoder =
            Encoder::with_api_config(OpenH264API::from_source(), config).map_err(encode_failed)?;
        Ok(Mp4Clip {
            encoder,
            muxer: None,
            width,
            height,
            fps,
            frames: 0,
        })
    }

    fn push(&mut self, frame: &RgbaImage) -> Result<(), ProviderError> {
        let yuv = YUVBuffer::from_rgba8_source(RgbaSliceU8::new(
            frame.as_raw(),
            (self.width as usize, self.height as usize),
        ));
        let encoded = self.encoder.encode(&yuv).map_err(encode_failed)?;
        let is_sync = encoded.frame_type() == FrameType::IDR;
        // OpenH264 writes Annex B (start codes); MP4 samples hold length-prefixed NAL units,
        // and the parameter sets go into the track's `avcC` box instead.
        let (mut sps, mut pps, mut sample) = (None, None, Vec::new());
        for l in 0..encoded.num_layers() {
            let layer = encoded.layer(l).expect("a layer below num_layers");
            for n in 0..layer.nal_count() {
                let nal = strip_start_code(layer.nal_unit(n).expect("a NAL below nal_count"));
                match nal.first().map(|b| b & 0x1f) {
                    None => {}
                    Some(7) => sps = Some(nal.to_vec()),
                    Some(8) => pps = Some(nal.to_vec()),
                    Some(_) => {
                        sample.extend_from_slice(&(nal.len() as u32).to_be_bytes());
                        sample.extend_from_slice(nal);
                    }
                }
            }
        }
        if self.muxer.is_none() {
            let (Some(sps), Some(pps)) = (sps, pps) else {
                return Err(encode_failed("the first frame has no parameter sets"));
            };
            self.muxer = Some(self.start_muxer(sps, pps)?);
        }
        let muxer = self.muxer.as_mut().expect("started above");
        muxer
            .write_sample(
                1,
                &mp4::Mp4Sample {
                    start_time: self.frames * u64::from(TICKS_PER_FRAME),
                    duration: TICKS_PER_FRAME,
                    rendering_offset: 0,
                    is_sync,
                    bytes: sample.into(),
                },
            )
            .map_err(encode_failed)?;
        self.frames += 1;
        Ok(())
    }

    fn start_muxer(
        &self,
        sps: Vec<u8>,
        pps: Vec<u8>,
    ) -> Result<mp4::Mp4Writer<Cursor<Vec<u8>>>, ProviderError> {
        let brand = |b: &str| b.parse::<mp4::FourCC>().expect("a four-letter brand");
        let mut muxer = mp4::Mp4Writer::write_start(
            Cursor::new(Vec::new()),
            &mp4::Mp4Config {
                major_brand: brand("isom"),
                minor_version: 512,
                compatible_brands: ["isom", "iso2", "avc1", "mp41"].map(brand).to_vec(),
                timescale: 1000,
            },
        )
        .map_err(encode_failed)?;
        muxer
            .add_track(&mp4::TrackConfig {
                track_type: mp4::TrackType::Video,
                timescale: self.fps * TICKS_PER_FRAME,
                language: "und".into(),
                media_conf: mp4::MediaConfig::AvcConfig(mp4::AvcConfig {
                    width: self.width as u16,
                    height: self.height as u16,
                    seq_param_set: sps,
                    pic_param_set: pps,
                }),
            })
            .map_err(encode_failed)?;
        Ok(muxer)
    }

    fn finish(self) -> Result<Vec<u8>, ProviderError> {
        let Some(mut muxer) = self.muxer else {
            return Err(encode_failed("the clip has no frames"));
        };
        muxer.write_end().map_err(encode_failed)?;
        Ok(muxer.into_writer().into_inner())
    }
}

fn strip_start_code(nal: &[u8]) -> &[u8] {
    nal.strip_prefix(&[0, 0, 0, 1])
        .or_else(|| nal.strip_prefix(&[0, 0, 1]))
        .unwrap_or(nal)
}

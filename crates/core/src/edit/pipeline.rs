//! Runs edits on the GPU, top to bottom: upload → segment (one batch for all jobs) →
//! refine the mask with the photo as guide → measure the mask → place on the canvas →
//! background, shadow, outline → compose → read back. After the model, a batch's jobs
//! pass each stage together, so a batch costs two submissions and two readbacks (the
//! subjects' boxes, then the results) whatever its size. Encoding happens afterwards, on
//! the caller's CPU threads (`encode`).

use std::time::Instant;

use image::RgbaImage;

use super::geometry::Rect;
use super::{BlurMode, Channels, Edit, FieldError, Fill, Length, Scaling, ShadowMode};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::{
    BlurKind, ComposeLayers, ComposeStyle, Image, ImageOps, MaskChannel, MaskStats, Measured,
    PlaceMap, Recording, Refinement, ShadowLayer, SpillKey,
};
use crate::remove::Remover;
use crate::timing::{Stage, StageTimes};

/// One image to edit, with its background image when the edit asks for one.
pub struct Job {
    pub image: RgbaImage,
    pub background: Option<RgbaImage>,
    pub edit: Edit,
}

/// A rendered result, before encoding.
pub struct EditOutput {
    pub image: RgbaImage,
    /// The subject's box on the result: left, top, width, height (clipped to the canvas).
    pub foreground: Option<[u32; 4]>,
    /// Share of the subject's pixels the model was unsure about (0..1); `None` without a
    /// model mask.
    pub uncertainty: Option<f32>,
    /// What this image waited for: its batch's preprocess and forward, then its effects and
    /// readback, which are the whole batch's where its jobs pass the stages together (see
    /// [`Editor::finish_each`]).
    pub timings: StageTimes,
}

pub struct Editor {
    remover: Remover,
}

/// A batch after the model ([`Editor::segment`]): each job's photo and model mask.
pub struct Segmented {
    photos: Vec<Result<Image>>,
    masks: Vec<Option<Result<Image>>>,
    /// The commands that make the masks, submitted with the first stage after the model.
    recording: Recording,
    /// The batch's preprocess and forward time, which every job of it waited for.
    batch: StageTimes,
}

impl Segmented {
    /// The batch's preprocess and forward time.
    pub fn timings(&self) -> StageTimes {
        self.batch
    }
}

impl Editor {
    pub fn new(remover: Remover) -> Self {
        Self { remover }
    }

    pub fn load(gpu: &Gpu, model_name: &str, allow_download: bool) -> Result<Self> {
        Remover::load(gpu, model_name, allow_download).map(Self::new)
    }

    pub fn ops(&self) -> &ImageOps {
        self.remover.ops()
    }

    pub fn remover(&self) -> &Remover {
        &self.remover
    }

    /// Renders every job; segmentation runs as one batch over the jobs that need it. A
    /// job's failure does not fail the others.
    pub fn render(&self, jobs: &[Job]) -> Vec<Result<EditOutput>> {
        let segmented = self.segment(jobs);
        self.finish_batch(jobs, segmented)
    }

    /// The first half of [`Editor::render`]: takes in the photos and runs the model once
    /// over the jobs that need it. A server can run the next batch's `segment` while this
    /// one's [`Editor::finish_batch`] runs on another thread.
    pub fn segment(&self, jobs: &[Job]) -> Segmented {
        let ops = self.ops();
        let mut timings = StageTimes::default();
        let photos: Vec<Result<Image>> = timings.time(Stage::Preprocess, || {
            jobs.iter()
                .map(|job| ops.image(job.image.clone()))
                .collect()
        });

        let needs_model: Vec<usize> = (0..jobs.len())
            .filter(|&i| photos[i].is_ok() && needs_model(&jobs[i]))
            .collect();
        let batch: Vec<&Image> = needs_model
            .iter()
            .map(|&i| photos[i].as_ref().expect("filtered to accepted images"))
            .collect();
        let mut masks: Vec<Option<Result<Image>>> = (0..jobs.len()).map(|_| None).collect();
        // The commands that turn the model's output into masks run with the next stage's,
        // which may be on another thread: they travel with the batch, unsubmitted.
        let mut recording = Recording::default();
        if !batch.is_empty() {
            let found = ops.record_into(&mut recording, || {
                self.remover.masks_of(&batch, &mut timings)
            });
            match found {
                Ok(found) => {
                    for (&i, mask) in needs_model.iter().zip(found) {
                        masks[i] = Some(Ok(mask));
                    }
                }
                Err(error) => {
                    for &i in &needs_model {
                        masks[i] = Some(Err(error.clone()));
                    }
                }
            }
        }
        Segmented {
            photos,
            masks,
            recording,
            batch: timings,
        }
    }

    /// The second half of [`Editor::render`]: everything after the model, for the jobs
    /// [`Editor::segment`] was given.
    pub fn finish_batch(&self, jobs: &[Job], segmented: Segmented) -> Vec<Result<EditOutput>> {
        let mut results = Vec::with_capacity(jobs.len());
        self.finish_each(jobs, segmented, |_, result| results.push(result));
        results
    }

    /// [`Editor::finish_batch`], handing each job's result (with its index) to `done`.
    ///
    /// With the operations on the device, the batch's jobs pass each stage together: every
    /// job's refinement and measurement are recorded, then submitted and read back at once;
    /// then every job's placement, effects and compositing, again submitted and read back
    /// at once. A job's failure does not fail the others; its commands are dropped
    /// unsubmitted. With the operations on the host, each job passes the stages alone.
    pub fn finish_each(
        &self,
        jobs: &[Job],
        segmented: Segmented,
        mut done: impl FnMut(usize, Result<EditOutput>),
    ) {
        let Segmented {
            photos,
            masks,
            recording,
            batch,
        } = segmented;
        let ops = self.ops();
        let jobs: Vec<Pending> = jobs
            .iter()
            .zip(photos)
            .zip(masks)
            .enumerate()
            .map(|(index, ((job, photo), mask))| Pending {
                index,
                job,
                photo,
                mask,
            })
            .collect();
        if !ops.on_host() {
            return self.finish_together(jobs, recording, batch, &mut done);
        }
        // The host operations read the masks at once: what makes them runs first. On the
        // host nothing is gained by holding every job's images until the batch's end, so
        // each job passes the stages alone (less memory, warmer caches).
        ops.submit_recording(recording);
        for job in jobs {
            self.finish_together(vec![job], Recording::default(), batch, &mut done);
        }
    }

    /// [`Editor::finish_each`] for `jobs` that pass each stage together.
    fn finish_together(
        &self,
        jobs: Vec<Pending>,
        mut recording: Recording,
        batch: StageTimes,
        done: &mut impl FnMut(usize, Result<EditOutput>),
    ) {
        let ops = self.ops();
        let started = Instant::now();
        let indices: Vec<(usize, &Job)> = jobs.iter().map(|p| (p.index, p.job)).collect();
        let measured: Vec<Result<(Image, Measuring)>> = jobs
            .into_iter()
            .map(|pending| {
                let photo = pending.photo?;
                let mask = pending.mask;
                let measuring = ops.record_into(&mut recording, || {
                    self.measure(pending.job, &photo, mask.transpose()?)
                })?;
                Ok((photo, measuring))
            })
            .collect();
        // Hand-off to the host: the layout needs each subject's box there (it sets the
        // canvas and intermediate image sizes and the shadow's geometry), so the batch's
        // boxes come back together, in one submission and one readback.
        let wanted: Vec<&Measured> = measured
            .iter()
            .filter_map(|job| job.as_ref().ok()?.1.measured.as_ref())
            .collect();
        let mut stats = ops
            .capturing(|| ops.read_stats(recording, &wanted))
            .map(|(stats, _)| stats.into_iter());

        let mut recording = Recording::default();
        let composed: Vec<Result<Composed>> = indices
            .iter()
            .zip(measured)
            .map(|(&(_, job), measured)| {
                let (photo, measuring) = measured?;
                let job_stats = match (&measuring.measured, &mut stats) {
                    (None, _) => None,
                    (Some(_), Ok(read)) => read.next(),
                    (Some(_), Err(error)) => return Err(error.clone()),
                };
                ops.record_into(&mut recording, || {
                    self.compose(job, &photo, measuring, job_stats)
                })
            })
            .collect();
        // The batch's results, in one submission and one readback.
        let mut images = Vec::new();
        let layouts: Vec<Result<Layout>> = composed
            .into_iter()
            .map(|composed| {
                composed.map(|Composed { image, layout }| {
                    images.push(image);
                    layout
                })
            })
            .collect();
        let read_started = Instant::now();
        let read = ops.capturing(|| ops.read_images(recording, images));
        let mut timings = batch;
        match &read {
            Ok((_, device_time)) => {
                timings.add(Stage::Effects, read_started - started + *device_time);
                timings.add(Stage::Readback, read_started.elapsed() - *device_time);
            }
            Err(_) => timings.add(Stage::Effects, started.elapsed()),
        }
        let mut read = read.map(|(images, _)| images.into_iter());
        for (&(i, _), layout) in indices.iter().zip(layouts) {
            let result = layout.and_then(|layout| {
                let image = match &mut read {
                    Ok(images) => images
                        .next()
                        .ok_or_else(|| Error::Device("a result was not read back".into()))?,
                    Err(error) => return Err(error.clone()),
                };
                Ok(EditOutput {
                    image,
                    foreground: layout.foreground,
                    uncertainty: layout.uncertainty,
                    timings,
                })
            });
            done(i, result);
        }
    }

    /// The first stage of a job after the model: its region of interest, its full-size
    /// mask (refined or upsampled) and the statistics of that mask, recorded.
    fn measure(&self, job: &Job, image: &Image, model_mask: Option<Image>) -> Result<Measuring> {
        let ops = self.ops();
        let edit = &job.edit;
        let roi = region_of_interest(edit, image.width(), image.height())?;
        let spill_key = match (&model_mask, edit.despill) {
            (_, false) => None,
            (Some(mask), true) => Some(ops.spill_key(image, mask)?),
            (None, true) => Some(SpillKey::Colour(SpillKey::GREEN)),
        };
        let refinement = edit.refine.then(Refinement::default);
        let mask = match model_mask {
            Some(mask) => Some(self.remover.full_size_mask(image, &mask, refinement)?),
            None => None,
        };
        // Without a model mask, a job that removes the background uses the image's own alpha
        // (`needs_model` decided that, so the pixels are not scanned again here).
        let measured = match (&mask, edit.remove_background) {
            (Some(mask), _) => Some(ops.measure(mask, MaskChannel::Red, roi)?),
            (None, true) => Some(ops.measure(image, MaskChannel::Alpha, roi)?),
            (None, false) => None,
        };
        Ok(Measuring {
            roi,
            mask,
            measured,
            spill_key,
        })
    }

    /// The second stage: placement, background, shadow, outline and compositing, recorded.
    fn compose(
        &self,
        job: &Job,
        image: &Image,
        measuring: Measuring,
        stats: Option<MaskStats>,
    ) -> Result<Composed> {
        let ops = self.ops();
        let edit = &job.edit;
        let (width, height) = (image.width(), image.height());
        let Measuring {
            roi,
            mask,
            spill_key,
            ..
        } = measuring;
        let subject = match stats {
            Some(MaskStats {
                bbox: Some([x0, y0, x1, y1]),
                ..
            }) => Some(Rect::new(x0 as f64, y0 as f64, x1 as f64, y1 as f64)),
            Some(_) => None,
            None => Some(Rect::new(
                roi[0] as f64,
                roi[1] as f64,
                roi[2] as f64,
                roi[3] as f64,
            )),
        };
        let placement = edit
            .placement([width, height], subject)
            .map_err(Error::InvalidParameter)?;
        let [cw, ch] = placement.canvas;
        let map = PlaceMap {
            canvas: placement.canvas,
            scale: placement.scale as f32,
            offset: placement.offset.map(|v| v as f32),
            roi,
        };
        let (subject_layer, subject_mask) = ops.place_image(image, mask.as_ref(), map)?;
        let canvas_side = cw.max(ch) as f32;

        let background_layer = match (&edit.background.blur, edit.background.fill) {
            (Some(blur), _) => {
                let kind = match blur.mode {
                    BlurMode::Gaussian => BlurKind::Gaussian,
                    BlurMode::Bokeh => BlurKind::Bokeh,
                };
                let radius = blur.radius * canvas_side;
                let (layer, mask) = (ops.device(&subject_layer)?, ops.device(&subject_mask)?);
                Some(ops.blur(layer, Some(mask), kind, radius)?.into())
            }
            (None, Fill::Image(scaling)) => {
                let background = job.background.as_ref().ok_or_else(|| {
                    Error::InvalidParameter(FieldError::new(
                        "background.imageFile",
                        "the edit asks for a background image but none was given",
                    ))
                })?;
                let background = ops.image(background.clone())?;
                let map = cover_map(&background, placement.canvas, scaling);
                Some(ops.place_image(&background, None, map)?.0)
            }
            (None, _) => None,
        };
        let canvas_subject = subject.map(|s| placement.map(s));
        let shadow = match (edit.shadow, canvas_subject) {
            (Some(shadow), Some(bounds)) => {
                let layers = shadow_layers(shadow.mode, bounds, shadow.opacity);
                Some(ops.shadow(ops.device(&subject_mask)?, &layers)?.into())
            }
            _ => None,
        };
        let outline = match edit.outline {
            Some(outline) => {
                let mask = ops.device(&subject_mask)?;
                let band = ops.outline(mask, outline.width * canvas_side)?;
                let blur = outline.blur_radius * canvas_side;
                let band = if blur > 0.0 {
                    ops.blur(&band, None, BlurKind::Gaussian, blur)?
                } else {
                    band
                };
                Some((Image::from(band), outline.color.to_f32()))
            }
            None => None,
        };
        let background_color = match edit.background.fill {
            Fill::Color(color) => color.to_f32(),
            _ => [0.0; 4],
        };
        let style = ComposeStyle {
            background_color,
            channels: match edit.channels {
                Channels::Rgba => 0,
                Channels::Rgb => 1,
                Channels::Alpha => 2,
            },
            matte: [1.0; 4],
            watermark: edit.watermark,
            despill: None,
        };
        let image = ops.compose_image(
            &ComposeLayers {
                background: background_layer.as_ref(),
                shadow: shadow.as_ref(),
                outline: outline.as_ref().map(|(band, color)| (band, *color)),
                subject: &subject_layer,
                subject_mask: &subject_mask,
            },
            style,
            spill_key.as_ref(),
        )?;
        let uncertainty = match (stats, edit.remove_background && mask.is_some()) {
            (Some(stats), true) if stats.foreground > 0 => {
                Some(stats.uncertain as f32 / stats.foreground as f32)
            }
            _ => None,
        };
        Ok(Composed {
            image,
            layout: Layout {
                foreground: canvas_subject.and_then(|s| clip_box(s, placement.canvas)),
                uncertainty,
            },
        })
    }
}

/// A job as [`Editor::finish_each`] takes it from [`Editor::segment`].
struct Pending<'a> {
    /// Its place in the batch.
    index: usize,
    job: &'a Job,
    photo: Result<Image>,
    mask: Option<Result<Image>>,
}

/// A job between the two stages of [`Editor::finish_each`].
struct Measuring {
    roi: [f32; 4],
    mask: Option<Image>,
    /// The full-size mask's statistics (or the image's own alpha's), being computed.
    measured: Option<Measured>,
    spill_key: Option<SpillKey>,
}

/// A job's result before it is read back.
struct Composed {
    image: Image,
    layout: Layout,
}

/// What a result reports beside its pixels.
#[derive(Clone, Copy)]
struct Layout {
    foreground: Option<[u32; 4]>,
    uncertainty: Option<f32>,
}

fn needs_model(job: &Job) -> bool {
    job.edit.remove_background && !uses_alpha(job)
}

/// `keepExistingAlphaChannel=auto` on an image that has transparency.
fn uses_alpha(job: &Job) -> bool {
    job.edit.remove_background
        && job.edit.keep_existing_alpha
        && job.image.pixels().any(|p| p.0[3] < 255)
}

fn region_of_interest(edit: &Edit, width: u32, height: u32) -> Result<[f32; 4]> {
    let Some(roi) = edit.region_of_interest else {
        return Ok([0.0, 0.0, width as f32, height as f32]);
    };
    let resolve = |length: Length, of: u32| match length {
        Length::Ratio(r) => r * of as f32,
        Length::Pixels(p) => p,
    };
    let r = [
        resolve(roi[0], width),
        resolve(roi[1], height),
        resolve(roi[2], width),
        resolve(roi[3], height),
    ];
    if r[2] > width as f32 + 0.5 || r[3] > height as f32 + 0.5 {
        return Err(Error::InvalidRoi("exceeds the image bounds"));
    }
    if r[2] <= r[0] || r[3] <= r[1] {
        return Err(Error::InvalidRoi("is empty"));
    }
    Ok(r)
}

/// A background image centred on the canvas, covering it (`Fill`) or inside it (`Fit`).
fn cover_map(image: &Image, canvas: [u32; 2], scaling: Scaling) -> PlaceMap {
    let (w, h) = (image.width() as f32, image.height() as f32);
    let (kx, ky) = (canvas[0] as f32 / w, canvas[1] as f32 / h);
    let scale = match scaling {
        Scaling::Fill => kx.max(ky),
        Scaling::Fit => kx.min(ky),
    };
    PlaceMap {
        canvas,
        scale,
        offset: [
            (canvas[0] as f32 - w * scale) / 2.0,
            (canvas[1] as f32 - h * scale) / 2.0,
        ],
        roi: [0.0, 0.0, w, h],
    }
}

/// The shadow of each mode as projections of the subject's mask, sized by its box on the
/// canvas: the ground line is the bottom of the box.
fn shadow_layers(mode: ShadowMode, subject: Rect, opacity: f32) -> Vec<ShadowLayer> {
    let (bw, bh) = (subject.width() as f32, subject.height() as f32);
    let ground = subject.y1 as f32;
    let centre = (subject.x0 + subject.x1) as f32 / 2.0;
    let size = bw.max(bh);
    let layer = |transform, blur: f32, strength: f32| ShadowLayer {
        transform,
        blur: blur * size,
        opacity: (strength * opacity).min(1.0),
    };
    // The silhouette squashed to `squash` of its height and resting on `floor`.
    let flattened = |squash: f32, widen: f32, floor: f32| {
        [
            [1.0 / widen, 0.0, centre - centre / widen],
            [0.0, 1.0 / squash, ground - floor / squash],
        ]
    };
    match mode {
        ShadowMode::Soft => vec![
            layer(flattened(0.08, 1.0, ground + 0.01 * bh), 0.012, 0.55),
            layer(
                [
                    [1.0 / 1.02, 0.0, centre - centre / 1.02],
                    [0.0, 1.0, -0.02 * bh],
                ],
                0.035,
                0.25,
            ),
        ],
        ShadowMode::Hard => {
            // Cast behind and to the right: 40% of the height, leaning 0.8 px per px.
            let (q, k) = (0.4, 0.8);
            vec![
                layer(
                    [[1.0, k, -k * ground], [0.0, 1.0 / q, ground - ground / q]],
                    0.004,
                    0.45,
                ),
                layer(flattened(0.05, 1.0, ground + 0.005 * bh), 0.006, 0.4),
            ]
        }
        ShadowMode::Floating => vec![layer(flattened(0.1, 0.9, ground + 0.06 * bh), 0.025, 0.45)],
    }
}

fn clip_box(rect: Rect, canvas: [u32; 2]) -> Option<[u32; 4]> {
    let x0 = rect.x0.round().clamp(0.0, canvas[0] as f64) as u32;
    let y0 = rect.y0.round().clamp(0.0, canvas[1] as f64) as u32;
    let x1 = rect.x1.round().clamp(0.0, canvas[0] as f64) as u32;
    let y1 = rect.y1.round().clamp(0.0, canvas[1] as f64) as u32;
    (x1 > x0 && y1 > y0).then(|| [x0, y0, x1 - x0, y1 - y0])
}

use super::{BufferRange, GpuImage, ImageOps};
use crate::error::Result;

uniform! {
    struct Params {
        count: u32,
        base: u32,
        _pad: [u32; 2],
    }
}

impl ImageOps {
    /// `shaders/mask.wgsl`: one image's `side`×`side` model prediction (f32, on the device)
    /// to its 8-bit mask, min-max normalised as rembg does.
    pub fn mask_from_prediction(&self, prediction: BufferRange, side: u32) -> Result<GpuImage> {
        let output = self.empty_image(side, side)?;
        let (binding, base) = prediction.binding(&self.gpu);
        let params = self.uniform(&Params {
            count: side * side,
            base,
            _pad: [0; 2],
        });
        let mut encoder = self.encoder();
        self.dispatch_resources(
            &mut encoder,
            &self.mask,
            vec![
                ("params", params.as_entire_binding()),
                ("prediction", binding),
                ("mask", output.buffer.as_entire_binding()),
            ],
            [1, 1, 1],
        )?;
        self.submit(encoder);
        Ok(output)
    }
}

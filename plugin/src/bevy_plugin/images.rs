//! From the core's RGBA8 pixels to Bevy [`Image`]s: format, usages and the sampler a texture or a
//! sprite wants.

use bevy::asset::RenderAssetUsages;
use bevy::image::{Image, ImageAddressMode, ImageSampler, ImageSamplerDescriptor};
use image::RgbaImage;
use wgpu_types::{Extent3d, TextureDimension, TextureFormat};

use crate::request::AssetKind;

/// The sampler for `kind`: textures repeat in both directions (seamless tiling is the point of
/// them) with linear filtering; sprites are sampled nearest-neighbour, so pixel art stays crisp.
pub fn sampler_for(kind: AssetKind) -> ImageSampler {
    match kind {
        AssetKind::Texture => ImageSampler::Descriptor(ImageSamplerDescriptor {
            address_mode_u: ImageAddressMode::Repeat,
            address_mode_v: ImageAddressMode::Repeat,
            address_mode_w: ImageAddressMode::Repeat,
            ..ImageSamplerDescriptor::linear()
        }),
        AssetKind::Sprite => ImageSampler::nearest(),
    }
}

/// `pixels` as an `Rgba8UnormSrgb` 2D [`Image`] (main and render world usages) with the
/// sampler of `kind`. Moves the pixel buffer; no copy.
pub fn to_bevy_image(pixels: RgbaImage, kind: AssetKind) -> Image {
    let (width, height) = pixels.dimensions();
    let mut image = Image::new(
        Extent3d {
            width,
            height,
            depth_or_array_layers: 1,
        },
        TextureDimension::D2,
        pixels.into_raw(),
        TextureFormat::Rgba8UnormSrgb,
        RenderAssetUsages::default(),
    );
    image.sampler = sampler_for(kind);
    image
}

/// The image a request's handle holds until the first preview or the result: `width x height`
/// of mid grey for a texture, fully transparent for a sprite.
pub fn placeholder(width: u32, height: u32, kind: AssetKind) -> Image {
    let pixel = match kind {
        AssetKind::Texture => image::Rgba([128, 128, 128, 255]),
        AssetKind::Sprite => image::Rgba([0, 0, 0, 0]),
    };
    to_bevy_image(
        RgbaImage::from_pixel(width.max(1), height.max(1), pixel),
        kind,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_keeps_bytes_and_sets_format_and_sampler() {
        let px = RgbaImage::from_fn(3, 2, |x, y| image::Rgba([x as u8, y as u8, 7, 200]));
        let img = to_bevy_image(px.clone(), AssetKind::Texture);
        assert_eq!(img.data.as_deref(), Some(px.as_raw().as_slice()));
        assert_eq!((img.width(), img.height()), (3, 2));
        assert_eq!(img.texture_descriptor.format, TextureFormat::Rgba8UnormSrgb);
        assert_eq!(img.asset_usage, RenderAssetUsages::default());
        let ImageSampler::Descriptor(d) = &img.sampler else {
            panic!("texture sampler is explicit")
        };
        assert_eq!(d.address_mode_u, ImageAddressMode::Repeat);
        assert_eq!(d.address_mode_v, ImageAddressMode::Repeat);
        let sprite = placeholder(4, 4, AssetKind::Sprite);
        assert!(sprite.data.as_ref().unwrap().iter().all(|&b| b == 0));
        let ImageSampler::Descriptor(d) = &sprite.sampler else {
            panic!("sprite sampler is explicit")
        };
        assert_eq!(d.mag_filter, bevy::image::ImageFilterMode::Nearest);
        assert_eq!(d.min_filter, bevy::image::ImageFilterMode::Nearest);
    }
}

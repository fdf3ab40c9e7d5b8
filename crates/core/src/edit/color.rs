//! Colours as the APIs write them: hex with or without `#` (3, 4, 6 or 8 digits, the last
//! pair being alpha), `rgb()`/`rgba()`, or a CSS colour name.

/// Straight (not premultiplied) RGBA, each 0..=255.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Color(pub [u8; 4]);

impl Color {
    pub const WHITE: Color = Color([255, 255, 255, 255]);
    pub const BLACK: Color = Color([0, 0, 0, 255]);

    /// Channels in 0..1, straight alpha, as the shaders take them.
    pub fn to_f32(self) -> [f32; 4] {
        self.0.map(|c| c as f32 / 255.0)
    }

    pub fn is_opaque(self) -> bool {
        self.0[3] == 255
    }

    pub fn parse(text: &str) -> Option<Color> {
        let text = text.trim();
        let lower = text.to_ascii_lowercase();
        if let Some(inner) = lower
            .strip_prefix("rgba(")
            .or_else(|| lower.strip_prefix("rgb("))
            .and_then(|rest| rest.strip_suffix(')'))
        {
            return parse_functional(inner);
        }
        if let Some(named) = named(&lower) {
            return Some(named);
        }
        parse_hex(lower.strip_prefix('#').unwrap_or(&lower))
    }
}

fn parse_hex(hex: &str) -> Option<Color> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let digit = |i: usize| u8::from_str_radix(&hex[i..i + 1], 16).ok();
    let pair = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    match hex.len() {
        3 | 4 => {
            let mut c = [255u8; 4];
            for (i, channel) in c.iter_mut().enumerate().take(hex.len()) {
                *channel = digit(i)? * 17;
            }
            Some(Color(c))
        }
        6 | 8 => {
            let mut c = [255u8; 4];
            for (i, channel) in c.iter_mut().enumerate().take(hex.len() / 2) {
                *channel = pair(2 * i)?;
            }
            Some(Color(c))
        }
        _ => None,
    }
}

fn parse_functional(inner: &str) -> Option<Color> {
    let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
    if !(3..=4).contains(&parts.len()) {
        return None;
    }
    let mut c = [255u8; 4];
    for (i, part) in parts.iter().enumerate().take(3) {
        let v: u16 = part.parse().ok()?;
        c[i] = u8::try_from(v).ok()?;
    }
    if let Some(alpha) = parts.get(3) {
        let a: f32 = alpha.parse().ok()?;
        if !(0.0..=1.0).contains(&a) {
            return None;
        }
        c[3] = (a * 255.0).round() as u8;
    }
    Some(Color(c))
}

fn named(name: &str) -> Option<Color> {
    let rgb: u32 = match name {
        "transparent" => return Some(Color([0, 0, 0, 0])),
        "black" => 0x000000,
        "white" => 0xffffff,
        "red" => 0xff0000,
        "green" => 0x008000,
        "lime" => 0x00ff00,
        "blue" => 0x0000ff,
        "yellow" => 0xffff00,
        "cyan" | "aqua" => 0x00ffff,
        "magenta" | "fuchsia" => 0xff00ff,
        "gray" | "grey" => 0x808080,
        "lightgray" | "lightgrey" => 0xd3d3d3,
        "darkgray" | "darkgrey" => 0xa9a9a9,
        "silver" => 0xc0c0c0,
        "maroon" => 0x800000,
        "olive" => 0x808000,
        "navy" => 0x000080,
        "purple" => 0x800080,
        "teal" => 0x008080,
        "orange" => 0xffa500,
        "pink" => 0xffc0cb,
        "brown" => 0xa52a2a,
        "beige" => 0xf5f5dc,
        "gold" => 0xffd700,
        "ivory" => 0xfffff0,
        "khaki" => 0xf0e68c,
        "lavender" => 0xe6e6fa,
        "salmon" => 0xfa8072,
        "skyblue" => 0x87ceeb,
        "tan" => 0xd2b48c,
        "violet" => 0xee82ee,
        "whitesmoke" => 0xf5f5f5,
        "indigo" => 0x4b0082,
        "coral" => 0xff7f50,
        "crimson" => 0xdc143c,
        "turquoise" => 0x40e0d0,
        _ => return None,
    };
    Some(Color([(rgb >> 16) as u8, (rgb >> 8) as u8, rgb as u8, 255]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_forms() {
        assert_eq!(Color::parse("FF0000"), Some(Color([255, 0, 0, 255])));
        assert_eq!(Color::parse("#FF00FF"), Some(Color([255, 0, 255, 255])));
        assert_eq!(Color::parse("FF0000EE"), Some(Color([255, 0, 0, 0xee])));
        assert_eq!(Color::parse("fff"), Some(Color([255, 255, 255, 255])));
        assert_eq!(
            Color::parse("81d4fa77"),
            Some(Color([0x81, 0xd4, 0xfa, 0x77]))
        );
        assert_eq!(Color::parse("f008"), Some(Color([255, 0, 0, 0x88])));
        assert_eq!(Color::parse("Red"), Some(Color([255, 0, 0, 255])));
        assert_eq!(Color::parse("rgb(1, 2, 3)"), Some(Color([1, 2, 3, 255])));
        assert_eq!(Color::parse("rgba(1,2,3,0.5)"), Some(Color([1, 2, 3, 128])));
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "12345", "GG0000", "rgb(256,0,0)", "notacolour", "#12"] {
            assert_eq!(Color::parse(bad), None, "{bad}");
        }
    }
}

//! Request parameters as key/value text, checked against a table of declared parameters.
//! The same tables generate the server's OpenAPI document.

use super::{Color, FieldError, Length};

#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Bool,
    Number {
        min: f64,
        max: f64,
    },
    Integer {
        min: u64,
        max: u64,
    },
    Enum(&'static [&'static str]),
    Color,
    /// A ratio `0..0.49`, a percentage `"0%".."49%"`, or pixels `"100px"`.
    Spacing,
    Text,
    Url,
    /// A file part of a multipart body.
    File,
}

#[derive(Debug, Clone, Copy)]
pub struct Param {
    pub name: &'static str,
    pub kind: Kind,
    pub doc: &'static str,
}

pub const fn param(name: &'static str, kind: Kind, doc: &'static str) -> Param {
    Param { name, kind, doc }
}

/// A request's text parameters, in order, with the table they are checked against.
pub struct Params<'a> {
    pub table: &'a [Param],
    pub values: Vec<(String, String)>,
}

impl<'a> Params<'a> {
    pub fn new(table: &'a [Param], values: Vec<(String, String)>) -> Self {
        Self { table, values }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Every given parameter must be declared, and every value must fit its kind.
    pub fn check_all(&self) -> Result<(), FieldError> {
        for (name, value) in &self.values {
            let Some(param) = self.table.iter().find(|p| p.name == name) else {
                return Err(FieldError::new(name, "unknown parameter"));
            };
            check_value(param, value)?;
        }
        Ok(())
    }

    fn declared(&self, name: &str) -> &Param {
        self.table
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("parameter {name} is not in the table"))
    }

    fn checked(&self, name: &str) -> Result<Option<&str>, FieldError> {
        let param = self.declared(name);
        match self.get(name) {
            None => Ok(None),
            Some(value) => check_value(param, value).map(|_| Some(value)),
        }
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, FieldError> {
        Ok(self.checked(name)?.map(|v| parse_bool(v).unwrap_or(false)))
    }

    pub fn number(&self, name: &str) -> Result<Option<f64>, FieldError> {
        Ok(self.checked(name)?.map(|v| v.trim().parse().unwrap_or(0.0)))
    }

    pub fn text(&self, name: &str) -> Result<Option<&str>, FieldError> {
        self.checked(name)
    }

    pub fn color(&self, name: &str) -> Result<Option<Color>, FieldError> {
        Ok(self.checked(name)?.and_then(Color::parse))
    }

    pub fn spacing(&self, name: &str) -> Result<Option<Length>, FieldError> {
        Ok(self.checked(name)?.and_then(parse_spacing))
    }
}

fn check_value(param: &Param, value: &str) -> Result<(), FieldError> {
    let name = param.name;
    let v = value.trim();
    match param.kind {
        Kind::Bool => parse_bool(v)
            .map(|_| ())
            .ok_or_else(|| FieldError::new(name, format!("must be true or false, not '{value}'"))),
        Kind::Number { min, max } => match v.parse::<f64>() {
            Ok(n) if n.is_finite() && n >= min && n <= max => Ok(()),
            Ok(_) => Err(FieldError::new(
                name,
                format!("must be between {min} and {max}, not {value}"),
            )),
            Err(_) => Err(FieldError::new(
                name,
                format!("must be a number, not '{value}'"),
            )),
        },
        Kind::Integer { min, max } => match v.parse::<u64>() {
            Ok(n) if n >= min && n <= max => Ok(()),
            _ => Err(FieldError::new(
                name,
                format!("must be a whole number between {min} and {max}, not '{value}'"),
            )),
        },
        Kind::Enum(allowed) => {
            if allowed.contains(&v) {
                Ok(())
            } else {
                Err(FieldError::new(
                    name,
                    format!("must be one of {}, not '{value}'", allowed.join(", ")),
                ))
            }
        }
        Kind::Color => Color::parse(v).map(|_| ()).ok_or_else(|| {
            FieldError::new(
                name,
                format!("must be a hex colour (FF0000, FF0000EE) or a colour name, not '{value}'"),
            )
        }),
        Kind::Spacing => match parse_spacing(v) {
            Some(Length::Ratio(r)) if (0.0..=0.49).contains(&r) => Ok(()),
            Some(Length::Pixels(p)) if p >= 0.0 => Ok(()),
            _ => Err(FieldError::new(
                name,
                format!(
                    "must be a ratio between 0 and 0.49, a percentage between 0% and 49%, or pixels like 100px, not '{value}'"
                ),
            )),
        },
        Kind::Text | Kind::File => Ok(()),
        Kind::Url => {
            if v.starts_with("http://") || v.starts_with("https://") {
                Ok(())
            } else {
                Err(FieldError::new(name, "must be an http or https URL"))
            }
        }
    }
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// `0.1`, `"10%"` (both ratios) or `"100px"`.
pub fn parse_spacing(v: &str) -> Option<Length> {
    let v = v.trim();
    if let Some(px) = v.strip_suffix("px") {
        return px
            .trim()
            .parse::<f32>()
            .ok()
            .filter(|p| p.is_finite())
            .map(Length::Pixels);
    }
    if let Some(pct) = v.strip_suffix('%') {
        return pct
            .trim()
            .parse::<f32>()
            .ok()
            .filter(|p| p.is_finite())
            .map(|p| Length::Ratio(p / 100.0));
    }
    v.parse::<f32>()
        .ok()
        .filter(|r| r.is_finite())
        .map(Length::Ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spacing_forms() {
        assert_eq!(parse_spacing("0.1"), Some(Length::Ratio(0.1)));
        assert_eq!(parse_spacing("30%"), Some(Length::Ratio(0.3)));
        assert_eq!(parse_spacing("100px"), Some(Length::Pixels(100.0)));
        assert_eq!(parse_spacing("ten"), None);
    }

    #[test]
    fn table_checks_name_the_field() {
        const TABLE: &[Param] = &[
            param(
                "a",
                Kind::Number {
                    min: 0.0,
                    max: 0.05,
                },
                "",
            ),
            param("b", Kind::Enum(&["x", "y"]), ""),
        ];
        let params = Params::new(TABLE, vec![("a".into(), "0.5".into())]);
        assert_eq!(params.check_all().unwrap_err().field, "a");
        let params = Params::new(TABLE, vec![("c".into(), "1".into())]);
        assert_eq!(params.check_all().unwrap_err().message, "unknown parameter");
        let params = Params::new(TABLE, vec![("b".into(), "z".into())]);
        assert!(params.check_all().unwrap_err().message.contains("x, y"));
    }
}

//! RON, the format of `*.texgen.ron` prompt files and of each item of a bake manifest: a
//! [`GenerationRequest`] written field by field, e.g. `(prompt: "mossy wall", seed: 3, tiling: xy)`.
//! Every field is optional (defaults of [`GenerationRequest::default`]), unknown fields are
//! refused, `Option` fields are written bare or as `Some(...)` ([`ron_options`] enables
//! `implicit_some`), enum values in the CLI spelling (`xy`, `sprite`, `r#euler-a`) or the Rust one.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::request::GenerationRequest;

/// The extension of a single-request RON file (read by [`parse_request_ron`]).
pub const REQUEST_EXTENSION: &str = "texgen.ron";

/// A RON document that does not parse: where, in which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RonError {
    /// The file (only named in the message).
    pub path: PathBuf,
    /// 1-based line of the error.
    pub line: usize,
    /// 1-based column of the error.
    pub column: usize,
    /// The dotted path of the field being read, e.g. `items.wall.width` (None at the top level).
    pub field: Option<String>,
    /// RON's (or the field type's) message, e.g. `Expected integer`.
    pub message: String,
}

impl fmt::Display for RonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for RonError {}

/// The RON options every bevy_diffusion RON file is read with: `implicit_some` (an `Option`
/// field may be written `seed: 3` as well as `Some(3)`). A Bevy asset loader for `*.texgen.ron`
/// should read with these too (or simply call [`parse_request_ron`]).
pub fn ron_options() -> ron::Options {
    ron::Options::default().with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
}

/// Parses `text` as RON into `T`, naming the line, column and field of any error. `path` is
/// only used in the error.
pub fn parse_ron<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, RonError> {
    let options = ron_options();
    let error = |e: ron::error::SpannedError, field: Option<String>| RonError {
        path: path.to_path_buf(),
        line: e.position.line,
        column: e.position.col,
        field,
        message: e.code.to_string(),
    };
    let mut de =
        ron::Deserializer::from_str_with_options(text, &options).map_err(|e| error(e, None))?;
    let value = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => v,
        Err(e) => {
            // serde_path_to_error writes `?` for a segment it could not name (e.g. the key
            // being read when the syntax broke): leave those out.
            let segments: Vec<String> = e
                .path()
                .iter()
                .filter(|s| !matches!(s, serde_path_to_error::Segment::Unknown))
                .map(|s| s.to_string())
                .collect();
            let field = (!segments.is_empty()).then(|| segments.join("."));
            let spanned = de.span_error(e.into_inner());
            return Err(error(spanned, field));
        }
    };
    de.end().map_err(|code| error(de.span_error(code), None))?;
    Ok(value)
}

/// Parses one [`GenerationRequest`] written in RON (the format of `*.texgen.ron` files and of
/// each item of a bake manifest), e.g. `(prompt: "mossy wall", seed: 3, tiling: xy)`. Missing
/// fields take their defaults; unknown fields are refused.
///
/// # Errors
/// [`RonError`] naming `path`, the line and column, and the field (e.g. `width`).
pub fn parse_request_ron(text: &str, path: &Path) -> Result<GenerationRequest, RonError> {
    parse_ron(text, path)
}

/// Writes `request` as pretty RON that [`parse_request_ron`] reads back to an equal request.
pub fn request_to_ron(request: &GenerationRequest) -> String {
    let pretty = ron::ser::PrettyConfig::default()
        .struct_names(false)
        .extensions(ron::extensions::Extensions::IMPLICIT_SOME);
    ron::Options::default()
        .to_string_pretty(request, pretty)
        .unwrap_or_else(|e| format!("/* cannot serialise the request: {e} */"))
}

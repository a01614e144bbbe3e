//! Recipe diagnostics: every problem points at a span in the file it came from
//! (a recipe, a stdlib part reached through `extends`, or a target profile).

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};
use std::fmt;
use std::sync::Arc;

/// Where something was written: a file of the recipe set and a byte span in it.
#[derive(Clone, Debug)]
pub struct Loc {
    pub file: Arc<SourceFile>,
    pub span: SourceSpan,
}

/// One loaded KDL file: its display name (`effects/brick.kdl`, `<stdlib>/portrait.kdl`)
/// and its text.
#[derive(Debug)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
    named: NamedSource<String>,
}

impl SourceFile {
    pub fn new(name: impl Into<String>, text: impl Into<String>) -> Arc<SourceFile> {
        let (name, text) = (name.into(), text.into());
        let named = NamedSource::new(name.clone(), text.clone());
        Arc::new(SourceFile { name, text, named })
    }
}

impl Loc {
    pub fn new(file: &Arc<SourceFile>, span: SourceSpan) -> Loc {
        Loc {
            file: file.clone(),
            span,
        }
    }
}

/// A single recipe problem, rendered by miette with the file and span.
#[derive(Debug, Clone)]
pub struct RecipeDiagnostic {
    pub message: String,
    pub code: &'static str,
    pub loc: Option<Loc>,
    pub label: String,
    pub help: Option<String>,
}

impl RecipeDiagnostic {
    pub fn at(loc: &Loc, code: &'static str, message: impl Into<String>) -> RecipeDiagnostic {
        RecipeDiagnostic {
            message: message.into(),
            code,
            loc: Some(loc.clone()),
            label: "here".into(),
            help: None,
        }
    }
    pub fn nowhere(code: &'static str, message: impl Into<String>) -> RecipeDiagnostic {
        RecipeDiagnostic {
            message: message.into(),
            code,
            loc: None,
            label: String::new(),
            help: None,
        }
    }
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    /// Adds "did you mean `x`?" when a known name is close to what was written.
    pub fn suggest<'a>(self, written: &str, known: impl IntoIterator<Item = &'a str>) -> Self {
        match closest(written, known) {
            Some(best) => self.help(format!("did you mean `{best}`?")),
            None => self,
        }
    }
    pub fn file_name(&self) -> Option<&str> {
        self.loc.as_ref().map(|l| l.file.name.as_str())
    }
}

/// The known name nearest to `written`, when it is near enough to be a typo.
pub fn closest<'a>(written: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    known
        .into_iter()
        .map(|k| (strsim::jaro_winkler(written, k), k))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, k)| k)
}

impl fmt::Display for RecipeDiagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RecipeDiagnostic {}

impl Diagnostic for RecipeDiagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(format!("effectc::recipe::{}", self.code)))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.loc
            .as_ref()
            .map(|l| &l.file.named as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let loc = self.loc.as_ref()?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some(self.label.clone()),
            loc.span,
        ))))
    }
}

/// Longest source line shown under a diagnostic. miette panics past 65,535 columns
/// (a format width), and nobody reads such a line anyway.
const MAX_SHOWN_LINE: usize = 2000;

/// `file:line:col` of `loc` when its line is too long to show, else None.
fn long_line_position(loc: &Loc) -> Option<String> {
    let bytes = loc.file.text.as_bytes();
    let start = loc.span.offset().min(bytes.len());
    let end = (start + loc.span.len()).min(bytes.len());
    let line_start = bytes[..start]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line_end = bytes[end..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(bytes.len(), |i| end + i);
    let longest = bytes[line_start..line_end]
        .split(|&b| b == b'\n')
        .map(|l| l.len())
        .max()
        .unwrap_or(0);
    if longest <= MAX_SHOWN_LINE {
        return None;
    }
    let line = 1 + bytes[..start].iter().filter(|&&b| b == b'\n').count();
    let col = 1 + String::from_utf8_lossy(&bytes[line_start..start])
        .chars()
        .count();
    Some(format!("{}:{line}:{col}", loc.file.name))
}

/// Renders a diagnostic with its file name in the header, as miette's NamedSource does.
pub fn render(diag: &RecipeDiagnostic, color: bool) -> String {
    if let Some(at) = diag.loc.as_ref().and_then(long_line_position) {
        let mut plain = diag.clone();
        plain.loc = None;
        plain.message = format!("{} (at {at}; the line is too long to show)", diag.message);
        return render(&plain, color);
    }
    let handler = if color {
        miette::GraphicalReportHandler::new()
    } else {
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
    }
    .with_width(100);
    let mut out = String::new();
    let _ = handler.render_report(&mut out, diag);
    out
}

/// Every problem found while loading an effect; nothing runs unless this is empty.
#[derive(Debug, Default)]
pub struct Diagnostics(pub Vec<RecipeDiagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: RecipeDiagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn render(&self, color: bool) -> String {
        self.0
            .iter()
            .map(|d| render(d, color))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s) in recipes", self.0.len())
    }
}

impl std::error::Error for Diagnostics {}

//! The project's optional `effectc.kdl`: settings a team shares through git rather than
//! every member's environment, and the remote cache's settings gathered from the command
//! line, the environment and that file (in that order of precedence):
//!
//! ```kdl
//! remote-cache "http://cache.internal:8080/effects"
//! remote-header "Authorization: Bearer ${EFFECTC_CACHE_TOKEN}"   // from the environment
//! remote-header "@~/.config/effectc/cache-headers"               // NAME: VALUE lines
//! remote-upload #false                                            // read-only client
//! ```
//!
//! A header is `NAME: VALUE`, where `${VAR}` in the value is read from the environment,
//! or `@FILE`: a file of `NAME: VALUE` lines (as curl's `-H @FILE`), so no secret is ever
//! committed. Values are never echoed: messages name the header, the variable or the file.

use crate::cache::remote::{RemoteCache, RemoteOptions, Secret};
use std::path::{Path, PathBuf};

/// What `effectc.kdl` says.
#[derive(Debug, Default)]
pub struct ProjectConfig {
    pub remote_cache: Option<String>,
    pub remote_headers: Vec<String>,
    pub remote_upload: Option<bool>,
}

/// Reads `<project>/effectc.kdl`, if there is one. A file that does not parse, or a
/// setting of the wrong type, is reported and ignored (the build still works, locally).
pub fn load(project_root: &Path) -> ProjectConfig {
    let path = project_root.join("effectc.kdl");
    let mut config = ProjectConfig::default();
    let Ok(text) = std::fs::read_to_string(&path) else {
        return config;
    };
    let doc: kdl::KdlDocument = match text.parse() {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "warning: {} does not parse ({e}); ignoring it",
                path.display()
            );
            return config;
        }
    };
    for node in doc.nodes() {
        let value = node.get(0);
        match node.name().value() {
            "remote-cache" => config.remote_cache = value.and_then(|v| v.as_string()).map(str::to_string),
            "remote-header" => match value.and_then(|v| v.as_string()) {
                Some(h) => config.remote_headers.push(h.to_string()),
                None => eprintln!("warning: {}: `remote-header` takes a string, \"NAME: VALUE\" or \"@FILE\"; ignoring it", path.display()),
            },
            "remote-upload" => match value.and_then(|v| v.as_bool()) {
                Some(b) => config.remote_upload = Some(b),
                None => eprintln!("warning: {}: `remote-upload` takes #true or #false; ignoring it", path.display()),
            },
            _ => {}
        }
    }
    config
}

/// The remote cache the command line, the environment and `effectc.kdl` name, with its
/// headers and upload setting; None when none names a URL. Err: a message for a setting
/// that cannot be used (a malformed header, a bad boolean).
pub fn remote(
    cli_url: Option<String>,
    cli_headers: &[String],
    cli_upload: Option<bool>,
    project_root: &Path,
) -> Result<Option<RemoteCache>, String> {
    let file = load(project_root);
    let url = cli_url
        .or_else(|| std::env::var("EFFECTC_REMOTE_CACHE").ok())
        .or(file.remote_cache)
        .filter(|u| !u.is_empty());
    let Some(url) = url else {
        return Ok(None);
    };
    let env_upload = match std::env::var("EFFECTC_REMOTE_UPLOAD") {
        Ok(v) => Some(
            parse_bool(&v)
                .ok_or_else(|| format!("EFFECTC_REMOTE_UPLOAD=`{v}`: expected true or false"))?,
        ),
        Err(_) => None,
    };
    let upload = cli_upload
        .or(env_upload)
        .or(file.remote_upload)
        .unwrap_or(true);
    let var = |name: &str| std::env::var(name).ok();
    // Lowest precedence first: a later source's header replaces an earlier one's.
    let mut headers: Vec<(String, Secret)> = Vec::new();
    let mut add = |found: Vec<(String, Secret)>| {
        for (name, value) in found {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
            headers.push((name, value));
        }
    };
    let kdl_path = project_root.join("effectc.kdl");
    for (i, spec) in file.remote_headers.iter().enumerate() {
        let origin = format!("`remote-header` #{} in {}", i + 1, kdl_path.display());
        add(header_spec(spec, &origin, project_root, &var)?);
    }
    if let Ok(spec) = std::env::var("EFFECTC_REMOTE_HEADER") {
        let cwd = std::env::current_dir().unwrap_or_default();
        add(header_spec(&spec, "EFFECTC_REMOTE_HEADER", &cwd, &var)?);
    }
    for (i, spec) in cli_headers.iter().enumerate() {
        let origin = format!("--remote-header #{}", i + 1);
        let cwd = std::env::current_dir().unwrap_or_default();
        add(header_spec(spec, &origin, &cwd, &var)?);
    }
    Ok(Some(RemoteCache::with_options(
        &url,
        RemoteOptions { headers, upload },
    )))
}

pub fn parse_bool(text: &str) -> Option<bool> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// One header setting: `NAME: VALUE` (with `${VAR}` expanded) or `@FILE` (relative paths
/// from `base`, `~/` from $HOME). Errors name `origin`, never the value.
pub fn header_spec(
    spec: &str,
    origin: &str,
    base: &Path,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, Secret)>, String> {
    let spec = spec.trim();
    if let Some(file) = spec.strip_prefix('@') {
        let path = expand_home(file.trim(), base, var);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{origin}: cannot read the header file {}: {e}",
                path.display()
            )
        })?;
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let here = format!("{origin}: {} line {}", path.display(), n + 1);
            out.push(one_header(line, &here, var)?);
        }
        return Ok(out);
    }
    Ok(vec![one_header(spec, origin, var)?])
}

fn one_header(
    line: &str,
    origin: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Secret), String> {
    let Some((name, value)) = line.split_once(':') else {
        return Err(format!(
            "{origin}: expected `NAME: VALUE` (e.g. 'Authorization: Bearer ${{TOKEN}}') or `@FILE`"
        ));
    };
    let name = name.trim();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return Err(format!("{origin}: `{name}` is not a header name"));
    }
    let value = expand_vars(value.trim(), origin, name, var)?;
    if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Err(format!(
            "{origin}: the value of header {name} holds a line break"
        ));
    }
    Ok((name.to_string(), Secret::new(value)))
}

/// `${VAR}` → the variable's value; an unset one is an error naming it.
fn expand_vars(
    value: &str,
    origin: &str,
    header: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err(format!(
                "{origin}: header {header}: `${{` without a closing `}}`"
            ));
        };
        let name = &after[..end];
        let got = var(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            format!("{origin}: header {header} reads ${{{name}}}, which is not set")
        })?;
        out.push_str(&got);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn expand_home(path: &str, base: &Path, var: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    if let (Some(rest), Some(home)) = (path.strip_prefix("~/"), var("HOME")) {
        return PathBuf::from(home).join(rest);
    }
    base.join(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(h: &[(String, Secret)]) -> Vec<String> {
        h.iter()
            .map(|(n, v)| format!("{n}={}", v.expose()))
            .collect()
    }

    #[test]
    fn headers_come_from_the_setting_a_variable_or_a_file_and_errors_never_show_values() {
        let var = |n: &str| match n {
            "TOKEN" => Some("s3cret".to_string()),
            "HOME" => Some("/nonexistent-home".to_string()),
            _ => None,
        };
        let dir = tempfile::tempdir().unwrap();
        let got = header_spec("Authorization: Bearer ${TOKEN}", "test", dir.path(), &var).unwrap();
        assert_eq!(shown(&got), ["Authorization=Bearer s3cret"]);
        std::fs::write(
            dir.path().join("h"),
            "# team cache\nAuthorization: Bearer abc\nX-Team:  lego \n",
        )
        .unwrap();
        let got = header_spec("@h", "test", dir.path(), &var).unwrap();
        assert_eq!(shown(&got), ["Authorization=Bearer abc", "X-Team=lego"]);

        let e = header_spec(
            "Authorization Bearer hunter2",
            "--remote-header #1",
            dir.path(),
            &var,
        )
        .unwrap_err();
        assert!(
            e.contains("--remote-header #1") && !e.contains("hunter2"),
            "{e}"
        );
        let e = header_spec("X: ${MISSING}", "o", dir.path(), &var).unwrap_err();
        assert!(e.contains("${MISSING}") && e.contains("not set"), "{e}");
        let e = header_spec("@nope", "o", dir.path(), &var).unwrap_err();
        assert!(e.contains("nope"), "{e}");
        assert!(header_spec("Bad Name: v", "o", dir.path(), &var).is_err());
        assert!(format!("{:?}", got[0].1) == "<redacted>");
    }

    #[test]
    fn the_project_file_gives_url_headers_and_upload() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("effectc.kdl"),
            "remote-cache \"http://127.0.0.1:1/x\"\nremote-header \"X-A: 1\"\nremote-upload #false\n",
        )
        .unwrap();
        let c = load(dir.path());
        assert_eq!(c.remote_cache.as_deref(), Some("http://127.0.0.1:1/x"));
        assert_eq!(c.remote_headers, ["X-A: 1"]);
        assert_eq!(c.remote_upload, Some(false));
        assert_eq!(parse_bool("False"), Some(false));
        assert_eq!(parse_bool("maybe"), None);
    }
}

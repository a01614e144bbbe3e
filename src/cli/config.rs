//! The project's optional `effectc.kdl`: settings a team shares through git rather than
//! every member's environment. Today: `remote-cache "URL"`.

use std::path::Path;

/// `remote-cache "URL"` from `<project>/effectc.kdl`, if the file names one. A file that
/// does not parse is reported and ignored (the build still works, only locally).
pub fn remote_cache(project_root: &Path) -> Option<String> {
    let path = project_root.join("effectc.kdl");
    let text = std::fs::read_to_string(&path).ok()?;
    let doc: kdl::KdlDocument = match text.parse() {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "warning: {} does not parse ({e}); ignoring it",
                path.display()
            );
            return None;
        }
    };
    let node = doc.get("remote-cache")?;
    node.get(0).and_then(|v| v.as_string()).map(str::to_string)
}

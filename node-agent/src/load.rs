//! Reading VirtualService manifests from files and directories.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tunlb_api::VirtualService;
use tunlb_api::manifest::documents;

/// Files named on the command line, with directories expanded to their
/// *.yaml, *.yml and *.json files in name order.
pub fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let entries = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| {
                    f.is_file()
                        && matches!(
                            f.extension().and_then(|e| e.to_str()),
                            Some("yaml" | "yml" | "json")
                        )
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Calls `each(source, object)` for every VirtualService in `paths`, one
/// document at a time (so no more than one parsed object is alive at once);
/// problems are returned as messages naming the file, document, object and field.
pub fn visit(paths: &[PathBuf], mut each: impl FnMut(&Arc<str>, VirtualService)) -> Vec<String> {
    let mut errors = Vec::new();
    let files = match expand(paths) {
        Ok(f) => f,
        Err(e) => return vec![e],
    };
    for file in files {
        let source: Arc<str> = display(&file).into();
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                for r in documents(&source, &text) {
                    match r {
                        Ok(object) => each(&source, object),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
            Err(e) => errors.push(format!("{}: {e}", file.display())),
        }
    }
    errors
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

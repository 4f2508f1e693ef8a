//! Reading VirtualService manifests from files and directories.

use std::path::{Path, PathBuf};

use tunlb_api::VirtualService;
use tunlb_api::manifest::parse_documents;

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

/// A VirtualService and where it came from.
pub struct Loaded {
    pub source: String,
    pub object: VirtualService,
}

/// Loads every VirtualService; problems are returned as messages naming the
/// file, document, object and field.
pub fn load(paths: &[PathBuf]) -> (Vec<Loaded>, Vec<String>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let files = match expand(paths) {
        Ok(f) => f,
        Err(e) => return (objects, vec![e]),
    };
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let docs = parse_documents(&display(&file), &text);
                drop(text);
                objects.reserve(docs.len());
                for r in docs {
                    match r {
                        Ok(object) => objects.push(Loaded {
                            source: display(&file),
                            object,
                        }),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
            }
            Err(e) => errors.push(format!("{}: {e}", file.display())),
        }
    }
    (objects, errors)
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

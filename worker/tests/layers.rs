//! The worker's modules form layers, bottom first, and each uses only
//! layers below it: no import cycle, and the folder tree reads as the path
//! of a job (ARCHITECTURE.md). A `crate::x` path in a module's non-test
//! code is a use of `x`.
use std::collections::BTreeSet;
use std::path::Path;

/// Bottom first. A module may use the ones before it.
const LAYERS: [&str; 11] = [
    "error", "paths", "config", "store", "metrics", "execute", "job", "stage", "publish",
    "pipeline", "consume",
];

/// The top-level modules that `dir` (or file) uses, outside its tests.
fn uses(path: &Path, out: &mut BTreeSet<String>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            uses(&entry.unwrap().path(), out);
        }
        return;
    }
    if path.extension().is_none_or(|e| e != "rs") {
        return;
    }
    let text = std::fs::read_to_string(path).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    for (i, _) in code.match_indices("crate::") {
        let name: String = code[i + "crate::".len()..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
}

#[test]
fn each_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if ["lib", "main"].contains(&name.as_str()) {
            continue;
        }
        found.insert(name.clone());
        let layer = LAYERS
            .iter()
            .position(|l| *l == name)
            .unwrap_or_else(|| panic!("src/{name} is in no layer: add it to LAYERS"));
        let mut used = BTreeSet::new();
        uses(&path, &mut used);
        for other in used.iter().filter(|u| **u != name) {
            let below = LAYERS[..layer].contains(&other.as_str());
            assert!(
                below,
                "src/{name} uses crate::{other}, which is not below it in {LAYERS:?}"
            );
        }
    }
    let listed: BTreeSet<String> = LAYERS.iter().map(|l| l.to_string()).collect();
    assert_eq!(found, listed, "LAYERS lists exactly the modules of src/");
}
